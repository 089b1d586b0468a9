"""End-to-end tests over HTTP/REST: tritonclient.http (JSON and binary) and raw requests."""
import http.client
import json
import struct

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from conftest import mlp_numpy


@pytest.fixture(scope="module")
def client(server):
    c = httpclient.InferenceServerClient(server.http_addr)
    yield c
    c.close()


def raw(server, method, path, body=b"", headers=None):
    host, port = server.http_addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request(method, path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    result = (resp.status, dict((k.lower(), v) for k, v in resp.getheaders()), data)
    conn.close()
    return result


def test_health_and_metadata(client):
    assert client.is_server_live()
    assert client.is_server_ready()
    meta = client.get_server_metadata()
    assert meta["name"] == "triton"
    assert "binary_tensor_data" in meta["extensions"]
    assert client.is_model_ready("mlp")
    assert client.is_model_ready("add_version", "2")
    assert not client.is_model_ready("no_such_model")
    m = client.get_model_metadata("mlp")
    assert m["inputs"] == [{"name": "INPUT0", "datatype": "FP32", "shape": [-1, 16]}]
    assert m["outputs"] == [{"name": "OUTPUT0", "datatype": "FP32", "shape": [-1, 4]}]
    assert m["platform"] == "onnxruntime_onnx"
    assert client.get_model_metadata("add_version")["versions"] == ["1", "2"]


def test_model_config_and_stats(client):
    config = client.get_model_config("mlp")
    assert config["max_batch_size"] == 64
    assert config["input"][0]["dims"] == [16]
    assert config["input"][0]["data_type"] == "TYPE_FP32"
    strings = client.get_model_config("strings")
    assert strings["max_batch_size"] == 32 and strings["input"][0]["dims"] == [1]
    assert strings["input"][0]["reshape"] == {"shape": []}
    assert client.get_model_config("add_version")["max_batch_size"] == 0
    x = np.ones((2, 16), dtype=np.float32)
    inp = httpclient.InferInput("INPUT0", [2, 16], "FP32")
    inp.set_data_from_numpy(x)
    client.infer("mlp", [inp])
    stats = client.get_inference_statistics("mlp")["model_stats"][0]
    assert stats["name"] == "mlp" and stats["version"] == "1"
    assert stats["inference_stats"]["success"]["count"] >= 1
    assert stats["inference_count"] >= 2
    everything = client.get_inference_statistics()
    assert {s["name"] for s in everything["model_stats"]} >= {"mlp", "mixed", "strings"}


@pytest.mark.parametrize("binary_in", [False, True])
@pytest.mark.parametrize("binary_out", [False, True])
def test_mlp_matches_numpy(client, reference, binary_in, binary_out):
    ref = reference["mlp"]
    rng = np.random.default_rng(7)
    for batch in (1, 3, 64):
        x = rng.standard_normal((batch, 16)).astype(np.float32)
        inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
        inp.set_data_from_numpy(x, binary_data=binary_in)
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary_out)
        result = client.infer("mlp", [inp], outputs=[out], request_id=f"r{batch}")
        assert result.get_response()["id"] == f"r{batch}"
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_numpy(ref, x), rtol=1e-5, atol=1e-5)
    inp = httpclient.InferInput("INPUT0", [3, 16], "FP32")
    inp.set_data_from_numpy(ref["INPUT0"], binary_data=binary_in)
    np.testing.assert_allclose(client.infer("mlp", [inp]).as_numpy("OUTPUT0"), ref["OUTPUT0"], rtol=1e-5, atol=1e-5)


def mixed_inputs(ref):
    """The `mixed` model's reference inputs, in binary (FP16 has no JSON form)."""
    inputs = []
    for name, dtype in (("A", "FP32"), ("B", "INT64"), ("C", "FP16")):
        i = httpclient.InferInput(name, list(ref[name].shape), dtype)
        i.set_data_from_numpy(ref[name], binary_data=True)
        inputs.append(i)
    return inputs


