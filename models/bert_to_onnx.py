#!/usr/bin/env python3
"""Writes a BERT sentence encoder (a Hugging Face safetensors directory: model.safetensors + config.json) as an
ONNX graph, built node by node with the `onnx` helper from the same weights: token ids in (INT64 `input_ids`,
`attention_mask`, `[batch, sequence]`), mean-pooled, L2-normalised FP32 `EMBEDDING` `[batch, hidden]` out. No
torch and no exporter: the tests use it to serve one model in several formats (ONNX Runtime, TorchScript,
candle) and compare them.

    python models/bert_to_onnx.py [--standard-ops] <model dir> <out.onnx>

The graph is laid out for ONNX Runtime's CPU kernels (benches/minilm_ort.py measures it against the others):
  - self-attention is one `com.microsoft` `Attention` node per layer: the Q, K and V projections as one packed
    `[hidden, 3 * hidden]` GEMM, then scaled, masked softmax attention per head, with none of the reshapes,
    transposes, scale and mask nodes between them. The mask goes in raw (`[batch, sequence]`, 1 = attend), so
    any padding is honoured as before, not only right-side padding as the 1-D `mask_index` form assumes;
  - the hidden states stay flat, `[batch * sequence, hidden]`, between layers, so each projection is one `Gemm`
    node with its bias (as fast as MatMul + Add over `[batch, sequence, hidden]`, and half the nodes);
  - the intermediate projection's bias goes into a `com.microsoft` `BiasGelu` (exact erf GELU) instead:
    ONNX Runtime's `Gemm` adds a bias with its own pass over the output, and the GELU pass can take it for free;
  - each residual is an `Add` before a `LayerNormalization` (opset 17).
Measured and not kept: `SkipLayerNormalization` (ONNX Runtime 1.31's CPU kernel takes about four times as long
as the `Add` and `LayerNormalization` it replaces), `EmbedLayerNormalization` (no measurable gain: the
embeddings are a tiny share), `MultiHeadAttention` (unpacked Q, K and V), the 1-D `mask_index` (no faster than
the raw mask) and the exporter-shaped graph plus `onnxruntime.transformers.optimizer` (the same fused ops
with SkipLayerNormalization). ONNX Runtime's own fusions fire on almost none of a hand-built graph (its
attention fusion wants the exporter's mask subgraph), so the graph is written fused. Most of the time left is
in the FP32 GEMMs.

`--standard-ops` writes plain ONNX instead (opset 20: MatMul/Softmax attention, `Gelu`; no `com.microsoft`
ops), for runtimes other than ONNX Runtime; the layout is otherwise the same.

`--int8` writes the fused graph with its projections quantized to INT8 (ONNX Runtime's dynamic quantization:
weights signed, per output channel, in 7 bits; activations quantized per call), the CPU deployment
sentence-transformers itself recommends for speed. It is a different model, and it runs only in ONNX Runtime
(`QAttention`, like the fused graph's `Attention`, is a `com.microsoft` op):
  - on this project's sentences its embeddings keep a cosine of about 0.99 to the FP32 ones
    (tests/e2e/test_three_runtimes.py holds it to 0.98, and to the FP32 similarity order);
  - at batch 32 on an AVX-512 VNNI CPU it runs about 2.3 to 2.5 times the FP32 graph (benches/minilm.py);
  - an activation's scale is taken over the whole batch, padding included, so under dynamic batching a
    sentence's vector moves a little with what it was batched with (cosine about 0.99 between alone and
    batched). Serve the FP32 graph where answers must not depend on the batch.
Per output channel, because one scale per weight matrix loses more (cosine about 0.97). In 7 bits
(`reduce_range`), because CPUs without VNNI add u8 x s8 products in pairs into 16 bits, which 8-bit weights can
overflow; on this project's sentences it costs nothing measurable. Only the projections are quantized; the
embedding table, layer norms, GELU and softmax stay FP32.
"""
import argparse
import json
import math
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))
from bert_reference import load_safetensors  # noqa: E402

MS = "com.microsoft"
# What `--int8` quantizes: every projection: the packed QKV inside Attention, and the output and FFN Gemms, which
# the dynamic quantizer turns into MatMul + Add before it chooses what to quantize.
QUANTIZED_OPS = ["MatMul", "Attention"]


class _Graph:
    """Nodes and initializers under construction; every node has one output, named after the node."""

    def __init__(self):
        self.nodes, self.inits = [], []

    def const(self, name, array):
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def node(self, op, inputs, name, **attrs):
        self.nodes.append(helper.make_node(op, inputs, [name], name=name, **attrs))
        return name


