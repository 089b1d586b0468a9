#!/usr/bin/env python3
"""Writes bytes_identity.onnx next to this script: one STRING Identity, [batch, n] -> [batch, n].

The crate's tests send BYTES with NUL and non-UTF-8 bytes through it and expect them back unchanged.
(models/repository/strings also has an Identity output, but its StringNormalizer output refuses non-UTF-8
input, so it cannot carry those cases.) Run with the project's venv:
`.venv/bin/python runtimes/onnx/tests/models/make_bytes_identity.py`.
"""
import os

import onnx
from onnx import TensorProto, helper


def main():
    graph = helper.make_graph(
        [helper.make_node("Identity", ["IN"], ["OUT"])],
        "bytes_identity",
        [helper.make_tensor_value_info("IN", TensorProto.STRING, ["batch", "n"])],
        [helper.make_tensor_value_info("OUT", TensorProto.STRING, ["batch", "n"])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.checker.check_model(model, full_check=True)
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bytes_identity.onnx")
    with open(path, "wb") as f:
        f.write(model.SerializeToString(deterministic=True))


if __name__ == "__main__":
    main()
