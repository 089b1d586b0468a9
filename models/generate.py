#!/usr/bin/env python3
"""Generates ferroserve's example ONNX models and their numpy reference outputs.

Run from anywhere with the project's venv: `python models/generate.py`. It rewrites
`models/repository/<model>/<version>/model.onnx`, `models/reference/<model>.npz` (inputs, numpy-computed
expected outputs, and weights where a test needs to recompute outputs for its own inputs) and
`models/SHA256SUMS`. Outputs are computed with numpy, never with onnxruntime, so the server is checked
against an independent reference.
"""
import hashlib
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.join(HERE, "repository")
REF = os.path.join(HERE, "reference")
OPSET = [helper.make_opsetid("", 17)]


def save(model, name, version=1):
    onnx.checker.check_model(model, full_check=True)
    d = os.path.join(REPO, name, str(version))
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, "model.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    return path


def mlp(rng):
    """FP32 MLP 16 -> 32 (ReLU) -> 4 with a dynamic batch dim; the workhorse for load tests."""
    w1 = rng.standard_normal((16, 32)).astype(np.float32) * 0.5
    b1 = rng.standard_normal(32).astype(np.float32) * 0.1
    w2 = rng.standard_normal((32, 4)).astype(np.float32) * 0.5
    b2 = rng.standard_normal(4).astype(np.float32) * 0.1
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["INPUT0", "w1"], ["h0"]),
            helper.make_node("Add", ["h0", "b1"], ["h1"]),
            helper.make_node("Relu", ["h1"], ["h2"]),
            helper.make_node("MatMul", ["h2", "w2"], ["h3"]),
            helper.make_node("Add", ["h3", "b2"], ["OUTPUT0"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 16])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 4])],
        [numpy_helper.from_array(a, n) for a, n in [(w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2")]],
    )
    save(helper.make_model(graph, opset_imports=OPSET, ir_version=9), "mlp")
    x = rng.standard_normal((3, 16)).astype(np.float32)
    y = np.maximum(x @ w1 + b1, 0) @ w2 + b2
    np.savez(os.path.join(REF, "mlp.npz"), INPUT0=x, OUTPUT0=y, w1=w1, b1=b1, w2=w2, b2=b2)


def mlp_large(rng):
    """FP32 MLP 128 -> 512 -> 512 -> 16: enough arithmetic per item that batching pays off on a CPU."""
    dims = [128, 512, 512, 16]
    weights = [(rng.standard_normal((a, b)) / np.sqrt(a)).astype(np.float32) for a, b in zip(dims, dims[1:])]
    biases = [(rng.standard_normal(b) * 0.1).astype(np.float32) for b in dims[1:]]
    nodes, inits, prev = [], [], "INPUT0"
    for i, (w, b) in enumerate(zip(weights, biases)):
        last = i == len(weights) - 1
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"m{i}"]))
        nodes.append(helper.make_node("Add", [f"m{i}", f"b{i}"], ["OUTPUT0" if last else f"a{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"a{i}"], [f"r{i}"]))
            prev = f"r{i}"
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
    graph = helper.make_graph(
        nodes, "mlp_large",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["batch", 128])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, ["batch", 16])],
        inits,
    )
    save(helper.make_model(graph, opset_imports=OPSET, ir_version=9), "mlp_large")
    x = rng.standard_normal((3, 128)).astype(np.float32)
    y = x
    for i, (w, b) in enumerate(zip(weights, biases)):
        y = y @ w + b
        if i < len(weights) - 1:
            y = np.maximum(y, 0)
    np.savez(os.path.join(REF, "mlp_large.npz"), INPUT0=x, OUTPUT0=y)


