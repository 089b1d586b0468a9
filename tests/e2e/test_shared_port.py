"""REST and gRPC on one port: the HTTP port also serves the whole gRPC service (inference, streaming, health),
so a single Knative port (named `h2c`) carries both protocols. REST works over HTTP/1.1 and over HTTP/2 with
prior knowledge; gRPC answers the same on either port; SIGTERM drains both kinds on the shared port."""
import concurrent.futures
import json
import os
import queue
import shutil
import subprocess
import tempfile
import threading
import time

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from fixtures import mlp_numpy
from server import REPOSITORY, Server

PORTS = ["grpc", "http"]


def grpc_target(server, port):
    return server.grpc_addr if port == "grpc" else server.http_addr


def mlp_input(x):
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return inp


def test_tritonclient_grpc_on_the_http_port(server, reference):
    client = grpcclient.InferenceServerClient(server.http_addr)
    try:
        assert client.is_server_live() and client.is_server_ready()
        assert client.get_server_metadata().name == "triton"
        assert [i.name for i in client.get_model_metadata("mlp").inputs] == ["INPUT0"]
        assert client.get_model_config("mlp").config.max_batch_size == 64
        x = np.random.default_rng(7).standard_normal((5, 16)).astype(np.float32)
        result = client.infer("mlp", [mlp_input(x)])
        np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_numpy(reference["mlp"], x), rtol=1e-5, atol=1e-5)
        # Errors keep their gRPC codes on this port.
        with pytest.raises(InferenceServerException) as err:
            client.infer("no_such_model", [mlp_input(x)])
        assert err.value.status() == "StatusCode.NOT_FOUND"
        with pytest.raises(InferenceServerException) as err:
            client.infer("mlp", [mlp_input(x[:, :3].copy())])
        assert err.value.status() == "StatusCode.INVALID_ARGUMENT"
    finally:
        client.close()


def test_grpc_stream_on_the_http_port(server):
    client = grpcclient.InferenceServerClient(server.http_addr)
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        for i in range(5):
            inp = grpcclient.InferInput("IN", [1], "INT32")
            inp.set_data_from_numpy(np.array([i], dtype=np.int32))
            client.async_stream_infer("add_version", [inp], model_version="1", request_id=str(i))
        seen = {}
        for _ in range(5):
            result, error = results.get(timeout=10)
            assert error is None, error
            seen[result.get_response().id] = result.as_numpy("OUT").tolist()
        assert seen == {str(i): [i + 1] for i in range(5)}
    finally:
        client.stop_stream()
        client.close()