def test_mixed_dtypes_fp16_binary(client, reference):
    ref = reference["mixed"]
    inputs = mixed_inputs(ref)
    result = client.infer("mixed", inputs)
    for name in ("SUM", "B_TIMES_2", "A_POSITIVE", "C_HALF", "B_INT32"):
        got = result.as_numpy(name)
        assert got.dtype == ref[name].dtype, name
        np.testing.assert_allclose(got, ref[name], rtol=1e-3, err_msg=name)
    # Requested subset, in requested order, JSON for what JSON can carry.
    outs = [httpclient.InferRequestedOutput(n, binary_data=False) for n in ("B_INT32", "A_POSITIVE")]
    result = client.infer("mixed", inputs, outputs=outs)
    assert [o["name"] for o in result.get_response()["outputs"]] == ["B_INT32", "A_POSITIVE"]
    np.testing.assert_array_equal(result.as_numpy("A_POSITIVE"), ref["A_POSITIVE"])


def test_fp16_output_is_binary_even_when_json_requested(client, reference):
    ref = reference["mixed"]
    inputs = mixed_inputs(ref)
    result = client.infer("mixed", inputs, outputs=[httpclient.InferRequestedOutput("C_HALF", binary_data=False)])
    np.testing.assert_allclose(result.as_numpy("C_HALF"), ref["C_HALF"], rtol=1e-3)


@pytest.mark.parametrize("binary", [False, True])
def test_bytes_model(client, reference, binary):
    ref = reference["strings"]
    text = np.array([b"hello", b"ferroserve", b"Mixed Case 42", b""], dtype=np.object_)
    inp = httpclient.InferInput("TEXT", [4], "BYTES")
    inp.set_data_from_numpy(text, binary_data=binary)
    result = client.infer("strings", [inp], outputs=[httpclient.InferRequestedOutput(n, binary_data=binary) for n in ("UPPER", "ECHO")])
    as_bytes = lambda arr: [v if isinstance(v, bytes) else v.encode() for v in arr]  # JSON gives str
    assert as_bytes(result.as_numpy("UPPER")) == [t.upper() for t in text]
    assert as_bytes(result.as_numpy("ECHO")) == list(text)
    inp = httpclient.InferInput("TEXT", [3], "BYTES")
    inp.set_data_from_numpy(ref["TEXT"].astype(np.object_), binary_data=binary)
    assert as_bytes(client.infer("strings", [inp]).as_numpy("UPPER")) == list(ref["UPPER"])


def test_versions(client):
    inp = httpclient.InferInput("IN", [3], "INT32")
    inp.set_data_from_numpy(np.array([1, 2, 3], dtype=np.int32))
    for version, expected in (("1", [2, 3, 4]), ("2", [3, 4, 5]), ("", [3, 4, 5])):
        result = client.infer("add_version", [inp], model_version=version)
        assert result.as_numpy("OUT").tolist() == expected
        assert result.get_response()["model_version"] == (version or "2")


def test_request_without_content_type(server):
    body = json.dumps({"inputs": [{"name": "IN", "shape": [2], "datatype": "INT32", "data": [[5], [6]]}]})
    status, headers, data = raw(server, "POST", "/v2/models/add_version/versions/1/infer", body)
    assert status == 200, data
    assert headers["content-type"] == "application/json"
    assert json.loads(data)["outputs"][0]["data"] == [6, 7]


def test_raw_binary_request_and_response(server):
    header = json.dumps({
        "inputs": [{"name": "IN", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}}],
        "parameters": {"binary_data_output": True},
    }).encode()
    body = header + struct.pack("<2i", 10, 20)
    status, headers, data = raw(server, "POST", "/v2/models/add_version/infer", body,
                                {"Inference-Header-Content-Length": str(len(header))})
    assert status == 200, data
    n = int(headers["inference-header-content-length"])
    assert headers["content-type"] == "application/octet-stream"
    meta = json.loads(data[:n])
    assert meta["outputs"][0]["parameters"]["binary_data_size"] == 8
    assert struct.unpack("<2i", data[n:]) == (12, 22)