def convert(model_dir, out_path, *, standard_ops=False, int8=False):
    if int8:
        if standard_ops:
            raise ValueError("--int8 quantizes the fused graph; it does not combine with --standard-ops")
        _convert_int8(model_dir, out_path)
        return
    w = load_safetensors(os.path.join(model_dir, "model.safetensors"))
    if not any(k.startswith("embeddings.") for k in w):
        w = {k.split("bert.", 1)[-1]: v for k, v in w.items()}
    config = json.load(open(os.path.join(model_dir, "config.json")))
    hidden, eps = config["hidden_size"], config["layer_norm_eps"]
    g = _Graph()

    def linear(x, prefix, name, bias=True):
        inputs = [x, g.const(name + ".w", w[prefix + ".weight"])]
        if bias:
            inputs.append(g.const(name + ".b", w[prefix + ".bias"]))
        return g.node("Gemm", inputs, name, transB=1)

    def gelu(x, prefix, name):
        if standard_ops:
            return g.node("Gelu", [linear(x, prefix, name + "_in")], name)
        return g.node("BiasGelu", [linear(x, prefix, name + "_in", bias=False), g.const(name + ".b", w[prefix + ".bias"])],
                      name, domain=MS)

    def add_norm(x, residual, prefix, name):
        return g.node("LayerNormalization", [g.node("Add", [x, residual], name + "_res"),
                                             g.const(name + ".g", w[prefix + ".weight"]),
                                             g.const(name + ".beta", w[prefix + ".bias"])], name, axis=-1, epsilon=eps)

    # Embeddings: every token is of type 0, so that row is folded into the word table.
    e = "embeddings."
    words = g.node("Gather", [g.const("word", w[e + "word_embeddings.weight"] + w[e + "token_type_embeddings.weight"][0]),
                              "input_ids"], "words")
    ids_shape = g.node("Shape", ["input_ids"], "ids_shape")
    seq = g.node("Gather", [ids_shape, g.const("one_i", np.array(1, np.int64))], "seq")
    positions = g.node("Range", [g.const("zero_i", np.array(0, np.int64)), seq, g.const("step_i", np.array(1, np.int64))],
                       "positions")
    x = g.node("Add", [words, g.node("Gather", [g.const("pos", w[e + "position_embeddings.weight"]), positions], "pos_emb")],
               "emb_sum")
    x = g.node("LayerNormalization", [x, g.const("emb_ln.g", w[e + "LayerNorm.weight"]),
                                      g.const("emb_ln.beta", w[e + "LayerNorm.bias"])], "emb_ln", axis=-1, epsilon=eps)
    flat = g.const("flat_shape", np.array([-1, hidden], np.int64))
    unflat = g.node("Concat", [ids_shape, g.const("hidden_dim", np.array([hidden], np.int64))], "unflat_shape", axis=0)
    x = g.node("Reshape", [x, flat], "emb")
    attend = (_standard_attention if standard_ops else _fused_attention)(g, w, config, ids_shape, flat, unflat)
    for i in range(config["num_hidden_layers"]):
        p, n = f"encoder.layer.{i}.", f"l{i}_"
        ctx = attend(x, p + "attention.self.", n)
        x = add_norm(linear(ctx, p + "attention.output.dense", n + "attn"), x, p + "attention.output.LayerNorm", n + "ln1")
        h = gelu(x, p + "intermediate.dense", n + "gelu")
        x = add_norm(linear(h, p + "output.dense", n + "out"), x, p + "output.LayerNorm", n + "ln2")
    x = g.node("Reshape", [x, unflat], "states")
    # Mean pooling over the attended tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize).
    mask3 = g.node("Unsqueeze", [g.node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT),
                                 g.const("axis2", np.array([2], np.int64))], "mask3")
    axis1 = g.const("axis1", np.array([1], np.int64))
    summed = g.node("ReduceSum", [g.node("Mul", [x, mask3], "masked"), axis1], "summed", keepdims=0)
    counts = g.node("Max", [g.node("ReduceSum", [mask3, axis1], "counts", keepdims=0),
                            g.const("tiny", np.array(1e-9, np.float32))], "counts_safe")
    pooled = g.node("Div", [summed, counts], "pooled")
    length = g.node("Sqrt", [g.node("ReduceSum", [g.node("Mul", [pooled, pooled], "sq"), axis1], "sumsq", keepdims=1)],
                    "length")
    g.nodes.append(helper.make_node("Div", [pooled, length], ["EMBEDDING"], name="normalize"))
    tokens = ["batch", "sequence"]
    graph = helper.make_graph(
        g.nodes, "bert_sentence_encoder",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, tokens),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, tokens)],
        [helper.make_tensor_value_info("EMBEDDING", TensorProto.FLOAT, ["batch", hidden])], g.inits)
    opsets = [helper.make_opsetid("", 20)] + ([] if standard_ops else [helper.make_opsetid(MS, 1)])
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 9
    # The checker knows no com.microsoft schemas; ONNX Runtime checks those nodes when it loads the graph.
    if standard_ops:
        onnx.checker.check_model(model)
    os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
    onnx.save(model, out_path)


