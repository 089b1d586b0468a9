"""Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/seed-*): valid and nearly valid inputs of
each parser, from which AFL++ mutates. Run from the repository root with the test virtualenv:

    .venv/bin/python fuzz/seeds.py

Seeds are kept in the repository with what the fuzzer adds to the corpus later; rerunning this rewrites only
the seed-* files.
"""

import json
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORPUS = os.path.join(ROOT, "fuzz", "corpus")

# DataType::ALL's order in runtimes/core/src/datatype.rs (the raw_tensor target picks a datatype by index).
DATATYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "BF16",
             "FP32", "FP64", "BYTES"]


def write(target, name, data):
    os.makedirs(os.path.join(CORPUS, target), exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(CORPUS, target, "seed-" + name), "wb") as f:
        f.write(data)


def bytes_tensor(items):
    return b"".join(struct.pack("<I", len(s)) + s for s in items)


def http_seeds():
    def plain(name, body):
        write("http_infer", name, b"\x00" + json.dumps(body).encode())

    def binary(name, header, tail):
        head = json.dumps(header).encode()
        write("http_infer", name, b"\x01" + struct.pack("<H", len(head)) + head + tail)

    plain("fp32", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 4], "data": [1.0, 2.5, -3.0, 4.0]}]})
    plain("nested", {"id": "7", "inputs": [{"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [[1, 2], [3, 4]]}],
                     "outputs": [{"name": "y", "parameters": {"binary_data": True}}]})
    plain("bytes", {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2], "data": ["he", "llo"]}]})
    plain("bool_params", {"parameters": {"binary_data_output": True, "timeout": 1000},
                          "inputs": [{"name": "b", "datatype": "BOOL", "shape": [3], "data": [True, False, True]}]})
    write("http_infer", "non_finite", b'\x00{"inputs":[{"name":"x","datatype":"FP64","shape":[3],"data":[NaN,Infinity,-Infinity]}]}')
    # "fuzz" is the 64-byte region the targets register (fuzz/src/lib.rs).
    plain("shm", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                              "parameters": {"shared_memory_region": "fuzz", "shared_memory_byte_size": 8,
                                             "shared_memory_offset": 4}}],
                  "outputs": [{"name": "x", "parameters": {"shared_memory_region": "fuzz",
                                                           "shared_memory_byte_size": 16}}]})
    plain("shm_bytes", {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [1],
                                    "parameters": {"shared_memory_region": "fuzz", "shared_memory_byte_size": 7}}]})
    plain("shm_unknown", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1],
                                      "parameters": {"shared_memory_region": "r", "shared_memory_byte_size": 4}}]})
    binary("binary_fp32", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [2],
                                       "parameters": {"binary_data_size": 8}}]}, struct.pack("<2f", 1.0, 2.0))
    binary("binary_bytes", {"inputs": [{"name": "s", "datatype": "BYTES", "shape": [2],
                                        "parameters": {"binary_data_size": 13}}]}, bytes_tensor([b"he\x00", b"\xffllo"]))
    binary("binary_fp16", {"inputs": [{"name": "h", "datatype": "FP16", "shape": [1, 2],
                                       "parameters": {"binary_data_size": 4}}],
                           "outputs": [{"name": "o", "parameters": {"classification": 2}}]}, b"\x00\x3c\x00\xc0")