def test_grpc_health_on_the_http_port(server):
    with grpc.insecure_channel(server.http_addr) as channel:
        check = channel.unary_unary("/grpc.health.v1.Health/Check",
                                    request_serializer=lambda b: b, response_deserializer=lambda b: b)
        # HealthCheckResponse{status: SERVING (1)} is the two bytes 0x08 0x01.
        assert check(b"") == b"\x08\x01"
        # HealthCheckRequest{service: "mlp"}: a model's readiness.
        assert check(b"\x0a\x03mlp") == b"\x08\x01"
        with pytest.raises(grpc.RpcError) as err:
            check(b"\x0a\x04nope")
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        unknown = channel.unary_unary("/inference.GRPCInferenceService/NoSuchMethod",
                                      request_serializer=lambda b: b, response_deserializer=lambda b: b)
        with pytest.raises(grpc.RpcError) as err:
            unknown(b"")
        assert err.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_http1_requests_claiming_grpc_are_rest_requests(server, reference):
    """gRPC needs HTTP/2: an HTTP/1.1 request with `content-type: application/grpc` is served as REST, as on
    Triton's HTTP port, not answered `200` with an empty body and a `grpc-status` header no REST client reads."""
    import http.client

    x = np.random.default_rng(9).standard_normal((3, 16)).astype(np.float32)
    want = mlp_numpy(reference["mlp"], x)
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32",
                                   "data": x.flatten().tolist()}]})
    host, port = server.http_addr.rsplit(":", 1)
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    try:
        conn.request("POST", "/v2/models/mlp/infer", body=body, headers={"Content-Type": "application/grpc"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        assert response.status == 200 and response.getheader("grpc-status") is None
        got = np.array(answer["outputs"][0]["data"], dtype=np.float32).reshape(want.shape)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        conn.request("POST", "/v2/models/nope/infer", body=body, headers={"Content-Type": "application/grpc+proto"})
        response = conn.getresponse()
        assert response.status == 404 and "error" in json.loads(response.read())
    finally:
        conn.close()


def curl(*args):
    """curl (built with nghttp2) speaking HTTP/2 with prior knowledge, as Knative's queue-proxy does to `h2c`."""
    assert shutil.which("curl"), "curl is needed for the HTTP/2 prior-knowledge tests"
    done = subprocess.run(["curl", "-sS", "--http2-prior-knowledge", "-w", "\n%{http_version} %{http_code}", *args],
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    body, _, tail = done.stdout.rpartition("\n")
    version, code = tail.split()
    return version, int(code), body


def test_rest_over_http2_prior_knowledge(server, reference):
    url = server.http_url
    assert curl(url + "/v2/health/ready")[:2] == ("2", 200)
    x = np.random.default_rng(8).standard_normal((3, 16)).astype(np.float32)
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [3, 16], "datatype": "FP32",
                                   "data": x.flatten().tolist()}]})
    version, code, text = curl("-X", "POST", "-H", "content-type: application/json", "--data-binary", body,
                               url + "/v2/models/mlp/infer")
    assert (version, code) == ("2", 200), text
    out = json.loads(text)["outputs"][0]
    np.testing.assert_allclose(np.array(out["data"]).reshape(out["shape"]), mlp_numpy(reference["mlp"], x),
                               rtol=1e-5, atol=1e-5)
    version, code, text = curl("-X", "POST", "--data-binary", '{"instances": [[0.5]]}', url + "/v1/models/mlp:predict")
    assert (version, code) == ("2", 400) and "error" in json.loads(text)
    assert curl(url + "/v2/models/missing")[:2] == ("2", 404)


def test_both_protocols_mixed_concurrently_on_one_port(server, reference):
    """REST over HTTP/1.1, gRPC unary, a gRPC stream and REST over h2c, all at once on the HTTP port."""
    ref = reference["mlp"]
    rng = np.random.default_rng(9)
    xs = [rng.standard_normal((1 + i % 4, 16)).astype(np.float32) for i in range(40)]

    def rest_http1():
        client = httpclient.InferenceServerClient(server.http_addr)
        try:
            for x in xs:
                inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
                inp.set_data_from_numpy(x, binary_data=True)
                got = client.infer("mlp", [inp]).as_numpy("OUTPUT0")
                np.testing.assert_allclose(got, mlp_numpy(ref, x), rtol=1e-5, atol=1e-5)
        finally:
            client.close()

    def grpc_unary():
        client = grpcclient.InferenceServerClient(server.http_addr)
        try:
            for x in xs:
                got = client.infer("mlp", [mlp_input(x)]).as_numpy("OUTPUT0")
                np.testing.assert_allclose(got, mlp_numpy(ref, x), rtol=1e-5, atol=1e-5)
        finally:
            client.close()

    def grpc_stream():
        client = grpcclient.InferenceServerClient(server.http_addr)
        results = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        try:
            for i, x in enumerate(xs):
                client.async_stream_infer("mlp", [mlp_input(x)], request_id=str(i))
            for _ in xs:
                result, error = results.get(timeout=20)
                assert error is None, error
                x = xs[int(result.get_response().id)]
                np.testing.assert_allclose(result.as_numpy("OUTPUT0"), mlp_numpy(ref, x), rtol=1e-5, atol=1e-5)
        finally:
            client.stop_stream()
            client.close()

    def rest_h2c():
        for _ in range(5):
            assert curl(server.http_url + "/v2/models/mlp/ready")[:2] == ("2", 200)

    jobs = [rest_http1, rest_http1, grpc_unary, grpc_unary, grpc_stream, rest_h2c]
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        for future in [pool.submit(job) for job in jobs]:
            future.result(timeout=120)


