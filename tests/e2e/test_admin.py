"""The admin surface (model load/unload, traffic changes) behind `--admin-token` or off with `--disable-admin-api`,
over HTTP and gRPC, on both ports; everything else stays open. Model names that could leave the repository are
refused with 400 / INVALID_ARGUMENT."""
import json
import subprocess
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import Server, binary

TOKEN = "s3cr3t-admin-token"
GOOD = {"Authorization": f"Bearer {TOKEN}"}


def http(server, method, path, headers=None, body=b""):
    req = urllib.request.Request(server.http_url + path, method=method, data=body if method != "GET" else None,
                                 headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, json.loads(e.read() or b"{}")


def infer_works(server):
    client = httpclient.InferenceServerClient(server.http_addr)
    inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    inp.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
    assert client.infer("mlp", [inp]).as_numpy("OUTPUT0").shape == (1, 4)
    client.close()


@pytest.fixture(scope="module")
def guarded():
    s = Server("--model-control-mode", "explicit", "--load-model", "*", "--admin-token", TOKEN)
    yield s
    assert s.stop() == 0


@pytest.mark.parametrize("method,path", [
    ("POST", "/v2/repository/models/strings/load"),
    ("POST", "/v2/repository/models/strings/unload"),
    ("PUT", "/v2/models/mlp/traffic"),
    ("DELETE", "/v2/models/mlp/traffic"),
])
def test_http_admin_calls_need_the_token(guarded, method, path):
    body = b'{"pinned_version": 1}' if method == "PUT" else b""
    for headers in ({}, {"Authorization": "Bearer wrong-token-value"}, {"Authorization": f"Basic {TOKEN}"},
                    {"Authorization": f"Bearer {TOKEN[:-1]}"}):
        status, response_headers, answer = http(guarded, method, path, headers, body)
        assert status == 401, (headers, answer)
        assert response_headers.get("www-authenticate") == "Bearer"
        assert "admin token" in answer["error"]
    # The token in any case of the scheme works; the call itself then runs.
    status, _, answer = http(guarded, method, path, {"Authorization": f"bearer {TOKEN}"}, body)
    assert status == 200, answer


def test_tritonclient_passes_the_token_as_a_header(guarded):
    client = httpclient.InferenceServerClient(guarded.http_addr)
    with pytest.raises(InferenceServerException) as err:
        client.unload_model("strings")
    assert "admin token" in str(err.value)
    client.unload_model("strings", headers=GOOD)
    assert not client.is_model_ready("strings")
    client.load_model("strings", headers=GOOD)
    assert client.is_model_ready("strings")
    client.close()


@pytest.mark.parametrize("port", ["grpc", "http"])
def test_grpc_admin_calls_need_the_token(guarded, port):
    client = grpcclient.InferenceServerClient(guarded.grpc_addr if port == "grpc" else guarded.http_addr)
    with pytest.raises(InferenceServerException) as err:
        client.unload_model("strings")
    assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException) as err:
        client.load_model("strings", headers={"authorization": "Bearer nope-nope-nope"})
    assert err.value.status() == "StatusCode.UNAUTHENTICATED"
    client.unload_model("strings", headers={"authorization": f"Bearer {TOKEN}"})
    client.load_model("strings", headers={"authorization": f"Bearer {TOKEN}"})
    assert client.is_model_ready("strings")
    client.close()
    with grpc.insecure_channel(guarded.grpc_addr) as channel:
        reset = channel.unary_unary("/ferroserve.traffic.v1.TrafficControl/ResetTraffic",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
        request = b"\x0a\x03mlp"
        with pytest.raises(grpc.RpcError) as err:
            reset(request)
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        reset(request, metadata=[("authorization", f"Bearer {TOKEN}")])


def test_everything_else_stays_open(guarded):
    infer_works(guarded)
    assert http(guarded, "GET", "/v2/models/mlp/traffic")[0] == 200
    assert http(guarded, "POST", "/v2/repository/index")[0] == 200
    assert http(guarded, "GET", "/v2/models/mlp/stats")[0] == 200
    client = grpcclient.InferenceServerClient(guarded.grpc_addr)
    assert client.get_model_repository_index().models
    client.close()


@pytest.mark.parametrize("name", ["..", "..%2F..%2Fetc", "a%5Cb", "a%00b", "x" * 256])
def test_names_that_could_leave_the_repository_are_refused(guarded, name):
    status, _, answer = http(guarded, "POST", f"/v2/repository/models/{name}/load", GOOD)
    assert status == 400, answer
    assert "not a model name" in answer["error"]


def test_grpc_refuses_a_traversing_name(guarded):
    client = grpcclient.InferenceServerClient(guarded.grpc_addr)
    with pytest.raises(InferenceServerException) as err:
        client.load_model("../mlp", headers={"authorization": f"Bearer {TOKEN}"})
    assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    client.close()


def test_disabled_admin_api_refuses_every_admin_call():
    s = Server("--model-control-mode", "explicit", "--load-model", "*", "--disable-admin-api")
    try:
        for method, path in [("POST", "/v2/repository/models/mlp/unload"), ("PUT", "/v2/models/mlp/traffic")]:
            status, _, answer = http(s, method, path, GOOD, b"{}")
            assert status == 403 and "disabled" in answer["error"], answer
        client = grpcclient.InferenceServerClient(s.grpc_addr)
        with pytest.raises(InferenceServerException) as err:
            client.unload_model("mlp", headers={"authorization": f"Bearer {TOKEN}"})
        assert err.value.status() == "StatusCode.PERMISSION_DENIED"
        client.close()
        infer_works(s)
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("args", [["--admin-token", "short"], ["--admin-token", "has a space in it"],
                                  ["--admin-token", TOKEN, "--disable-admin-api"]])
def test_unsafe_or_contradictory_admin_flags_are_refused(args):
    run = subprocess.run([binary(), "--model-repository", "/nonexistent", *args], capture_output=True, text=True,
                         timeout=30)
    assert run.returncode == 2, run.stderr
