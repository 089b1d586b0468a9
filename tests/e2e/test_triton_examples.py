"""The calls Triton's client example programs make (simple_*_infer_client, simple_*_async_infer_client,
simple_*_string_infer_client, simple_*_health_metadata, image_client's classification), made with tritonclient
over HTTP and gRPC against the real binary serving models/triton_examples (see
models/generate_triton_examples.py). Every answer is checked against numpy."""
import importlib.util
import os
import queue

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import ROOT, Server

EXAMPLES = os.path.join(ROOT, "models", "triton_examples")
MODELS = ["simple", "simple_string", "simple_identity", "simple_int8", "identity_fp32_4mib", "image_classifier"]
# "http" sends binary tensor data (what the example programs do); "http-json" sends and asks for JSON data.
PROTOCOLS = ["http", "http-json", "grpc"]


@pytest.fixture(scope="module")
def srv():
    s = Server(repository=EXAMPLES)
    yield s
    assert s.stop() == 0, s.logs()


@pytest.fixture(scope="module")
def classifier():
    """The image classifier's weights and labels as the generator defines them (its seed), not as read back
    from the files the server loads, so a wrong model.onnx or labels.txt fails too."""
    path = os.path.join(ROOT, "models", "generate_triton_examples.py")
    spec = importlib.util.spec_from_file_location("generate_triton_examples", path)
    generator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generator)
    w, b = generator.classifier_weights()
    assert w.shape == (3, 10) and b.shape == (10,) and len(generator.LABELS) == 10
    return w, b, generator.LABELS


def client_for(srv, protocol, concurrency=1):
    if protocol == "grpc":
        return grpcclient.InferenceServerClient(srv.grpc_addr), grpcclient
    return httpclient.InferenceServerClient(srv.http_addr, concurrency=concurrency), httpclient


def tensors(mod, protocol, named_arrays, datatype):
    """InferInputs for {name: array}, binary or JSON as the protocol says."""
    inputs = []
    for name, array in named_arrays.items():
        inp = mod.InferInput(name, list(array.shape), datatype)
        if protocol == "http-json":
            inp.set_data_from_numpy(array, binary_data=False)
        else:
            inp.set_data_from_numpy(array)
        inputs.append(inp)
    return inputs


def requested(mod, protocol, names, **kwargs):
    if mod is httpclient:
        return [mod.InferRequestedOutput(n, binary_data=protocol != "http-json", **kwargs) for n in names]
    return [mod.InferRequestedOutput(n, **kwargs) for n in names]


def as_text(array):
    """A BYTES answer as str elements (tritonclient gives bytes, or str for some JSON answers)."""
    return np.vectorize(lambda v: v.decode() if isinstance(v, bytes) else str(v), otypes=[object])(array)


def infer(srv, protocol, model, named_arrays, datatype, outputs, **kwargs):
    client, mod = client_for(srv, protocol)
    try:
        result = client.infer(model, tensors(mod, protocol, named_arrays, datatype),
                              outputs=requested(mod, protocol, outputs, **kwargs))
        return {n: result.as_numpy(n) for n in outputs}
    finally:
        client.close()


def simple_inputs(rng, batch, dtype=np.int32, low=-1000, high=1000):
    return {
        "INPUT0": rng.integers(low, high, (batch, 16)).astype(dtype),
        "INPUT1": rng.integers(low, high, (batch, 16)).astype(dtype),
    }


def check_simple(answer, inputs):
    a, b = inputs["INPUT0"], inputs["INPUT1"]
    assert answer["OUTPUT0"].dtype == a.dtype and answer["OUTPUT1"].dtype == a.dtype
    np.testing.assert_array_equal(answer["OUTPUT0"], a + b)
    np.testing.assert_array_equal(answer["OUTPUT1"], a - b)


