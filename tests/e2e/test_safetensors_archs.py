"""DistilBERT, RoBERTa and XLM-RoBERTa safetensors models on the candle runtime: the tiny random-weight
fixtures of models/candle_archs (made by models/generate_candle_archs.py), served from that repository as it
is (no config.pbtxt), and again with configs: token ids in, and several instances with their own intra-op
threads. Driven by tritonclient over HTTP and gRPC; every answer is checked against the embeddings Hugging Face
transformers computed in PyTorch (cosine > 0.9999, largest difference < 1e-4), so no torch is needed here."""
import concurrent.futures
import glob
import os
import shutil
import tempfile

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from server import ROOT, Server

FIXTURES = os.path.join(ROOT, "models", "candle_archs")
ARCHS = ["distilbert", "roberta", "xlm_roberta"]


def reference(name):
    with np.load(os.path.join(FIXTURES, "reference", f"{name}.npz")) as r:
        return {k: r[k] for k in r.files}


@pytest.fixture(scope="module")
def configured():
    """Copies of the fixtures under configs: token ids in; two instances of two intra-op threads each (the
    model's `intra_op_thread_count`); two instances with the server's `--intra-op-threads` (3)."""
    root = tempfile.mkdtemp(prefix="ferroserve-archs-")
    source = os.path.join(FIXTURES, "repository")
    configs = {
        "roberta_ids": ("roberta", 'backend: "candle"\nmax_batch_size: 8\n'
                        'input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },\n'
                        '        { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
                        'output [ { name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 32 ] } ]\n'),
        # Short names: Linux keeps 15 bytes of a thread's name, and the test counts the threads by name.
        "pool": ("xlm_roberta", 'backend: "candle"\nmax_batch_size: 8\n'
                 'dynamic_batching { max_queue_delay_microseconds: 2000 }\n'
                 'instance_group [ { count: 2 kind: KIND_CPU } ]\n'
                 'parameters { key: "intra_op_thread_count" value: { string_value: "2" } }\n'),
        "flag": ("distilbert", 'backend: "candle"\nmax_batch_size: 8\ninstance_group [ { count: 2 kind: KIND_CPU } ]\n'),
    }
    for name, (arch, config) in configs.items():
        shutil.copytree(os.path.join(source, arch), os.path.join(root, name))
        with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
            f.write(config)
    yield root
    shutil.rmtree(root)


@pytest.fixture(scope="module")
def server(configured):
    s = Server("--model-repository", configured, "--intra-op-threads", "3",
               repository=os.path.join(FIXTURES, "repository"))
    yield s
    assert s.stop() == 0


def check(got, want):
    assert got.shape == want.shape, (got.shape, want.shape)
    for g, w in zip(got, want):
        cosine = float(np.dot(g, w) / (np.linalg.norm(g) * np.linalg.norm(w)))
        assert cosine > 0.9999, cosine
        assert np.max(np.abs(g - w)) < 1e-4, np.max(np.abs(g - w))


def text_input(mod, texts):
    inp = mod.InferInput("TEXT", [len(texts), 1], "BYTES")
    inp.set_data_from_numpy(np.array([[t.encode()] for t in texts], dtype=np.object_))
    return inp


def client(protocol, server):
    if protocol == "http":
        return httpclient, httpclient.InferenceServerClient(server.http_addr)
    return grpcclient, grpcclient.InferenceServerClient(server.grpc_addr)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("name", ARCHS)
def test_text_embeddings_match_transformers(server, name, protocol):
    ref = reference(name)
    texts = [str(t) for t in ref["texts"]]
    mod, c = client(protocol, server)
    meta = c.get_model_metadata(name)
    if protocol == "http":
        assert meta["platform"] == "candle_safetensors"
        assert meta["outputs"] == [{"name": "EMBEDDING", "datatype": "FP32", "shape": [-1, 32]}]
    else:
        assert meta.platform == "candle_safetensors"
        assert [int(d) for d in meta.outputs[0].shape] == [-1, 32]
    batched = c.infer(name, [text_input(mod, texts)]).as_numpy("EMBEDDING")
    check(batched, ref["embeddings"])
    # A row alone gives what it gave inside the padded batch.
    for i, t in enumerate(texts):
        alone = c.infer(name, [text_input(mod, [t])]).as_numpy("EMBEDDING")
        assert np.max(np.abs(alone[0] - batched[i])) < 1e-5, (name, t)
    c.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_token_ids_match_transformers(server, protocol):
    ref = reference("roberta")
    mod, c = client(protocol, server)
    inputs = []
    for key in ("input_ids", "attention_mask"):
        inp = mod.InferInput(key, list(ref[key].shape), "INT64")
        inp.set_data_from_numpy(ref[key])
        inputs.append(inp)
    check(c.infer("roberta_ids", inputs).as_numpy("EMBEDDING"), ref["embeddings"])
    c.close()


def op_threads(server, model):
    """The intra-op threads of `model`'s instances, by name (`fs-<model>:<version>-<instance>-op<i>`)."""
    names = []
    for comm in glob.glob(f"/proc/{server.proc.pid}/task/*/comm"):
        with open(comm) as f:
            names.append(f.read().strip())
    return sorted(n for n in names if n.startswith(f"fs-{model}:1-") and "-op" in n)


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="thread names are read from /proc")
def test_each_instance_has_its_configured_intra_op_threads(server):
    # intra_op_thread_count 2 in the config: 2 instances x 2 threads.
    assert op_threads(server, "pool") == ["fs-pool:1-0-op0", "fs-pool:1-0-op1", "fs-pool:1-1-op0", "fs-pool:1-1-op1"]
    # No parameter: the server's --intra-op-threads 3, for each of the 2 instances.
    assert op_threads(server, "flag") == [f"fs-flag:1-{i}-op{t}" for i in range(2) for t in range(3)]


def test_two_instances_with_their_own_threads_answer_concurrent_requests_correctly(server):
    ref = reference("xlm_roberta")
    texts = [str(t) for t in ref["texts"]]
    want = dict(zip(texts, ref["embeddings"]))

    def ask(job):
        i, protocol = job
        mod, c = client(protocol, server)
        try:
            text = texts[i % len(texts)]
            got = c.infer("pool", [text_input(mod, [text])]).as_numpy("EMBEDDING")
            return text, got[0]
        finally:
            c.close()

    jobs = [(i, "http" if i % 2 else "grpc") for i in range(48)]
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, jobs))
    for text, got in answers:
        check(got[None], want[text][None])
    # And the other configured model, whose threads come from the server's flag.
    ref = reference("distilbert")
    mod, c = client("http", server)
    check(c.infer("flag", [text_input(mod, [str(t) for t in ref["texts"]])]).as_numpy("EMBEDDING"), ref["embeddings"])
    stats = c.get_inference_statistics("pool")["model_stats"][0]
    assert int(stats["inference_count"]) == len(jobs)
    c.close()
