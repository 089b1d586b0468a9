#!/usr/bin/env python3
"""Generates ONNX stand-ins for the models Triton's client example programs call, in Triton's repository form.

Run from anywhere with the project's venv: `python models/generate_triton_examples.py`. It rewrites
`models/triton_examples/<model>/{config.pbtxt,1/model.onnx}` (and `labels.txt` where a config names one) and
updates their lines in `models/SHA256SUMS`, leaving the other lines as they are. Names, datatypes and dims
follow Triton's own example models (docs/examples/model_repository in triton-inference-server/server), so that
Triton's client example programs (simple_http_infer_client.py, simple_grpc_shm_client.py, ...) run unchanged:
- simple:             INPUT0, INPUT1 INT32 [16] -> OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1; batch <= 8;
- simple_string:      the same with every tensor BYTES, each element an integer's decimal text
                      (Cast string -> int32, Add/Sub, Cast int32 -> string);
- simple_identity:    INPUT0 BYTES [-1] -> OUTPUT0, the same strings; batch <= 8;
- simple_int8:        `simple` on INT8 (two's complement wrap-around on overflow, as ONNX Runtime computes it);
- identity_fp32_4mib: INPUT0 FP32 [1048576] (4 MiB) -> OUTPUT0 FP32 [1], its sum: a large request with a small
                      answer, for shared-memory benchmarks; not batched;
- image_classifier:   INPUT FP32 [3, 8, 8] (NCHW) -> OUTPUT FP32 [10] = mean over each channel's pixels @ W + b,
                      W and b fixed by a seed (written out by `classifier_weights`), ten labels in labels.txt.
Tests recompute every output with numpy; nothing here is computed with onnxruntime.
"""
import hashlib
import os
import shutil
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

HERE = os.path.dirname(os.path.abspath(__file__))
OUT = os.path.join(HERE, "triton_examples")
OPSET = [helper.make_opsetid("", 17)]
LABELS = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CLASSIFIER_SEED = 20261130