def mixed(rng):
    """Several inputs and outputs of mixed types: FP32, INT64, FP16 in; FP32, INT64, BOOL, FP16, INT32 out."""
    graph = helper.make_graph(
        [
            helper.make_node("Cast", ["B"], ["b_f"], to=TensorProto.FLOAT),
            helper.make_node("Add", ["A", "b_f"], ["SUM"]),
            helper.make_node("Mul", ["B", "two_i64"], ["B_TIMES_2"]),
            helper.make_node("Greater", ["A", "zero_f"], ["A_POSITIVE"]),
            helper.make_node("Mul", ["C", "half_f16"], ["C_HALF"]),
            helper.make_node("Cast", ["B"], ["B_INT32"], to=TensorProto.INT32),
        ],
        "mixed",
        [
            helper.make_tensor_value_info("A", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("B", TensorProto.INT64, ["batch", 4]),
            helper.make_tensor_value_info("C", TensorProto.FLOAT16, ["batch", 2]),
        ],
        [
            helper.make_tensor_value_info("SUM", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("B_TIMES_2", TensorProto.INT64, ["batch", 4]),
            helper.make_tensor_value_info("A_POSITIVE", TensorProto.BOOL, ["batch", 4]),
            helper.make_tensor_value_info("C_HALF", TensorProto.FLOAT16, ["batch", 2]),
            helper.make_tensor_value_info("B_INT32", TensorProto.INT32, ["batch", 4]),
        ],
        [
            numpy_helper.from_array(np.array(2, dtype=np.int64), "two_i64"),
            numpy_helper.from_array(np.array(0, dtype=np.float32), "zero_f"),
            numpy_helper.from_array(np.array(0.5, dtype=np.float16), "half_f16"),
        ],
    )
    save(helper.make_model(graph, opset_imports=OPSET, ir_version=9), "mixed")
    a = rng.standard_normal((2, 4)).astype(np.float32)
    b = rng.integers(-1000, 1000, (2, 4)).astype(np.int64)
    c = rng.standard_normal((2, 2)).astype(np.float16)
    np.savez(
        os.path.join(REF, "mixed.npz"),
        A=a, B=b, C=c,
        SUM=a + b.astype(np.float32), B_TIMES_2=b * 2, A_POSITIVE=a > 0,
        C_HALF=(c * np.float16(0.5)).astype(np.float16), B_INT32=b.astype(np.int32),
    )


def strings(rng):
    """BYTES in and out: upper-cases a 1-D list of strings (ONNX StringNormalizer) and echoes it."""
    graph = helper.make_graph(
        [
            helper.make_node("StringNormalizer", ["TEXT"], ["UPPER"], case_change_action="UPPER", locale="C.UTF-8"),
            helper.make_node("Identity", ["TEXT"], ["ECHO"]),
        ],
        "strings",
        [helper.make_tensor_value_info("TEXT", TensorProto.STRING, ["n"])],
        [
            helper.make_tensor_value_info("UPPER", TensorProto.STRING, ["n"]),
            helper.make_tensor_value_info("ECHO", TensorProto.STRING, ["n"]),
        ],
    )
    save(helper.make_model(graph, opset_imports=OPSET, ir_version=9), "strings")
    text = np.array([b"hello", b"ferroserve", b"Mixed Case 42"], dtype=np.object_)
    np.savez(
        os.path.join(REF, "strings.npz"),
        TEXT=text.astype("S"), UPPER=np.array([t.upper() for t in text]).astype("S"), ECHO=text.astype("S"),
    )


def identity_versions():
    """Two versions of a tiny INT32 model (x + version) for version routing tests."""
    for version in (1, 2):
        graph = helper.make_graph(
            [helper.make_node("Add", ["IN", "v"], ["OUT"])],
            "add_version",
            [helper.make_tensor_value_info("IN", TensorProto.INT32, [-1])],
            [helper.make_tensor_value_info("OUT", TensorProto.INT32, [-1])],
            [numpy_helper.from_array(np.array(version, dtype=np.int32), "v")],
        )
        save(helper.make_model(graph, opset_imports=OPSET, ir_version=9), "add_version", version)


def write_checksums():
    lines = []
    for root in (REPO, REF):
        for dirpath, _, files in sorted(os.walk(root)):
            for f in sorted(files):
                if not f.endswith((".onnx", ".npz")):
                    continue  # config.pbtxt files are hand-written, not generated
                p = os.path.join(dirpath, f)
                with open(p, "rb") as fh:
                    digest = hashlib.sha256(fh.read()).hexdigest()
                lines.append(f"{digest}  {os.path.relpath(p, HERE)}")
    # Lines of the other generators (models/torch/, models/triton_examples/, ...) are kept as they are.
    path = os.path.join(HERE, "SHA256SUMS")
    if os.path.exists(path):
        ours = tuple(os.path.relpath(r, HERE) + os.sep for r in (REPO, REF))
        with open(path) as f:
            lines += [l.rstrip("\n") for l in f if l.strip() and not l.split("  ", 1)[1].startswith(ours)]
    with open(path, "w") as f:
        f.write("\n".join(sorted(lines, key=lambda l: l.split("  ")[1])) + "\n")


def main():
    os.makedirs(REF, exist_ok=True)
    rng = np.random.default_rng(20261125)
    mlp(rng)
    mixed(rng)
    strings(rng)
    identity_versions()
    mlp_large(np.random.default_rng(7))
    write_checksums()
    print("models written under", REPO, file=sys.stderr)


if __name__ == "__main__":
    main()