def error_of(server, path, body, headers=None):
    status, _, data = raw(server, "POST", path, body, headers)
    return status, json.loads(data)["error"]


MLP = "/v2/models/mlp/infer"


def mlp_body(**override):
    inp = {"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}
    inp.update(override)
    return json.dumps({"inputs": [inp]})


@pytest.mark.parametrize("path,body,status,needle", [
    ("/v2/models/nope/infer", mlp_body(), 404, "unknown model"),
    ("/v2/models/mlp/versions/9/infer", mlp_body(), 404, "Request for unknown model: 'mlp' version 9 is not found"),
    ("/v2/models/mlp/versions/abc/infer", mlp_body(), 400,
     "failed to get model version from specified version string 'abc'"),
    (MLP, mlp_body(name="WRONG"), 400, "unexpected inference input `WRONG`"),
    (MLP, mlp_body(datatype="FP64"), 400, "datatype FP64, the model expects FP32"),
    (MLP, mlp_body(datatype="NOPE"), 400, "unknown datatype"),
    (MLP, mlp_body(shape=[1, 15], data=[0.5] * 15), 400, "shape [1, 15]"),
    (MLP, mlp_body(shape=[1, 16], data=[0.5] * 15), 400, "needs 16 elements, `data` has 15"),
    (MLP, mlp_body(shape=[65, 16], data=[0.5] * 65 * 16), 400, "takes 1 to 64"),
    (MLP, mlp_body(shape=[1, -16]), 400, "negative"),
    (MLP, mlp_body(data=["x"] * 16), 400, "not a valid FP32"),
    (MLP, "{\"inputs\": [", 400, "malformed"),
    (MLP, "[]", 400, "malformed"),
    (MLP, "", 400, "malformed"),
    (MLP, json.dumps({"inputs": []}), 400, "missing"),
    (MLP, json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32"}]}), 400, "neither"),
    ("/v2/models/mixed/infer", json.dumps({"inputs": [{"name": "A", "shape": [1, 4], "datatype": "FP32", "data": [1, 2, 3, 4]}]}), 400, "missing"),
    ("/v2/models/mixed/infer", json.dumps({"inputs": [{"name": "C", "shape": [1, 2], "datatype": "FP16", "data": [1, 2]}]}), 400, "binary"),
    (MLP, json.dumps({"inputs": json.loads(mlp_body())["inputs"], "outputs": [{"name": "NOPE"}]}), 400, "unexpected inference output `NOPE`"),
    ("/v2/models/add_version/infer", json.dumps({"inputs": [{"name": "IN", "shape": [1], "datatype": "INT32", "data": [4294967296]}]}), 400, "not a valid INT32"),
])
def test_errors(server, path, body, status, needle):
    got_status, message = error_of(server, path, body)
    assert got_status == status, message
    assert needle in message, message


def test_binary_length_errors(server):
    header = json.dumps({"inputs": [{"name": "IN", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 8}}]}).encode()
    status, msg = error_of(server, "/v2/models/add_version/infer", header + b"\0" * 4,
                           {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "only 4 bytes" in msg
    status, msg = error_of(server, "/v2/models/add_version/infer", header + b"\0" * 12,
                           {"Inference-Header-Content-Length": str(len(header))})
    assert status == 400 and "not claimed" in msg
    header6 = json.dumps({"inputs": [{"name": "IN", "shape": [2], "datatype": "INT32", "parameters": {"binary_data_size": 6}}]}).encode()
    status, msg = error_of(server, "/v2/models/add_version/infer", header6 + b"\0" * 6,
                           {"Inference-Header-Content-Length": str(len(header6))})
    assert status == 400 and "needs 8 bytes" in msg
    status, msg = error_of(server, "/v2/models/add_version/infer", header, {"Inference-Header-Content-Length": "99999"})
    assert status == 400 and "Inference-Header-Content-Length" in msg
    bad_bytes = json.dumps({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 5}}]}).encode()
    status, msg = error_of(server, "/v2/models/strings/infer", bad_bytes + struct.pack("<I", 100) + b"x",
                           {"Inference-Header-Content-Length": str(len(bad_bytes))})
    assert status == 400 and "claims 100 bytes" in msg