@pytest.fixture(scope="module")
def slow_server():
    """The MLP behind a fixed 3-second batching window: a lone request waits the whole window."""
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "slow", "1"))
    shutil.copy(os.path.join(REPOSITORY, "mlp", "1", "model.onnx"), os.path.join(root, "slow", "1", "model.onnx"))
    with open(os.path.join(root, "slow", "config.pbtxt"), "w") as f:
        f.write('max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 3000000 '
                'preferred_batch_size: [ 64 ] }\n'
                'parameters { key: "batch_window" value: { string_value: "fixed" } }\n')
    s = Server(repository=root)
    yield s
    assert s.stop() == 0
    shutil.rmtree(root)


@pytest.mark.parametrize("port", PORTS)
def test_a_deadline_behaves_the_same_on_either_port(slow_server, port):
    client = grpcclient.InferenceServerClient(grpc_target(slow_server, port))
    try:
        x = np.zeros((1, 16), dtype=np.float32)
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as err:
            client.infer("slow", [mlp_input(x)], client_timeout=0.3)
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        assert time.monotonic() - started < 2.5
        # The server lives on and answers the next call once the window closes.
        assert client.infer("slow", [mlp_input(x)]).as_numpy("OUTPUT0").shape == (1, 4)
    finally:
        client.close()


def test_sigterm_drains_both_protocols_on_the_shared_port():
    s = Server()
    host, port = s.http_addr.split(":")
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [8, 16], "datatype": "FP32", "data": [0.1] * 128}]})
    rest_statuses, grpc_ok, failures = [], [], []
    signalled = threading.Event()
    stop = threading.Event()

    def rest_worker():
        import http.client
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        for _ in range(5000):
            if stop.is_set():
                break
            try:
                conn.request("POST", "/v2/models/mlp/infer", body=body)
                resp = conn.getresponse()
                resp.read()
                rest_statuses.append(resp.status)
            except (ConnectionError, http.client.HTTPException, OSError):
                if not signalled.is_set():
                    failures.append("REST connection failed before SIGTERM")
                break
        conn.close()

    def grpc_worker():
        client = grpcclient.InferenceServerClient(s.http_addr)
        x = np.full((8, 16), 0.1, dtype=np.float32)
        for _ in range(5000):
            if stop.is_set():
                break
            try:
                client.infer("mlp", [mlp_input(x)])
                grpc_ok.append(1)
            except InferenceServerException as e:
                # After SIGTERM a new call may find the listener closed (UNAVAILABLE); an accepted call never fails.
                if not signalled.is_set() or e.status() != "StatusCode.UNAVAILABLE":
                    failures.append(f"gRPC {e.status()}: {e.message()}")
                break
        client.close()

    threads = [threading.Thread(target=f) for f in (rest_worker, rest_worker, grpc_worker, grpc_worker)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    before = (len(rest_statuses), len(grpc_ok))
    signalled.set()
    code = s.stop(timeout=20)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert code == 0, s.logs()
    assert before[0] > 0 and before[1] > 0, before
    assert not failures, failures
    assert rest_statuses and all(st == 200 for st in rest_statuses), set(rest_statuses)


def test_open_grpc_stream_on_the_http_port_does_not_hold_up_shutdown():
    s = Server()
    client = grpcclient.InferenceServerClient(s.http_addr)
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    inp = grpcclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([1], dtype=np.int32))
    client.async_stream_infer("add_version", [inp], model_version="1")
    result, error = results.get(timeout=10)
    assert error is None and result.as_numpy("OUT").tolist() == [2]
    started = time.time()
    code = s.stop(timeout=20)
    assert code == 0, s.logs()
    assert time.time() - started < 10, "the open stream held up the drain"
    client.stop_stream()
    client.close()
