"""End-to-end tests over gRPC: tritonclient.grpc (raw contents), typed contents, streaming and health."""
import queue

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc
from tritonclient.utils import InferenceServerException

from conftest import mlp_numpy
from server import Server


@pytest.fixture(scope="module")
def client(server):
    c = grpcclient.InferenceServerClient(server.grpc_addr)
    yield c
    c.close()


@pytest.fixture(scope="module")
def stub(server):
    channel = grpc.insecure_channel(server.grpc_addr)
    yield service_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("mlp")
    assert not client.is_model_ready("no_such_model")
    meta = client.get_server_metadata(as_json=True)
    assert meta["name"] == "triton"
    m = client.get_model_metadata("mlp", as_json=True)
    assert m["inputs"][0] == {"name": "INPUT0", "datatype": "FP32", "shape": ["-1", "16"]}
    config = client.get_model_config("mlp", as_json=True)["config"]
    assert config["max_batch_size"] == 64
    assert config["input"][0]["dims"] == ["16"]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    stats = client.get_inference_statistics("mlp", as_json=True)
    assert stats["model_stats"][0]["name"] == "mlp"


def test_mlp_matches_numpy(client, reference):
    ref = reference["mlp"]
    rng = np.random.default_rng(11)
    for batch in (1, 5, 64):
        x = rng.standard_normal((batch, 16)).astype(np.float32)
        inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x)
        result = client.infer("mlp", [inp], request_id="abc")
        assert result.get_response().id == "abc"
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_numpy(ref, x), rtol=1e-5, atol=1e-5)


def test_mixed_and_bytes(client, reference):
    ref = reference["mixed"]
    inputs = []
    for name, dtype in (("A", "FP32"), ("B", "INT64"), ("C", "FP16")):
        i = grpcclient.InferInput(name, list(ref[name].shape), dtype)
        i.set_data_from_numpy(ref[name])
        inputs.append(i)
    result = client.infer("mixed", inputs)
    for name in ("SUM", "B_TIMES_2", "A_POSITIVE", "C_HALF", "B_INT32"):
        np.testing.assert_allclose(result.as_numpy(name), ref[name], rtol=1e-3)
    text = np.array([b"a\xc3\xa9", b"xyz"], dtype=np.object_)
    inp = grpcclient.InferInput("TEXT", [2], "BYTES")
    inp.set_data_from_numpy(text)
    result = client.infer("strings", [inp], outputs=[grpcclient.InferRequestedOutput("ECHO")])
    assert list(result.as_numpy("ECHO")) == list(text)
    assert [o.name for o in result.get_response().outputs] == ["ECHO"]


def test_typed_contents(stub):
    request = service_pb2.ModelInferRequest(model_name="add_version", model_version="1")
    inp = request.inputs.add(name="IN", datatype="INT32", shape=[3])
    inp.contents.int_contents.extend([1, -2, 3])
    response = stub.ModelInfer(request)
    assert response.outputs[0].name == "OUT"
    assert np.frombuffer(response.raw_output_contents[0], dtype=np.int32).tolist() == [2, -1, 4]
    request = service_pb2.ModelInferRequest(model_name="mlp")
    inp = request.inputs.add(name="INPUT0", datatype="FP32", shape=[1, 16])
    inp.contents.fp32_contents.extend([1.0] * 16)
    response = stub.ModelInfer(request)
    assert list(response.outputs[0].shape) == [1, 4]


def status_of(stub, request):
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request)
    return err.value.code(), err.value.details()


def test_errors(stub):
    def req(**kw):
        r = service_pb2.ModelInferRequest(model_name=kw.get("model", "add_version"), model_version=kw.get("version", ""))
        i = r.inputs.add(name=kw.get("name", "IN"), datatype=kw.get("datatype", "INT32"), shape=kw.get("shape", [2]))
        if "raw" in kw:
            r.raw_input_contents.append(kw["raw"])
        if "contents" in kw:
            i.contents.int_contents.extend(kw["contents"])
        return r

    assert status_of(stub, req(model="nope", raw=b"\0" * 8))[0] == grpc.StatusCode.NOT_FOUND
    assert status_of(stub, req(version="7", raw=b"\0" * 8))[0] == grpc.StatusCode.NOT_FOUND
    code, msg = status_of(stub, req(name="X", raw=b"\0" * 8))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unexpected inference input" in msg
    code, msg = status_of(stub, req(raw=b"\0" * 7))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs 8 bytes" in msg
    code, msg = status_of(stub, req(datatype="FP32", raw=b"\0" * 8))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "datatype FP32" in msg
    code, msg = status_of(stub, req(contents=[1]))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "needs 2 elements" in msg
    mixed = req(contents=[1, 2], raw=b"\0" * 8)
    code, msg = status_of(stub, mixed)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "must not be specified when using raw_input_contents" in msg
    two_raw = req(raw=b"\0" * 8)
    two_raw.raw_input_contents.append(b"\0" * 8)
    assert status_of(stub, two_raw)[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, msg = status_of(stub, req(shape=[2, 1], raw=b"\0" * 8))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape" in msg
    missing = service_pb2.ModelInferRequest(model_name="mixed")
    code, msg = status_of(stub, missing)
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "missing" in msg


def test_tritonclient_raises(client):
    inp = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 2), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("mlp", [inp])