def grpc_seeds():
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from tritonclient.grpc import service_pb2 as pb

    r = pb.ModelInferRequest(model_name="simple", id="1")
    for name in ("INPUT0", "INPUT1"):
        t = r.inputs.add(name=name, datatype="INT32", shape=[1, 4])
        t.contents.int_contents.extend([1, 2, 3, 4])
    r.outputs.add(name="OUTPUT0")
    write("grpc_infer", "typed_int32", r.SerializeToString())

    r = pb.ModelInferRequest(model_name="m")
    r.inputs.add(name="x", datatype="FP32", shape=[2])
    r.raw_input_contents.append(struct.pack("<2f", 0.5, -1.0))
    r.parameters["priority"].int64_param = 1
    write("grpc_infer", "raw_fp32", r.SerializeToString())

    r = pb.ModelInferRequest(model_name="m")
    r.inputs.add(name="s", datatype="BYTES", shape=[2])
    r.raw_input_contents.append(bytes_tensor([b"a\x00b", b"\xfe"]))
    write("grpc_infer", "raw_bytes", r.SerializeToString())

    r = pb.ModelInferRequest(model_name="m")
    t = r.inputs.add(name="s", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(b"hello")
    t = r.inputs.add(name="b", datatype="BOOL", shape=[2])
    t.contents.bool_contents.extend([True, False])
    t = r.inputs.add(name="d", datatype="FP64", shape=[1])
    t.contents.fp64_contents.append(float("nan"))
    write("grpc_infer", "typed_mixed", r.SerializeToString())

    r = pb.ModelInferRequest(model_name="m")
    t = r.inputs.add(name="x", datatype="FP32", shape=[1])
    t.parameters["shared_memory_region"].string_param = "r"
    t.parameters["shared_memory_byte_size"].int64_param = 4
    o = r.outputs.add(name="y")
    o.parameters["classification"].int64_param = 3
    write("grpc_infer", "shm_unknown", r.SerializeToString())

    # "fuzz" is the 64-byte region the targets register (fuzz/src/lib.rs): one input from it beside one in
    # raw_input_contents, and an output into it.
    r = pb.ModelInferRequest(model_name="m")
    t = r.inputs.add(name="x", datatype="INT32", shape=[2])
    t.parameters["shared_memory_region"].string_param = "fuzz"
    t.parameters["shared_memory_byte_size"].uint64_param = 8
    t.parameters["shared_memory_offset"].uint64_param = 8
    r.inputs.add(name="y", datatype="UINT8", shape=[3])
    r.raw_input_contents.append(b"abc")
    o = r.outputs.add(name="x")
    o.parameters["shared_memory_region"].string_param = "fuzz"
    o.parameters["shared_memory_byte_size"].int64_param = 8
    write("grpc_infer", "shm", r.SerializeToString())


def raw_seeds():
    for i, dt in enumerate(DATATYPES):
        if dt == "BYTES":
            write("raw_tensor", dt.lower(), bytes([i, 1, 2]) + bytes_tensor([b"ab", b"\x00"]))
            continue
        size = {"BOOL": 1, "UINT8": 1, "INT8": 1, "UINT16": 2, "INT16": 2, "FP16": 2, "BF16": 2, "UINT32": 4, "INT32": 4,
                "FP32": 4, "UINT64": 8, "INT64": 8, "FP64": 8}[dt]
        write("raw_tensor", dt.lower(), bytes([i, 2, 2, 3]) + bytes(range(6 * size)))
    write("raw_tensor", "scalar", bytes([11, 0]) + struct.pack("<f", 1.5))


def pbtxt_seeds():
    n = 0
    for base, _, files in sorted(os.walk(os.path.join(ROOT, "models"))):
        if "config.pbtxt" in files:
            with open(os.path.join(base, "config.pbtxt"), "rb") as f:
                n += 1
                write("pbtxt_config", f"model{n:02d}", f.read())
    write("pbtxt_config", "everything", """
name: "m" platform: "onnxruntime_onnx" max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 format: FORMAT_NCHW dims: [ 3, -1, 224 ] reshape: { shape: [ 1 ] } } ]
output < name: "y" data_type: TYPE_STRING dims: [ 1 ] label_filename: "labels.txt" >
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching { preferred_batch_size: [ 4, 8 ] max_queue_delay_microseconds: 100
  default_queue_policy { timeout_action: REJECT default_timeout_microseconds: 5 } priority_levels: 2 }
parameters { key: "batching_window" value: { string_value: "fixed" } }
version_policy: { latest { num_versions: 2 } }
optimization { execution_accelerators { cpu_execution_accelerator: [ { name: "openvino" } ] } }
# a comment
""")


def load_seeds():
    config = {"name": "m", "platform": "onnxruntime_onnx", "max_batch_size": 4,
              "input": [{"name": "x", "data_type": "TYPE_FP32", "dims": ["4"]}],
              "output": [{"name": "y", "data_type": "TYPE_FP32", "dims": ["1"]}],
              "parameters": {"k": {"string_value": "v"}},
              "dynamic_batching": {"max_queue_delay_microseconds": "100"}}
    write("load_config", "config", json.dumps({"parameters": {"config": json.dumps(config)}}))
    write("load_config", "empty", "{}")
    write("load_config", "file", json.dumps({"parameters": {"file:1/model.onnx": "AAAA"}}))
    write("load_config", "sequence", json.dumps({"parameters": {"config": json.dumps({"sequence_batching": {}})}}))


if __name__ == "__main__":
    http_seeds()
    grpc_seeds()
    raw_seeds()
    pbtxt_seeds()
    load_seeds()
    print("seeds written under", CORPUS)
