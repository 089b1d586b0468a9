"""Overload is refused at once instead of queued: a server-wide budget of bytes held by requests in flight
(`--max-inflight-bytes`) answers 429 / RESOURCE_EXHAUSTED past it, a request larger than the whole budget 400 /
INVALID_ARGUMENT, and the server takes new work again as soon as the held requests finish. A server-wide request
timeout (`--request-timeout-secs`) answers 504 / DEADLINE_EXCEEDED. Streams answer every request however many
are sent."""
import concurrent.futures
import json
import os
import queue
import re
import shutil
import tempfile
import time

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import REPOSITORY, Server

MB = 1 << 20
WINDOW = 'parameters { key: "batch_window" value: { string_value: "fixed" } }\n'


def slow_repository(delay_us):
    """`strings` and `mlp` behind a fixed batching window of `delay_us`: a request is held in flight that long."""
    root = tempfile.mkdtemp()
    for name, batch in (("strings", 32), ("mlp", 64)):
        os.makedirs(os.path.join(root, name, "1"))
        shutil.copy(os.path.join(REPOSITORY, name, "1", "model.onnx"), os.path.join(root, name, "1", "model.onnx"))
        with open(os.path.join(REPOSITORY, name, "config.pbtxt")) as f:
            # The example's own dynamic_batching block (one level of nesting) gives way to a fixed window.
            config = re.sub(r"dynamic_batching \{(?:[^{}]|\{[^{}]*\})*\}", "", f.read())
        with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
            f.write(config + f"\ndynamic_batching {{ max_queue_delay_microseconds: {delay_us} }}\n" + WINDOW)
    return root


def text_input(module, size):
    inp = module.InferInput("TEXT", [1, 1], "BYTES")
    data = np.array([[b"x" * size]], dtype=np.object_)
    if module is httpclient:
        inp.set_data_from_numpy(data, binary_data=True)
    else:
        inp.set_data_from_numpy(data)
    return inp


# A request to `strings` is charged its body, two more copies of its input (the batch and ONNX Runtime's
# strings) and three of its two outputs (the runtime's, ours, the answer): 1 + 2 + 3 x 2 = 9 times its text once
# the server has seen the model answer twice as many bytes as it is sent. 3 MB requests: 27 MB each.
BUDGET = 90 * MB


@pytest.fixture(scope="module")
def budgeted():
    root = slow_repository(1_500_000)
    s = Server("--max-inflight-bytes", str(BUDGET), repository=root)
    # One small request first, so the server has learned the model's output size per input byte.
    assert http_infer(s, 16) == b"x" * 16
    yield s
    assert s.stop() == 0
    shutil.rmtree(root)


def http_infer(server, size):
    client = httpclient.InferenceServerClient(server.http_addr, connection_timeout=60, network_timeout=60)
    try:
        return client.infer("strings", [text_input(httpclient, size)]).as_numpy("ECHO")[0][0]
    finally:
        client.close()


