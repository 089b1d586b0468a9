"""SIGTERM drains: readiness turns false, accepted requests finish, the process exits 0."""
import http.client
import json
import threading
import time

from server import Server


def test_sigterm_drains_in_flight_requests():
    s = Server()
    host, port = s.http_addr.split(":")
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [64, 16], "datatype": "FP32", "data": [0.1] * 1024}]})
    statuses, failures = [], []
    stop = threading.Event()
    signalled = threading.Event()

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        for _ in range(2000):
            if stop.is_set():
                break
            try:
                conn.request("POST", "/v2/models/mlp/infer", body=body)
                resp = conn.getresponse()
                resp.read()
                statuses.append(resp.status)
            except (ConnectionError, http.client.HTTPException, OSError) as e:
                # Once SIGTERM is sent the listener closes, so a new connection may be refused; before, nothing.
                failures.append((type(e).__name__, signalled.is_set()))
                break
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    before = len(statuses)
    signalled.set()
    code = s.stop(timeout=20)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    assert code == 0, s.logs()
    assert before > 0
    # Every request the server answered succeeded; none got a 5xx while draining.
    assert statuses and all(st == 200 for st in statuses), set(statuses)
    assert not [f for f in failures if not f[1]], f"connections failed before SIGTERM: {failures}"
    assert "SIGTERM received" in s.logs()


def test_readiness_false_during_grace_period():
    s = Server("--shutdown-grace-secs", "2")
    host, port = s.http_addr.split(":")
    s.proc.send_signal(15)
    time.sleep(0.5)
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/v2/health/ready")
    assert conn.getresponse().status == 503
    conn.close()
    conn = http.client.HTTPConnection(host, int(port), timeout=5)
    conn.request("GET", "/v2/health/live")
    assert conn.getresponse().status == 200
    conn.close()
    s.proc.wait(timeout=20)
    assert s.proc.returncode == 0


def test_open_grpc_stream_does_not_hold_up_shutdown():
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    s = Server()
    client = grpcclient.InferenceServerClient(s.grpc_addr)
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


def test_shutdown_is_bounded_while_a_model_is_still_loading():
    """A model whose download stalls (the storage server sends headers and a few bytes, then nothing): SIGTERM
    still ends the process within the grace period plus --drain-timeout-secs, with exit code 0."""
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    port = listener.getsockname()[1]
    held = []

    def stall():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            held.append(conn)
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\nETag: \"x\"\r\n\r\n" + b"\0" * 16)

    threading.Thread(target=stall, daemon=True).start()
    s = Server("--model_name", "stalled", "--model_dir", f"http://127.0.0.1:{port}/model.onnx",
               "--shutdown-grace-secs", "0", "--drain-timeout-secs", "2", repository=None, wait_ready=False)
    try:
        time.sleep(1.0)
        assert s.proc.poll() is None
        started = time.time()
        code = s.stop(timeout=20)
        elapsed = time.time() - started
        assert code == 0, s.logs()
        assert elapsed < 6, f"shutdown took {elapsed:.1f} s with a load in progress"
    finally:
        listener.close()
        for conn in held:
            conn.close()


def test_sigterm_under_grpc_stream_load_fails_no_accepted_request():
    """Two streams sending continuously when SIGTERM comes: every answer that arrives is a correct one (no request
    the server took fails); the streams then end, and the process exits 0."""
    import queue

    import numpy as np
    import tritonclient.grpc as grpcclient

    s = Server()
    clients, answers, errors = [], queue.Queue(), []
    stop = threading.Event()

    def stream(addr):
        client = grpcclient.InferenceServerClient(addr)
        clients.append(client)

        def callback(result, error):
            if error is not None:
                errors.append(error)
            else:
                answers.put((int(result.get_response().id), int(result.as_numpy("OUT")[0])))

        client.start_stream(callback=callback)
        i = 0
        while not stop.is_set() and i < 200_000:
            inp = grpcclient.InferInput("IN", [1], "INT32")
            inp.set_data_from_numpy(np.array([i], dtype=np.int32))
            try:
                client.async_stream_infer("add_version", [inp], model_version="1", request_id=str(i))
            except Exception:  # noqa: BLE001 (the stream has ended: shutdown)
                break
            i += 1
            if i % 32 == 0:
                time.sleep(0.001)

    threads = [threading.Thread(target=stream, args=(a,)) for a in (s.grpc_addr, s.http_addr)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    code = s.stop(timeout=20)
    stop.set()
    for t in threads:
        t.join(timeout=20)
    for c in clients:
        c.stop_stream()
        c.close()
    assert code == 0, s.logs()
    got = []
    while not answers.empty():
        got.append(answers.get())
    assert len(got) > 100, len(got)
    assert all(out == i + 1 for i, out in got), [g for g in got if g[1] != g[0] + 1][:5]
    # An error may only be the stream's end after the drain, never a failed request.
    codes = {str(e.status()) for e in errors}
    assert codes <= {"StatusCode.UNAVAILABLE", "StatusCode.CANCELLED"}, [str(e) for e in errors][:5]
