#!/usr/bin/env python3
"""Writes a BERT sentence encoder (a Hugging Face safetensors directory: model.safetensors + config.json) as an
ONNX graph, built node by node with the `onnx` helper from the same weights: token ids in (INT64 `input_ids`,
`attention_mask`, `[batch, seq]`), mean-pooled, L2-normalised FP32 `EMBEDDING` `[batch, hidden]` out. No torch
and no exporter: the tests use it to serve one model in two formats (ONNX Runtime and candle) and compare them.

    python models/bert_to_onnx.py <model dir> <out.onnx>
"""
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from bert_reference import load_safetensors  # noqa: E402


def convert(model_dir, out_path):
    w = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    if not any(k.startswith("embeddings.") for k in w):
        w = {k.split("bert.", 1)[-1]: v for k, v in w.items()}
    config = json.load(open(os.path.join(model_dir, "config.json")))
    hidden, heads, eps = config["hidden_size"], config["num_attention_heads"], config["layer_norm_eps"]
    d = hidden // heads
    nodes, inits = [], []

    def const(name, array):
        inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(op, inputs, name, **attrs):
        nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name

    def linear(x, prefix, name):
        wt = const(prefix + ".wT", w[prefix + ".weight"].T.copy())
        return node("Add", [node("MatMul", [x, wt], name + "_mm"), const(prefix + ".b", w[prefix + ".bias"])], name)

    def norm(x, prefix, name):
        return node("LayerNormalization", [x, const(prefix + ".g", w[prefix + ".weight"]),
                                           const(prefix + ".beta", w[prefix + ".bias"])], name, axis=-1, epsilon=eps)

    words = node("Gather", [const("word", w["embeddings.word_embeddings.weight"]), "input_ids"], "words")
    seq = node("Gather", [node("Shape", ["input_ids"], "ids_shape"), const("one_i", np.array(1, np.int64))], "seq")
    positions = node("Range", [const("zero_i", np.array(0, np.int64)), seq, const("step_i", np.array(1, np.int64))],
                     "positions")
    pos = node("Gather", [const("pos", w["embeddings.position_embeddings.weight"]), positions], "pos_emb")
    x = node("Add", [node("Add", [words, pos], "emb_wp"), const("type0", w["embeddings.token_type_embeddings.weight"][0])],
             "emb")
    x = norm(x, "embeddings.LayerNorm", "emb_ln")
    mask = node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    bias = node("Mul", [node("Sub", [const("one_f", np.array(1.0, np.float32)), mask], "unmask"),
                        const("neg", np.array(-1e9, np.float32))], "mask_bias")
    bias = node("Unsqueeze", [bias, const("axes12", np.array([1, 2], np.int64))], "mask_bias4")
    split_shape = const("split_shape", np.array([0, 0, heads, d], np.int64))
    merge_shape = const("merge_shape", np.array([0, 0, hidden], np.int64))
    scale = const("scale", np.array(1.0 / math.sqrt(d), np.float32))
    for i in range(config["num_hidden_layers"]):
        p, n = f"encoder.layer.{i}.", f"l{i}_"
        def heads_of(t, perm, tag):
            return node("Transpose", [node("Reshape", [t, split_shape], n + tag + "_r")], n + tag + "_t", perm=perm)
        q = heads_of(linear(x, p + "attention.self.query", n + "q"), [0, 2, 1, 3], "q")
        k = heads_of(linear(x, p + "attention.self.key", n + "k"), [0, 2, 3, 1], "k")
        v = heads_of(linear(x, p + "attention.self.value", n + "v"), [0, 2, 1, 3], "v")
        scores = node("Add", [node("Mul", [node("MatMul", [q, k], n + "qk"), scale], n + "scaled"), bias], n + "scores")
        probs = node("Softmax", [scores], n + "probs", axis=-1)
        ctx = node("Transpose", [node("MatMul", [probs, v], n + "ctx_h")], n + "ctx_t", perm=[0, 2, 1, 3])
        ctx = node("Reshape", [ctx, merge_shape], n + "ctx")
        attn = linear(ctx, p + "attention.output.dense", n + "attn")
        x = norm(node("Add", [attn, x], n + "res1"), p + "attention.output.LayerNorm", n + "ln1")
        h = linear(x, p + "intermediate.dense", n + "inter")
        erf = node("Erf", [node("Mul", [h, const(n + "rsqrt2", np.array(1 / math.sqrt(2), np.float32))], n + "hs")],
                   n + "erf")
        gelu = node("Mul", [node("Mul", [h, const(n + "half", np.array(0.5, np.float32))], n + "hh"),
                            node("Add", [erf, const(n + "one", np.array(1.0, np.float32))], n + "erf1")], n + "gelu")
        out = linear(gelu, p + "output.dense", n + "out")
        x = norm(node("Add", [out, x], n + "res2"), p + "output.LayerNorm", n + "ln2")
    mask3 = node("Unsqueeze", [mask, const("axis2", np.array([2], np.int64))], "mask3")
    axis1 = const("axis1", np.array([1], np.int64))
    summed = node("ReduceSum", [node("Mul", [x, mask3], "masked"), axis1], "summed", keepdims=0)
    counts = node("Max", [node("ReduceSum", [mask3, axis1], "counts", keepdims=0), const("tiny", np.array(1e-9, np.float32))],
                  "counts_safe")
    pooled = node("Div", [summed, counts], "pooled")
    length = node("Sqrt", [node("ReduceSum", [node("Mul", [pooled, pooled], "sq"), axis1], "sumsq", keepdims=1)], "length")
    nodes.append(helper.make_node("Div", [pooled, length], ["EMBEDDING"], name="normalize"))
    graph = helper.make_graph(
        nodes, "bert_sentence_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, [None, None]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [None, None])],
        [helper.make_tensor_value_info("EMBEDDING", TensorProto.FLOAT, [None, hidden])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    onnx.save(model, out_path)


if __name__ == "__main__":
    convert(sys.argv[1], sys.argv[2])