def test_tritonclient_surfaces_errors(client):
    inp = httpclient.InferInput("INPUT0", [1, 3], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 3), dtype=np.float32))
    with pytest.raises(InferenceServerException, match="shape"):
        client.infer("mlp", [inp])
    with pytest.raises(InferenceServerException):
        client.get_model_metadata("missing")


def test_unknown_route_and_method(server):
    status, _, data = raw(server, "GET", "/v2/nothing/here")
    assert status == 404 and b"error" in data
    status, headers, data = raw(server, "GET", "/v2/models/mlp/infer")
    assert status == 405 and "error" in json.loads(data)
    assert "post" in headers.get("allow", "").lower()


def test_repository_index(server):
    status, _, data = raw(server, "POST", "/v2/repository/index", b"{}")
    assert status == 200
    index = json.loads(data)
    assert {"name": "mlp", "version": "1", "state": "READY", "reason": ""} in index
    status, _, data = raw(server, "POST", "/v2/repository/index", b'{"ready": true}')
    assert status == 200 and all(row["state"] == "READY" for row in json.loads(data))
    for bad in (b'{"ready": "x"}', b"[1]", b'"ready"', b"{"):
        status, _, data = raw(server, "POST", "/v2/repository/index", bad)
        assert status == 400 and "error" in json.loads(data), (bad, data)


def test_v1_protocol(server, reference):
    status, _, data = raw(server, "GET", "/v1/models")
    assert status == 200 and "mlp" in json.loads(data)["models"]
    status, _, data = raw(server, "GET", "/v1/models/mlp")
    assert status == 200 and json.loads(data) == {"name": "mlp", "ready": True}
    status, _, _ = raw(server, "GET", "/v1/models/nope")
    assert status == 404
    ref = reference["mlp"]
    body = json.dumps({"instances": ref["INPUT0"].tolist()})
    status, _, data = raw(server, "POST", "/v1/models/mlp:predict", body)
    assert status == 200, data
    np.testing.assert_allclose(np.array(json.loads(data)["predictions"]), ref["OUTPUT0"], rtol=1e-5, atol=1e-5)
    # The columnar form (inputs keyed by name) is read from the text, as the rows are: no JSON tree, no tree cap.
    body = json.dumps({"inputs": {"INPUT0": ref["INPUT0"].tolist()}})
    status, _, data = raw(server, "POST", "/v1/models/mlp:predict", body)
    assert status == 200, data
    np.testing.assert_allclose(np.array(json.loads(data)["predictions"]), ref["OUTPUT0"], rtol=1e-5, atol=1e-5)
    status, _, data = raw(server, "POST", "/v1/models/mlp:predict", json.dumps({"inputs": {"NOPE": [[1.0] * 16]}}))
    assert status == 400 and b"unexpected input `NOPE`" in data, data
    big = json.dumps({"inputs": {"INPUT0": [[0.25] * 16] * 60000}})
    assert len(big) > 5 << 20
    status, _, data = raw(server, "POST", "/v1/models/mlp:predict", big)
    assert status == 400 and b"JSON tree" not in data and b"INPUT0" in data, data[:300]
    # FP16 in and out: v1 has only JSON, so half-precision values are JSON numbers both ways (never their bits).
    for body in ({"inputs": {"A": [[1, 2, 3, 4]], "B": [[1, 1, 1, 1]], "C": [[1.5, -3]]}},
                 {"instances": [{"A": [1, 2, 3, 4], "B": [1, 1, 1, 1], "C": [1.5, -3]}]}):
        status, _, data = raw(server, "POST", "/v1/models/mixed:predict", json.dumps(body))
        assert status == 200, data
        row = json.loads(data)["predictions"][0]
        assert row["C_HALF"] == [0.75, -1.5] and row["SUM"] == [2, 3, 4, 5] and row["A_POSITIVE"] == [True] * 4, row
    status, _, data = raw(server, "POST", "/v1/models/mixed:predict",
                          json.dumps({"instances": [{"A": [0] * 4, "B": [0] * 4, "C": [70000, 1e-8]}]}))
    assert status == 200 and json.loads(data)["predictions"][0]["C_HALF"] == [None, 0.0], data  # inf is null in v1
    status, _, data = raw(server, "POST", "/v1/models/strings:predict", json.dumps({"instances": ["ab", "cd"]}))
    assert status == 200 and json.loads(data)["predictions"][0] == {"UPPER": "AB", "ECHO": "ab"}
    status, _, data = raw(server, "POST", "/v1/models/mlp:predict", json.dumps({"instances": [[1, 2], [3]]}))
    assert status == 400
    # Both forms at once are ambiguous (TensorFlow Serving refuses them too), on the text path and the tree path
    # (the multi-input model).
    for model, rows in (("mlp", [[0.5] * 16]), ("mixed", [{"A": [1] * 4, "B": [1] * 4, "C": [1.0, 2.0]}])):
        body = json.dumps({"instances": rows, "inputs": rows})
        status, _, data = raw(server, "POST", f"/v1/models/{model}:predict", body)
        assert status == 400 and b"both `instances` and `inputs`" in data, data
    # As KServe answers a model without an explainer; an unknown model is still 404.
    status, _, data = raw(server, "POST", "/v1/models/mlp:explain", "{}")
    assert status == 501 and b"explain" in data, data
    status, _, data = raw(server, "POST", "/v1/models/nope:explain", "{}")
    assert status == 404, data
    # KServe's liveness check (its SDK's v1 is_server_live, a transformer's check of a v1 predictor).
    status, _, data = raw(server, "GET", "/")
    assert status == 200 and json.loads(data) == {"status": "alive"}, data