def test_stream_infer(client):
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(5):
            inp = grpcclient.InferInput("IN", [1], "INT32")
            inp.set_data_from_numpy(np.array([i], dtype=np.int32))
            client.async_stream_infer("add_version", [inp], request_id=str(i), model_version="1")
        bad = grpcclient.InferInput("IN", [1], "FP32")
        bad.set_data_from_numpy(np.array([0], dtype=np.float32))
        client.async_stream_infer("add_version", [bad], request_id="bad", model_version="1")
        seen, errors = {}, 0
        for _ in range(6):
            result, error = results.get(timeout=10)
            if error is not None:
                errors += 1
            else:
                seen[result.get_response().id] = result.as_numpy("OUT").tolist()
        assert seen == {str(i): [i + 1] for i in range(5)}
        assert errors == 1
    finally:
        client.stop_stream()


def test_stream_answers_in_request_order_each_marked_final(client):
    """A stream answers in the order its requests came, errors included (tritonclient hands a stream error to its
    callback without the request id, so position is how a client matches them), and every answer carries
    `triton_final_response: true`, as Triton's do for a model that is not decoupled."""
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        rng = np.random.default_rng(3)
        slow = grpcclient.InferInput("INPUT0", [64, 128], "FP32")
        slow.set_data_from_numpy(rng.standard_normal((64, 128)).astype(np.float32))
        good = grpcclient.InferInput("IN", [1], "INT32")
        good.set_data_from_numpy(np.array([41], dtype=np.int32))
        wrong_type = grpcclient.InferInput("IN", [1], "FP32")
        wrong_type.set_data_from_numpy(np.array([0], dtype=np.float32))
        sent = []
        for round_ in range(3):
            client.async_stream_infer("mlp_large", [slow], request_id=f"slow{round_}")
            client.async_stream_infer("add_version", [wrong_type], request_id=f"bad{round_}", model_version="1")
            client.async_stream_infer("add_version", [good], request_id=f"good{round_}", model_version="1")
            client.async_stream_infer("no_such_model", [good], request_id=f"unknown{round_}")
            sent += [f"slow{round_}", None, f"good{round_}", None]
        got = []
        for _ in sent:
            result, error = results.get(timeout=30)
            if error is not None:
                got.append(None)
                continue
            response = result.get_response()
            assert response.parameters["triton_final_response"].bool_param is True, response.parameters
            got.append(response.id)
        assert got == sent
    finally:
        client.stop_stream()


def test_grpc_health(server):
    channel = grpc.insecure_channel(server.grpc_addr)
    check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                request_serializer=lambda b: b, response_deserializer=lambda b: b)
    # HealthCheckResponse{status: SERVING (1)} is the two bytes 0x08 0x01.
    assert check(b"") == b"\x08\x01"
    channel.close()


def test_large_message(client):
    x = np.random.default_rng(1).standard_normal((64, 16)).astype(np.float32)
    inp = grpcclient.InferInput("TEXT", [1], "BYTES")
    inp.set_data_from_numpy(np.array([b"z" * (8 * 1024 * 1024)], dtype=np.object_))
    result = client.infer("strings", [inp], outputs=[grpcclient.InferRequestedOutput("ECHO")])
    assert len(result.as_numpy("ECHO")[0]) == 8 * 1024 * 1024
    del x


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(client, reference, algorithm):
    ref = reference["mlp"]
    inp = grpcclient.InferInput("INPUT0", [3, 16], "FP32")
    inp.set_data_from_numpy(ref["INPUT0"])
    result = client.infer("mlp", [inp], compression_algorithm=algorithm)
    np.testing.assert_allclose(result.as_numpy("OUTPUT0"), ref["OUTPUT0"], rtol=1e-5, atol=1e-5)


def test_a_reply_over_the_message_limit_fails_its_request_only():
    """A reply past `--max-message-bytes` is RESOURCE_EXHAUSTED for its request, saying why, as grpc-core servers
    answer an oversized message; on a stream the next request is still answered (tonic alone would end the call
    with OUT_OF_RANGE, and the stream with every request in flight on it)."""
    s = Server("--max-message-bytes", "1000000")
    client = grpcclient.InferenceServerClient(s.grpc_addr)

    def text(n):
        inp = grpcclient.InferInput("TEXT", [1, 1], "BYTES")
        inp.set_data_from_numpy(np.array([[b"a" * n]], dtype=np.object_))
        return [inp]

    try:
        assert len(client.infer("strings", text(100_000)).as_numpy("ECHO")[0][0]) == 100_000
        with pytest.raises(InferenceServerException) as err:
            client.infer("strings", text(600_000))
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        assert "--max-message-bytes" in err.value.message()
        results = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer("strings", text(600_000), request_id="big")
        client.async_stream_infer("strings", text(10), request_id="small")
        result, error = results.get(timeout=30)
        assert result is None and "--max-message-bytes" in str(error), error
        result, error = results.get(timeout=30)
        assert error is None and result.get_response().id == "small"
        client.stop_stream()
    finally:
        client.close()
        assert s.stop() == 0