def test_past_the_budget_requests_are_refused_at_once_and_taken_again_after(budgeted):
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        held = [pool.submit(http_infer, budgeted, 3 * MB) for _ in range(3)]  # 81 MB of 90 held 1.5 s
        time.sleep(0.5)
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as err:
            http_infer(budgeted, 2 * MB)  # 18 MB more
        assert time.monotonic() - started < 1.0, "refused at once, not queued"
        assert "--max-inflight-bytes" in str(err.value)
        client = grpcclient.InferenceServerClient(budgeted.grpc_addr)
        with pytest.raises(InferenceServerException) as err:
            client.infer("strings", [text_input(grpcclient, 3 * MB // 2)])  # 13.5 MB more
        assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED"
        # Small requests still fit.
        small = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        small.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
        assert client.infer("mlp", [small]).as_numpy("OUTPUT0").shape == (1, 4)
        client.close()
        assert all(len(f.result(timeout=30)) == 3 * MB for f in held)
    # The held requests are done: the same large request is admitted now.
    assert len(http_infer(budgeted, 3 * MB)) == 3 * MB


def test_a_declared_body_that_does_not_arrive_holds_none_of_the_budget(budgeted):
    """A client that declares 7 MB of JSON (84 MB of the 90 MB budget once expanded) and sends none of it holds
    only what it sent: others are served meanwhile (before, every request got 429 until it hung up)."""
    import socket
    host, port = budgeted.http_addr.rsplit(":", 1)
    stalled = socket.create_connection((host, int(port)), timeout=30)
    try:
        stalled.sendall(b"POST /v2/models/strings/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                        b"Content-Length: %d\r\n\r\n{\"inputs\": [" % (7 * MB))
        time.sleep(0.3)
        assert len(http_infer(budgeted, 3 * MB)) == 3 * MB
        client = grpcclient.InferenceServerClient(budgeted.grpc_addr)
        assert len(client.infer("strings", [text_input(grpcclient, 3 * MB)]).as_numpy("ECHO")[0][0]) == 3 * MB
        client.close()
    finally:
        stalled.close()


def test_a_request_larger_than_the_whole_budget_is_a_client_error(budgeted):
    import urllib.error
    import urllib.request
    # 12 MB of JSON is charged 12 times over (144 MB) before it is read: more than the whole budget, so 400
    # rather than 429.
    body = b'{"inputs":[{"name":"TEXT","shape":[1,1],"datatype":"BYTES","data":["' + b"y" * (12 * MB) + b'"]}]}'
    req = urllib.request.Request(budgeted.http_url + "/v2/models/strings/infer", data=body, method="POST")
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=30)
    assert err.value.code == 400 and b"--max-inflight-bytes" in err.value.read()
    # 12 MB in binary: the body fits, and the work estimate (108 MB) is cut to what is left of the budget, so
    # with nothing else in flight it is served, over both protocols, rather than refused for good.
    assert len(http_infer(budgeted, 12 * MB)) == 12 * MB
    client = grpcclient.InferenceServerClient(budgeted.grpc_addr)
    assert len(client.infer("strings", [text_input(grpcclient, 12 * MB)]).as_numpy("ECHO")[0][0]) == 12 * MB
    client.close()


def test_request_timeout_answers_504_and_deadline_exceeded():
    root = slow_repository(3_000_000)
    s = Server("--request-timeout-secs", "1", repository=root)
    try:
        x = np.zeros((1, 16), dtype=np.float32)
        client = httpclient.InferenceServerClient(s.http_addr)
        inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(x)
        started = time.monotonic()
        with pytest.raises(InferenceServerException) as err:
            client.infer("mlp", [inp])
        assert 0.9 < time.monotonic() - started < 2.5
        assert err.value.status() == "504" and "--request-timeout-secs" in err.value.message()
        client.close()
        gclient = grpcclient.InferenceServerClient(s.grpc_addr)
        ginp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        ginp.set_data_from_numpy(x)
        with pytest.raises(InferenceServerException) as err:
            gclient.infer("mlp", [ginp])
        assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"
        gclient.close()
        # KServe v1 :predict has the same bound.
        import urllib.error
        import urllib.request
        req = urllib.request.Request(s.http_url + "/v1/models/mlp:predict", method="POST",
                                     data=json.dumps({"instances": x.tolist()}).encode())
        started = time.monotonic()
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(req, timeout=30)
        assert 0.9 < time.monotonic() - started < 2.5
        assert err.value.code == 504 and b"--request-timeout-secs" in err.value.read()
    finally:
        assert s.stop() == 0
        shutil.rmtree(root)


def test_a_stream_answers_many_more_requests_than_it_runs_at_once(server):
    """More requests than the per-stream in-flight cap (128): all are answered, none lost to the cap."""
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    results = queue.Queue()
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        n = 600
        for i in range(n):
            inp = grpcclient.InferInput("IN", [1], "INT32")
            inp.set_data_from_numpy(np.array([i], dtype=np.int32))
            client.async_stream_infer("add_version", [inp], model_version="1", request_id=str(i))
        seen = {}
        for _ in range(n):
            result, error = results.get(timeout=30)
            assert error is None, error
            seen[int(result.get_response().id)] = int(result.as_numpy("OUT")[0])
        assert seen == {i: i + 1 for i in range(n)}
    finally:
        client.stop_stream()
        client.close()


def tile_repository(repeats):
    """`tile`: FP32 [batch, n] in, the row repeated `repeats` times out ([batch, n * repeats]), behind a fixed
    1.5 s batching window. Its output size depends on the request, so the server can only learn it."""
    import onnx
    from onnx import TensorProto, helper
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "tile", "1"))
    graph = helper.make_graph(
        [helper.make_node("Tile", ["X", "R"], ["Y"])], "tile",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["batch", "n"])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, ["batch", "m"])],
        [helper.make_tensor("R", TensorProto.INT64, [2], [1, repeats])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    onnx.save(model, os.path.join(root, "tile", "1", "model.onnx"))
    with open(os.path.join(root, "tile", "config.pbtxt"), "w") as f:
        f.write("max_batch_size: 8\ndynamic_batching { max_queue_delay_microseconds: 1500000 }\n" + WINDOW)
    return root


def test_a_model_whose_answers_outgrow_its_requests_is_charged_what_it_learned():
    """A request is charged for the outputs the model will make, not only its body: once the server has seen
    `tile` answer 64 bytes per byte sent, a 16 KiB request holds about 3 MiB of an 8 MiB budget, so with two of
    them held a third is refused (429 / RESOURCE_EXHAUSTED) although the bodies are a few KiB in all."""
    root = tile_repository(64)
    s = Server("--max-inflight-bytes", str(8 * MB), repository=root)
    x = np.arange(4096, dtype=np.float32).reshape(1, 4096)

    def run(module, client):
        inp = module.InferInput("X", [1, 4096], "FP32")
        if module is httpclient:
            inp.set_data_from_numpy(x, binary_data=True)
        else:
            inp.set_data_from_numpy(x)
        return client.infer("tile", [inp]).as_numpy("Y")

    def http_run():
        client = httpclient.InferenceServerClient(s.http_addr, network_timeout=60)
        try:
            return run(httpclient, client)
        finally:
            client.close()

    try:
        np.testing.assert_array_equal(http_run(), np.tile(x, (1, 64)))  # what the server learns from
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            held = [pool.submit(http_run) for _ in range(2)]  # about 6 MiB of 8 held 1.5 s
            time.sleep(0.5)
            with pytest.raises(InferenceServerException) as err:
                http_run()
            assert err.value.status() == "429" and "--max-inflight-bytes" in err.value.message(), err.value
            client = grpcclient.InferenceServerClient(s.grpc_addr)
            with pytest.raises(InferenceServerException) as err:
                run(grpcclient, client)
            assert err.value.status() == "StatusCode.RESOURCE_EXHAUSTED", err.value
            for f in held:
                np.testing.assert_array_equal(f.result(timeout=30), np.tile(x, (1, 64)))
            # Nothing held now: the same request runs.
            np.testing.assert_array_equal(run(grpcclient, client), np.tile(x, (1, 64)))
            client.close()
    finally:
        assert s.stop() == 0
        shutil.rmtree(root)


def test_a_grpc_message_still_arriving_holds_what_has_arrived(budgeted):
    """tonic gathers a gRPC message whole before it decodes it; meanwhile the message holds what has arrived of it
    (before, nothing: four calls each 100 MiB into a 150 MiB message held 400 MiB against a 64 MiB budget). A
    call 30 MB into a declared 50 MB message leaves no room for a second to declare 70 MB: refused with
    RESOURCE_EXHAUSTED as soon as it waits for the rest, on either port. Once the first hangs up, its share is
    free again."""
    from grpc_wire import PartialCall
    first = PartialCall(budgeted.grpc_addr)
    try:
        first.send_part_of_message(50 * MB, 30 * MB)
        time.sleep(0.3)
        for addr in (budgeted.grpc_addr, budgeted.http_addr):
            second = PartialCall(addr)
            try:
                second.send_part_of_message(70 * MB, MB)
                status = second.wait_status()
                assert status is not None and status[0] == 8, status  # RESOURCE_EXHAUSTED
                assert "--max-inflight-bytes" in status[1], status
            finally:
                second.close()
        assert first.status is None, first.status
        # Whole messages read together with a refused one are still answered, then the stream ends with the
        # refusal: a stream that packs a request and the start of a message past the budget into one frame.
        from grpc_wire import STREAM_INFER, framed
        from tritonclient.grpc import service_pb2
        request = service_pb2.ModelInferRequest(model_name="strings", id="whole")
        request.inputs.add(name="TEXT", datatype="BYTES", shape=[1, 1]).contents.bytes_contents.append(b"abc")
        stream = PartialCall(budgeted.grpc_addr, STREAM_INFER)
        try:
            stream.send_part_of_message(70 * MB, 1000, before=framed(request.SerializeToString()))
            status = stream.wait_status()
            assert status is not None and status[0] == 8, status
            answers = [service_pb2.ModelStreamInferResponse.FromString(m) for m in stream.messages()]
            assert [a.infer_response.id for a in answers] == ["whole"], answers
        finally:
            stream.close()
    finally:
        first.close()
    time.sleep(0.3)
    # Its share is free again; and a compressed message is inflated (and charged) on its way in.
    client = grpcclient.InferenceServerClient(budgeted.grpc_addr)
    try:
        out = client.infer("strings", [text_input(grpcclient, 8 * MB)], compression_algorithm="gzip")
        assert len(out.as_numpy("ECHO")[0][0]) == 8 * MB
    finally:
        client.close()