def dims(values):
    """Dims or shapes as ints (gRPC's JSON writes int64 as strings)."""
    return [int(v) for v in values]


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_every_model_loads(srv, protocol):
    client, _ = client_for(srv, protocol)
    if protocol == "grpc":
        index = client.get_model_repository_index(as_json=True).get("models", [])
    else:
        index = client.get_model_repository_index()
    assert {m["name"]: m.get("state") for m in index} == {m: "READY" for m in MODELS}, srv.logs()
    assert all(client.is_model_ready(m) for m in MODELS)
    client.close()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_health_and_metadata(srv, protocol):
    client, _ = client_for(srv, protocol)
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("simple")
    assert client.is_model_ready("simple", "1")
    assert not client.is_model_ready("simple", "2")
    assert not client.is_model_ready("no_such_model")
    if protocol == "grpc":
        server = client.get_server_metadata(as_json=True)
        model = client.get_model_metadata("simple", as_json=True)
    else:
        server = client.get_server_metadata()
        model = client.get_model_metadata("simple")
    assert server["name"] == "triton" and server["version"]
    assert "binary_tensor_data" in server["extensions"] and "classification" in server["extensions"]
    assert model["name"] == "simple" and model["versions"] == ["1"] and model["platform"] == "onnxruntime_onnx"
    for kind in ("inputs", "outputs"):
        names = ["INPUT0", "INPUT1"] if kind == "inputs" else ["OUTPUT0", "OUTPUT1"]
        assert [(t["name"], t["datatype"], dims(t["shape"])) for t in model[kind]] == [
            (n, "INT32", [-1, 16]) for n in names]
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("no_such_model")
    client.close()