def _convert_int8(model_dir, out_path):
    """The fused graph, then ONNX Runtime's dynamic quantization of its projections (needs the onnxruntime wheel).
    Both are written away from `out_path`, which is replaced whole at the end: a repository being polled never
    sees a half-written model."""
    import shutil
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory() as work:
        fp32, int8 = os.path.join(work, "fp32.onnx"), os.path.join(work, "int8.onnx")
        convert(model_dir, fp32)
        # The quantizer's shape inference knows no com.microsoft ops, so the type of what they produce is named.
        quantize_dynamic(fp32, int8, weight_type=QuantType.QInt8, per_channel=True, reduce_range=True,
                         op_types_to_quantize=QUANTIZED_OPS, extra_options={"DefaultTensorType": TensorProto.FLOAT})
        os.makedirs(os.path.dirname(out_path) or ".", exist_ok=True)
        partial = out_path + ".partial"
        shutil.copyfile(int8, partial)
        os.replace(partial, out_path)


def _fused_attention(g, w, config, ids_shape, flat, unflat):
    """Returns `attend(x, prefix, name)`: self-attention over flat hidden states as one ONNX Runtime `Attention`
    node, giving the flat context."""
    mask = g.node("Cast", ["attention_mask"], "mask32", to=TensorProto.INT32)
    qkv = ("query", "key", "value")

    def attend(x, prefix, n):
        weights = np.concatenate([w[prefix + t + ".weight"].T for t in qkv], axis=1)
        bias = np.concatenate([w[prefix + t + ".bias"] for t in qkv])
        x3 = g.node("Reshape", [x, unflat], n + "x3")
        ctx = g.node("Attention", [x3, g.const(n + "qkv.w", weights), g.const(n + "qkv.b", bias), mask], n + "ctx3",
                     domain=MS, num_heads=config["num_attention_heads"])
        return g.node("Reshape", [ctx, flat], n + "ctx")

    return attend


def _standard_attention(g, w, config, ids_shape, flat, unflat):
    """Returns `attend(x, prefix, name)`: the same self-attention in plain ONNX (Q, K and V GEMMs, per-head
    scaled scores plus the mask bias, softmax, context), giving the flat context."""
    hidden, heads = config["hidden_size"], config["num_attention_heads"]
    d = hidden // heads
    mask = g.node("Cast", ["attention_mask"], "mask_attn", to=TensorProto.FLOAT)
    bias = g.node("Mul", [g.node("Sub", [g.const("one_f", np.array(1.0, np.float32)), mask], "unmask"),
                          g.const("neg", np.array(-1e9, np.float32))], "mask_bias")
    bias = g.node("Unsqueeze", [bias, g.const("axes12", np.array([1, 2], np.int64))], "mask_bias4")
    split = g.node("Concat", [ids_shape, g.const("heads_d", np.array([heads, d], np.int64))], "split_shape", axis=0)
    scale = g.const("scale", np.array(1.0 / math.sqrt(d), np.float32))

    def attend(x, prefix, n):
        def heads_of(t, perm):
            proj = g.node("Gemm", [x, g.const(n + t + ".w", w[prefix + t + ".weight"]),
                                   g.const(n + t + ".b", w[prefix + t + ".bias"])], n + t, transB=1)
            return g.node("Transpose", [g.node("Reshape", [proj, split], n + t + "_r")], n + t + "_t", perm=perm)

        q, k, v = heads_of("query", [0, 2, 1, 3]), heads_of("key", [0, 2, 3, 1]), heads_of("value", [0, 2, 1, 3])
        scores = g.node("Add", [g.node("Mul", [g.node("MatMul", [q, k], n + "qk"), scale], n + "scaled"), bias],
                        n + "scores")
        probs = g.node("Softmax", [scores], n + "probs", axis=-1)
        ctx = g.node("Transpose", [g.node("MatMul", [probs, v], n + "ctx_h")], n + "ctx_t", perm=[0, 2, 1, 3])
        return g.node("Reshape", [ctx, flat], n + "ctx")

    return attend


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--standard-ops", action="store_true", help="plain ONNX attention, no com.microsoft ops")
    parser.add_argument("--int8", action="store_true", help="dynamic INT8 quantization of the fused graph's projections")
    parser.add_argument("model_dir")
    parser.add_argument("out")
    args = parser.parse_args()
    if args.int8 and args.standard_ops:
        parser.error("--int8 quantizes the fused graph; it does not combine with --standard-ops")
    convert(args.model_dir, args.out, standard_ops=args.standard_ops, int8=args.int8)