def test_mlp_large_matches_numpy(client):
    import os
    from server import REFERENCE

    ref = np.load(os.path.join(REFERENCE, "mlp_large.npz"))
    inp = httpclient.InferInput("INPUT0", list(ref["INPUT0"].shape), "FP32")
    inp.set_data_from_numpy(ref["INPUT0"])
    np.testing.assert_allclose(client.infer("mlp_large", [inp]).as_numpy("OUTPUT0"), ref["OUTPUT0"], rtol=1e-4, atol=1e-4)


def test_non_finite_floats_travel_as_json_tokens(server, client):
    """NaN and ±Infinity in JSON: tritonclient writes them as bare tokens (Python's json), the server reads them,
    and writes such outputs back as tokens (as Triton does); the JSON answer equals the binary one bit for bit."""
    x = np.zeros((4, 16), dtype=np.float32)
    x[0, 0], x[1, 3], x[2, 5] = np.nan, np.inf, -np.inf
    answers = {}
    for binary in (False, True):
        inp = httpclient.InferInput("INPUT0", [4, 16], "FP32")
        inp.set_data_from_numpy(x, binary_data=binary)
        out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
        answers[binary] = client.infer("mlp", [inp], outputs=[out]).as_numpy("OUTPUT0")
    assert not np.isfinite(answers[True]).all(), "the model should pass non-finite values through"
    np.testing.assert_array_equal(answers[False], answers[True])
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                                   "data": [float("nan")] + [0.0] * 15}]})
    assert "NaN" in body
    status, _, data = raw(server, "POST", "/v2/models/mlp/infer", body.encode())
    assert status == 200, data
    assert b"NaN" in data and b"null" not in data
    assert np.isnan(json.loads(data)["outputs"][0]["data"]).any()
    # `null` is NaN in a float input: the KServe SDK writes NaN so (orjson), and KServe reads it so.
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32",
                                   "data": [None] + [0.0] * 15}]})
    status, _, data = raw(server, "POST", "/v2/models/mlp/infer", body.encode())
    assert status == 200 and np.isnan(json.loads(data)["outputs"][0]["data"]).any(), data
    # A token where a number cannot be is still a 400, and a "NaN" string stays a string (refused for FP32).
    for bad in ('{"inputs": [{"name": "INPUT0", "shape": [1, NaN], "datatype": "FP32", "data": []}]}',
                '{"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": ["NaN"]}]}'):
        assert raw(server, "POST", "/v2/models/mlp/infer", bad.encode())[0] == 400, bad