# model -> (max_batch_size, inputs, outputs), each tensor (name, config data type, dims)
CONFIGS = {
    "simple": (8, [("INPUT0", "TYPE_INT32", [16]), ("INPUT1", "TYPE_INT32", [16])],
               [("OUTPUT0", "TYPE_INT32", [16]), ("OUTPUT1", "TYPE_INT32", [16])]),
    "simple_string": (8, [("INPUT0", "TYPE_STRING", [16]), ("INPUT1", "TYPE_STRING", [16])],
                      [("OUTPUT0", "TYPE_STRING", [16]), ("OUTPUT1", "TYPE_STRING", [16])]),
    "simple_identity": (8, [("INPUT0", "TYPE_STRING", [-1])], [("OUTPUT0", "TYPE_STRING", [-1])]),
    "simple_int8": (8, [("INPUT0", "TYPE_INT8", [16]), ("INPUT1", "TYPE_INT8", [16])],
                    [("OUTPUT0", "TYPE_INT8", [16]), ("OUTPUT1", "TYPE_INT8", [16])]),
    "identity_fp32_4mib": (0, [("INPUT0", "TYPE_FP32", [1 << 20])], [("OUTPUT0", "TYPE_FP32", [1])]),
    "image_classifier": (8, [("INPUT", "TYPE_FP32", [3, 8, 8])], [("OUTPUT", "TYPE_FP32", [10])]),
}


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model", MODELS)
def test_model_config(srv, protocol, model):
    client, _ = client_for(srv, protocol)
    if protocol == "grpc":
        config = client.get_model_config(model, as_json=True)["config"]
    else:
        config = client.get_model_config(model)
    client.close()
    max_batch_size, inputs, outputs = CONFIGS[model]
    assert config["name"] == model
    assert config["platform"] == "onnxruntime_onnx"
    assert config.get("max_batch_size", 0) == max_batch_size  # proto3 JSON leaves out a zero
    assert [(t["name"], t["data_type"], dims(t["dims"])) for t in config["input"]] == inputs
    assert [(t["name"], t["data_type"], dims(t["dims"])) for t in config["output"]] == outputs
    # The input format the config states (image_client builds its input from it); proto3 JSON leaves out
    # FORMAT_NONE, the default.
    formats = [t.get("format", "FORMAT_NONE") for t in config["input"]]
    assert formats == (["FORMAT_NCHW"] if model == "image_classifier" else ["FORMAT_NONE"] * len(inputs))
    labels = [t.get("label_filename", "") for t in config["output"]]
    assert labels == (["labels.txt"] if model == "image_classifier" else [""] * len(outputs))


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_simple(srv, protocol):
    rng = np.random.default_rng(1)
    # What the example programs send first: 0..15 and all ones.
    first = {"INPUT0": np.arange(16, dtype=np.int32)[None], "INPUT1": np.ones((1, 16), dtype=np.int32)}
    check_simple(infer(srv, protocol, "simple", first, "INT32", ["OUTPUT0", "OUTPUT1"]), first)
    for batch in (1, 3):
        inputs = simple_inputs(rng, batch)
        check_simple(infer(srv, protocol, "simple", inputs, "INT32", ["OUTPUT0", "OUTPUT1"]), inputs)
    # Only one output asked for: only that one comes back.
    client, mod = client_for(srv, protocol)
    result = client.infer("simple", tensors(mod, protocol, first, "INT32"),
                          outputs=requested(mod, protocol, ["OUTPUT1"]))
    np.testing.assert_array_equal(result.as_numpy("OUTPUT1"), first["INPUT0"] - first["INPUT1"])
    assert result.as_numpy("OUTPUT0") is None
    client.close()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_simple_async(srv, protocol):
    rng = np.random.default_rng(2)
    requests = [simple_inputs(rng, 1 + i % 4) for i in range(12)]
    client, mod = client_for(srv, protocol, concurrency=4)
    outputs = ["OUTPUT0", "OUTPUT1"]
    answers = {}
    if protocol == "grpc":
        done = queue.Queue()
        for i, inputs in enumerate(requests):
            client.async_infer("simple", tensors(mod, protocol, inputs, "INT32"),
                               callback=lambda result, error, i=i: done.put((i, result, error)),
                               outputs=requested(mod, protocol, outputs), request_id=str(i))
        for _ in requests:
            i, result, error = done.get(timeout=30)
            assert error is None, error
            assert result.get_response().id == str(i)
            answers[i] = {n: result.as_numpy(n) for n in outputs}
    else:
        pending = [client.async_infer("simple", tensors(mod, protocol, inputs, "INT32"),
                                      outputs=requested(mod, protocol, outputs), request_id=str(i))
                   for i, inputs in enumerate(requests)]
        for i, handle in enumerate(pending):
            result = handle.get_result(timeout=30)
            assert result.get_response()["id"] == str(i)
            answers[i] = {n: result.as_numpy(n) for n in outputs}
    client.close()
    assert sorted(answers) == list(range(len(requests)))
    for i, inputs in enumerate(requests):
        check_simple(answers[i], inputs)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_a_batch_of_eight_answers_as_eight_singles(srv, protocol):
    inputs = simple_inputs(np.random.default_rng(3), 8)
    batched = infer(srv, protocol, "simple", inputs, "INT32", ["OUTPUT0", "OUTPUT1"])
    check_simple(batched, inputs)
    for row in range(8):
        single = {n: a[row:row + 1] for n, a in inputs.items()}
        answer = infer(srv, protocol, "simple", single, "INT32", ["OUTPUT0", "OUTPUT1"])
        for name in ("OUTPUT0", "OUTPUT1"):
            np.testing.assert_array_equal(answer[name], batched[name][row:row + 1])


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_batch_over_max_batch_size_is_refused(srv, protocol):
    inputs = simple_inputs(np.random.default_rng(4), 9)
    with pytest.raises(InferenceServerException) as err:
        infer(srv, protocol, "simple", inputs, "INT32", ["OUTPUT0"])
    assert err.value.status() in ("400", "StatusCode.INVALID_ARGUMENT"), err.value
    assert "9" in err.value.message() and "8" in err.value.message()  # the batch size and the limit


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch", [1, 4])
def test_simple_string(srv, protocol, batch):
    rng = np.random.default_rng(5)
    ints = {n: a.astype(np.int64) for n, a in simple_inputs(rng, batch, np.int32, -100000, 100000).items()}
    ints["INPUT0"][0, :3] = [0, -1, 2147483647 - 100000]
    text = {n: np.vectorize(lambda v: str(v).encode(), otypes=[object])(a) for n, a in ints.items()}
    answer = infer(srv, protocol, "simple_string", text, "BYTES", ["OUTPUT0", "OUTPUT1"])
    for name, expected in (("OUTPUT0", ints["INPUT0"] + ints["INPUT1"]), ("OUTPUT1", ints["INPUT0"] - ints["INPUT1"])):
        assert answer[name].shape == (batch, 16)
        assert as_text(answer[name]).tolist() == [[str(v) for v in row] for row in expected.tolist()]