def save(name, graph, config, extra_files=None):
    """Writes `<name>/1/model.onnx` and `<name>/config.pbtxt` (plus `extra_files`: file name -> text)."""
    model = helper.make_model(graph, opset_imports=OPSET, ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    d = os.path.join(OUT, name)
    os.makedirs(os.path.join(d, "1"), exist_ok=True)
    with open(os.path.join(d, "1", "model.onnx"), "wb") as f:
        f.write(model.SerializeToString(deterministic=True))
    with open(os.path.join(d, "config.pbtxt"), "w") as f:
        f.write(config)
    for file_name, text in (extra_files or {}).items():
        with open(os.path.join(d, file_name), "w") as f:
            f.write(text)


def tensor_config(kind, name, data_type, dims, extra=""):
    return f'{kind} [ {{ name: "{name}" data_type: {data_type} dims: [ {", ".join(map(str, dims))} ]{extra} }} ]\n'


def add_sub(name, onnx_type, config_type, comment):
    """`simple` and its variants: OUTPUT0 = INPUT0 + INPUT1, OUTPUT1 = INPUT0 - INPUT1 on [batch, 16]."""
    is_string = onnx_type == TensorProto.STRING
    nodes, a, b = [], "INPUT0", "INPUT1"
    if is_string:  # the arithmetic runs on int32; the strings are its decimal text both ways
        nodes += [
            helper.make_node("Cast", ["INPUT0"], ["a"], to=TensorProto.INT32),
            helper.make_node("Cast", ["INPUT1"], ["b"], to=TensorProto.INT32),
        ]
        a, b = "a", "b"
    sum_, diff = ("sum", "diff") if is_string else ("OUTPUT0", "OUTPUT1")
    nodes += [helper.make_node("Add", [a, b], [sum_]), helper.make_node("Sub", [a, b], [diff])]
    if is_string:
        nodes += [
            helper.make_node("Cast", ["sum"], ["OUTPUT0"], to=TensorProto.STRING),
            helper.make_node("Cast", ["diff"], ["OUTPUT1"], to=TensorProto.STRING),
        ]
    shape = ["batch", 16]
    graph = helper.make_graph(
        nodes, name,
        [helper.make_tensor_value_info(n, onnx_type, shape) for n in ("INPUT0", "INPUT1")],
        [helper.make_tensor_value_info(n, onnx_type, shape) for n in ("OUTPUT0", "OUTPUT1")],
    )
    config = (
        f"# {comment}\n"
        f'name: "{name}"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        'input [\n'
        f'  {{ name: "INPUT0" data_type: {config_type} dims: [ 16 ] }},\n'
        f'  {{ name: "INPUT1" data_type: {config_type} dims: [ 16 ] }}\n'
        ']\n'
        'output [\n'
        f'  {{ name: "OUTPUT0" data_type: {config_type} dims: [ 16 ] }},\n'
        f'  {{ name: "OUTPUT1" data_type: {config_type} dims: [ 16 ] }}\n'
        ']\n'
    )
    save(name, graph, config)


def simple_identity():
    """INPUT0 BYTES [batch, n] -> OUTPUT0, unchanged."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["INPUT0"], ["OUTPUT0"])],
        "simple_identity",
        [helper.make_tensor_value_info("INPUT0", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.STRING, ["batch", "n"])],
    )
    config = (
        "# Triton's simple_identity: any number of strings per item, returned unchanged.\n"
        'name: "simple_identity"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        + tensor_config("input", "INPUT0", "TYPE_STRING", [-1])
        + tensor_config("output", "OUTPUT0", "TYPE_STRING", [-1])
    )
    save("simple_identity", graph, config)


def identity_fp32_4mib():
    """INPUT0 FP32 [1048576] -> OUTPUT0 FP32 [1], the sum of all elements (ReduceSum, keepdims)."""
    n = 1 << 20
    graph = helper.make_graph(
        [helper.make_node("ReduceSum", ["INPUT0"], ["OUTPUT0"], keepdims=1)],
        "identity_fp32_4mib",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [n])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [1])],
    )
    config = (
        "# 4 MiB in, 4 bytes out (the sum): what a shared-memory input saves, with almost nothing to send back.\n"
        'name: "identity_fp32_4mib"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\n'
        + tensor_config("input", "INPUT0", "TYPE_FP32", [n])
        + tensor_config("output", "OUTPUT0", "TYPE_FP32", [1])
    )
    save("identity_fp32_4mib", graph, config)


def classifier_weights():
    """The image classifier's fixed weights: W [3, 10] and b [10], from CLASSIFIER_SEED."""
    rng = np.random.default_rng(CLASSIFIER_SEED)
    w = rng.standard_normal((3, 10)).astype(np.float32)
    b = (rng.standard_normal(10) * 0.1).astype(np.float32)
    return w, b


def image_classifier():
    """INPUT FP32 [batch, 3, 8, 8] -> OUTPUT FP32 [batch, 10] = mean over H, W per channel @ W + b."""
    w, b = classifier_weights()
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["INPUT"], ["pooled"], axes=[2, 3], keepdims=0),
            helper.make_node("MatMul", ["pooled", "w"], ["logits"]),
            helper.make_node("Add", ["logits", "b"], ["OUTPUT"]),
        ],
        "image_classifier",
        [helper.make_tensor_value_info("INPUT", TensorProto.FLOAT, ["batch", 3, 8, 8])],
        [helper.make_tensor_value_info("OUTPUT", TensorProto.FLOAT, ["batch", 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    config = (
        "# A tiny image classifier (channel means through a fixed linear layer) for image_client-style programs.\n"
        'name: "image_classifier"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 8\n'
        + tensor_config("input", "INPUT", "TYPE_FP32", [3, 8, 8], " format: FORMAT_NCHW")
        + tensor_config("output", "OUTPUT", "TYPE_FP32", [10], ' label_filename: "labels.txt"')
    )
    save("image_classifier", graph, config, {"labels.txt": "\n".join(LABELS) + "\n"})


def write_checksums():
    """Replaces the `triton_examples/` lines of SHA256SUMS with this run's files (README.md is hand-written)."""
    sums = os.path.join(HERE, "SHA256SUMS")
    with open(sums) as f:
        lines = [l for l in f.read().splitlines() if not l.split("  ", 1)[-1].startswith("triton_examples/")]
    for dirpath, _, files in sorted(os.walk(OUT)):
        for name in sorted(files):
            if name == "README.md":
                continue
            path = os.path.join(dirpath, name)
            with open(path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            lines.append(f"{digest}  {os.path.relpath(path, HERE)}")
    with open(sums, "w") as f:
        f.write("\n".join(sorted(lines, key=lambda l: l.split("  ", 1)[1])) + "\n")


def main():
    for entry in os.listdir(OUT) if os.path.isdir(OUT) else []:
        if os.path.isdir(os.path.join(OUT, entry)):
            shutil.rmtree(os.path.join(OUT, entry))  # no stale model survives a rename
    add_sub("simple", TensorProto.INT32, "TYPE_INT32", "Triton's simple: the sum and difference of two INT32 vectors.")
    add_sub("simple_string", TensorProto.STRING, "TYPE_STRING",
            "Triton's simple_string: `simple` on integers written as decimal text.")
    add_sub("simple_int8", TensorProto.INT8, "TYPE_INT8", "Triton's simple_int8: `simple` on INT8 (wraps on overflow).")
    simple_identity()
    identity_fp32_4mib()
    image_classifier()
    write_checksums()
    print("models written under", OUT, file=sys.stderr)


if __name__ == "__main__":
    main()