def test_infer_answers_carry_content_length_not_chunked(server):
    """hyper sends Content-Length when the body knows its size; a wrapper that loses the size hint turns every answer
    chunked (and slower): the in-flight memory charge's wrapper must keep it."""
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]})
    status, headers, data = raw(server, "POST", "/v2/models/mlp/infer", body.encode())
    assert status == 200
    assert headers.get("content-length") == str(len(data)) and "transfer-encoding" not in headers, headers


def test_raw_binary_request(server, reference):
    """Triton's raw binary request: with `Inference-Header-Content-Length: 0` the body is the one input's bytes;
    datatype and shape come from the model (a batch of 1), every output comes back binary; models it cannot
    describe are refused in Triton's words."""
    x = np.random.default_rng(11).standard_normal((1, 16)).astype(np.float32)
    status, headers, data = raw(server, "POST", "/v2/models/mlp/infer", x.tobytes(),
                                {"Inference-Header-Content-Length": "0"})
    assert status == 200, data
    n = int(headers["inference-header-content-length"])
    header = json.loads(data[:n])
    (out,) = header["outputs"]
    assert out["name"] == "OUTPUT0" and out["shape"] == [1, 4]
    got = np.frombuffer(data[n:n + out["parameters"]["binary_data_size"]], dtype=np.float32).reshape(1, 4)
    np.testing.assert_allclose(got, mlp_numpy(reference["mlp"], x), rtol=1e-5, atol=1e-5)
    # BYTES: the body is the one element.
    status, headers, data = raw(server, "POST", "/v2/models/strings/infer", "héllo".encode(),
                                {"Inference-Header-Content-Length": "0"})
    assert status == 200, data
    n = int(headers["inference-header-content-length"])
    outputs = json.loads(data[:n])["outputs"]
    assert [o["name"] for o in outputs] == ["UPPER", "ECHO"]
    tail, elements = data[n:], []
    for _ in outputs:
        size = struct.unpack("<I", tail[:4])[0]
        elements.append(tail[4:4 + size].decode())
        tail = tail[4 + size:]
    assert elements == ["HÉLLO", "héllo"]
    # A body that is not the input's size, and a model with two inputs.
    status, _, data = raw(server, "POST", "/v2/models/mlp/infer", x.tobytes()[:60],
                          {"Inference-Header-Content-Length": "0"})
    assert status == 400 and "error" in json.loads(data)
    status, _, data = raw(server, "POST", "/v2/models/mixed/infer", b"\0" * 64,
                          {"Inference-Header-Content-Length": "0"})
    assert status == 400
    assert "Raw request must only have 1 input (found 1) to be deduced but got" in json.loads(data)["error"]


def test_parameters_reserved_by_triton_are_refused(server):
    """Request parameters named `triton_...` are Triton's own: refused with Triton's words (400), except the one
    Triton lets clients send."""
    body = json.dumps({"parameters": {"triton_x": 1},
                       "inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.0] * 16}]})
    status, _, data = raw(server, "POST", "/v2/models/mlp/infer", body.encode())
    assert status == 400 and "reserved for Triton usage" in json.loads(data)["error"]
    allowed = body.replace("triton_x", "triton_enable_empty_final_response")
    status, _, data = raw(server, "POST", "/v2/models/mlp/infer", allowed.encode())
    assert status == 200, data