IDENTITY_TEXT = ["hello", "", "  spaces  ", "ünïcödé ✓ 日本語", "tab\tnew\nline", "x" * 5000, "quote\"back\\slash",
                 "12", "emoji 🦀"]


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (3, 9)])
def test_simple_identity_returns_any_text(srv, protocol, shape):
    rng = np.random.default_rng(6)
    items = [IDENTITY_TEXT[i] for i in rng.permutation(len(IDENTITY_TEXT))[:shape[1]]]
    strings = np.array([[s.encode() for s in np.roll(items, row)] for row in range(shape[0])], dtype=np.object_)
    answer = infer(srv, protocol, "simple_identity", {"INPUT0": strings}, "BYTES", ["OUTPUT0"])["OUTPUT0"]
    assert answer.shape == shape
    assert as_text(answer).tolist() == as_text(strings).tolist()


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_simple_identity_returns_bytes_that_are_not_text(srv, protocol):
    raw = np.array([[b"\x00\x01\xff", b"nul\x00inside", b"\xc3\x28"]], dtype=np.object_)
    answer = infer(srv, protocol, "simple_identity", {"INPUT0": raw}, "BYTES", ["OUTPUT0"])["OUTPUT0"]
    assert answer.tolist() == raw.tolist()


def test_simple_identity_carries_nul_in_json_text(srv):
    """Over HTTP JSON, BYTES are JSON strings: text with NUL characters goes in and comes back unchanged."""
    text = np.array([["nul\x00inside", "\x00", "caf\u00e9\x00end"]], dtype=np.object_)
    answer = infer(srv, "http-json", "simple_identity", {"INPUT0": text}, "BYTES", ["OUTPUT0"])["OUTPUT0"]
    as_text = [[v.decode() if isinstance(v, bytes) else v for v in row] for row in answer.tolist()]
    assert as_text == text.tolist()


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_simple_int8(srv, protocol):
    rng = np.random.default_rng(7)
    for batch in (1, 8):
        # |a|, |b| <= 63: sums and differences stay inside int8, so numpy's int8 arithmetic is exact.
        inputs = simple_inputs(rng, batch, np.int8, -63, 64)
        inputs["INPUT0"][0, :2] = [-63, 63]
        inputs["INPUT1"][0, :2] = [63, -63]
        check_simple(infer(srv, protocol, "simple_int8", inputs, "INT8", ["OUTPUT0", "OUTPUT1"]), inputs)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_identity_fp32_4mib_sums_its_input(srv, protocol):
    x = np.random.default_rng(8).standard_normal(1 << 20).astype(np.float32)
    answer = infer(srv, protocol, "identity_fp32_4mib", {"INPUT0": x}, "FP32", ["OUTPUT0"])["OUTPUT0"]
    assert answer.shape == (1,) and answer.dtype == np.float32
    # float32 accumulation in another order: within a millionth of the sum of magnitudes.
    np.testing.assert_allclose(answer[0], x.astype(np.float64).sum(), rtol=0, atol=1e-6 * np.abs(x).sum())


def classifier_numpy(weights, x):
    w, b, _ = weights
    return x.astype(np.float64).mean(axis=(2, 3)) @ w + b


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch", [1, 8])
def test_image_classifier_scores(srv, classifier, protocol, batch):
    x = np.random.default_rng(9).standard_normal((batch, 3, 8, 8)).astype(np.float32)
    answer = infer(srv, protocol, "image_classifier", {"INPUT": x}, "FP32", ["OUTPUT"])["OUTPUT"]
    assert answer.shape == (batch, 10) and answer.dtype == np.float32
    np.testing.assert_allclose(answer, classifier_numpy(classifier, x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("protocol", PROTOCOLS)
@pytest.mark.parametrize("batch", [1, 5])
def test_image_classifier_top3_has_labels(srv, classifier, protocol, batch):
    x = np.random.default_rng(10 + batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
    answer = infer(srv, protocol, "image_classifier", {"INPUT": x}, "FP32", ["OUTPUT"], class_count=3)["OUTPUT"]
    assert answer.shape == (batch, 3)
    scores = classifier_numpy(classifier, x)
    labels = classifier[2]
    for row, entries in zip(scores, as_text(answer).tolist()):
        top3 = np.argsort(-row, kind="stable")[:3]
        parsed = [entry.split(":") for entry in entries]  # "VALUE:INDEX:LABEL", as Triton writes it
        assert [(int(index), label) for _, index, label in parsed] == [(int(i), labels[i]) for i in top3]
        np.testing.assert_allclose([float(value) for value, _, _ in parsed], row[top3], rtol=0, atol=2e-6)
