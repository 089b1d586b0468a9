"""Hostile and malformed requests: each gets a 4xx (or a gRPC client-error code) and the server lives on."""
import gzip
import http.client
import json
import struct

import grpc
import pytest
from tritonclient.grpc import service_pb2, service_pb2_grpc


def post(server, path, body, headers=None):
    host, port = server.http_addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("POST", path, body=body, headers=headers or {})
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def alive(server):
    host, port = server.http_addr.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    conn.request("GET", "/v2/health/live")
    ok = conn.getresponse().status == 200
    conn.close()
    return ok


def infer_json(inputs, **extra):
    return json.dumps({"inputs": inputs, **extra})


def binary(header, tail):
    head = json.dumps(header).encode()
    return head + tail, {"Inference-Header-Content-Length": str(len(head))}


BIG = 9223372036854775807
CASES = [
    ("shape overflow", "/v2/models/mlp/infer", infer_json([{"name": "INPUT0", "shape": [BIG, BIG], "datatype": "FP32", "data": [1]}]), None),
    ("batch 0", "/v2/models/mlp/infer", infer_json([{"name": "INPUT0", "shape": [0, 16], "datatype": "FP32", "data": []}]), None),
    ("scalar for a matrix", "/v2/models/mlp/infer", infer_json([{"name": "INPUT0", "shape": [], "datatype": "FP32", "data": [1]}]), None),
    ("inputs null", "/v2/models/mlp/infer", '{"inputs": null}', None),
    ("inputs string", "/v2/models/mlp/infer", '{"inputs": "x"}', None),
    ("input null", "/v2/models/mlp/infer", '{"inputs": [null]}', None),
    ("empty datatype", "/v2/models/mlp/infer", infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "", "data": [0] * 16}]), None),
    ("mixed kinds", "/v2/models/mlp/infer", infer_json([{"name": "INPUT0", "shape": [1, 2], "datatype": "FP32", "data": [1, "a"]}]), None),
    ("deep data", "/v2/models/mlp/infer", '{"inputs": [{"name": "INPUT0", "shape": [1], "datatype": "FP32", "data": ' + "[" * 20000 + "]" * 20000 + "}]}", None),
    ("deep parameters", "/v2/models/mlp/infer", '{"parameters": {"a": ' + "[" * 20000 + "]" * 20000 + '}, "inputs": []}', None),
    ("not utf-8", "/v2/models/mlp/infer", b"\xff\xfe{\x00", None),
    ("many duplicate inputs", "/v2/models/mlp/infer", infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}] * 5000), None),
    ("huge binary size", "/v2/models/mlp/infer", *binary({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": 18446744073709551615}}]}, b"")),
    ("negative binary size", "/v2/models/mlp/infer", *binary({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"binary_data_size": -1}}]}, b"")),
    ("bytes prefix lies", "/v2/models/strings/infer", *binary({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 8}}]}, struct.pack("<I", 0xFFFFFFFF) + b"abcd")),
    ("bytes count lies", "/v2/models/strings/infer", *binary({"inputs": [{"name": "TEXT", "shape": [1 << 40], "datatype": "BYTES", "parameters": {"binary_data_size": 4}}]}, b"\0\0\0\0")),
    ("header length not a number", "/v2/models/mlp/infer", "{}", {"Inference-Header-Content-Length": "abc"}),
    ("header length negative", "/v2/models/mlp/infer", "{}", {"Inference-Header-Content-Length": "-5"}),
    ("header length past the body", "/v2/models/mlp/infer", "{}", {"Inference-Header-Content-Length": "1000000000"}),
    ("invalid gzip", "/v2/models/mlp/infer", b"not gzip at all", {"Content-Encoding": "gzip"}),
    ("invalid utf-8 in bytes tensor", "/v2/models/strings/infer", *binary({"inputs": [{"name": "TEXT", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}, struct.pack("<I", 2) + b"\xff\xfe")),
    ("input in shared memory", "/v2/models/mlp/infer", infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "parameters": {"shared_memory_region": "r0", "shared_memory_byte_size": 64}}]), None),
    ("output to shared memory", "/v2/models/mlp/infer", infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}], outputs=[{"name": "OUTPUT0", "parameters": {"shared_memory_region": "r1", "shared_memory_byte_size": 16}}]), None),
    ("binary_data_output not a bool", "/v2/models/mlp/infer", infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}], parameters={"binary_data_output": "yes"}), None),
    ("v1 instances and inputs", "/v1/models/mlp:predict", json.dumps({"instances": [[0.5] * 16], "inputs": [[0.5] * 16]}), None),
    ("v1 ragged instances", "/v1/models/mlp:predict", '{"instances": [[1, 2], [[3]]]}', None),
    ("v1 deep instances", "/v1/models/mlp:predict", '{"instances": ' + "[" * 100 + "]" * 100 + "}", None),
]


@pytest.mark.parametrize("name,path,body,headers", CASES, ids=[c[0] for c in CASES])
def test_hostile_http(server, name, path, body, headers):
    status, data = post(server, path, body, headers)
    assert 400 <= status < 500, (status, data[:300])
    assert json.loads(data)["error"], data[:300]
    assert alive(server)


def test_gzip_bomb_is_bounded(server):
    bomb = gzip.compress(b"\0" * (300 * 1024 * 1024))
    status, data = post(server, "/v2/models/mlp/infer", bomb, {"Content-Encoding": "gzip"})
    # Refused while it inflates: by the in-flight budget (400, the whole would exceed it; 429 if other requests
    # hold part of it) or by the body limit (413), never read whole.
    assert status in (400, 413, 429) and "error" in json.loads(data)
    assert alive(server)


@pytest.mark.parametrize("coding", ["gzip", "GZIP", "x-gzip", " Gzip "])
def test_gzip_request_is_accepted(server, coding):
    """Content codings are case-insensitive and x-gzip is gzip (RFC 9110)."""
    body = gzip.compress(infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]).encode())
    status, data = post(server, "/v2/models/mlp/infer", body, {"Content-Encoding": coding})
    assert status == 200, data


def test_deflate_in_capitals_and_identity_are_accepted(server):
    import zlib
    text = infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]).encode()
    assert post(server, "/v2/models/mlp/infer", zlib.compress(text), {"Content-Encoding": "DEFLATE"})[0] == 200
    assert post(server, "/v2/models/mlp/infer", text, {"Content-Encoding": "Identity"})[0] == 200
    status, data = post(server, "/v2/models/mlp/infer", text, {"Content-Encoding": "br"})
    assert status == 415, data


def grpc_request(**kw):
    r = service_pb2.ModelInferRequest(model_name=kw.get("model", "mlp"))
    i = r.inputs.add(name=kw.get("name", "INPUT0"), datatype=kw.get("datatype", "FP32"), shape=kw.get("shape", [1, 16]))
    for raw in kw.get("raw", []):
        r.raw_input_contents.append(raw)
    if "fp32" in kw:
        i.contents.fp32_contents.extend(kw["fp32"])
    if "bytes" in kw:
        i.contents.bytes_contents.extend(kw["bytes"])
    if "shm" in kw:
        i.parameters["shared_memory_region"].string_param = kw["shm"]
        i.parameters["shared_memory_byte_size"].int64_param = 64
    return r


GRPC_CASES = [
    ("shape overflow", grpc_request(shape=[BIG, BIG], raw=[b"\0" * 4])),
    ("negative dim", grpc_request(shape=[-1, 16], raw=[b"\0" * 64])),
    ("fp16 typed contents", grpc_request(model="mixed", name="C", datatype="FP16", shape=[1, 2], fp32=[1.0, 2.0])),
    ("extra raw contents", grpc_request(raw=[b"\0" * 64, b"\0" * 64])),
    ("bytes count lies", grpc_request(model="strings", name="TEXT", datatype="BYTES", shape=[1 << 40], raw=[b"\0\0\0\0"])),
    ("bytes contents count", grpc_request(model="strings", name="TEXT", datatype="BYTES", shape=[3], bytes=[b"a"])),
    ("unknown datatype", grpc_request(datatype="FLOAT", raw=[b"\0" * 64])),
    ("input in shared memory", grpc_request(shm="r0")),
]
# Refused with another code than INVALID_ARGUMENT: a shared-memory region not registered is NOT_FOUND, as in Triton.
GRPC_CODES = {"input in shared memory": grpc.StatusCode.NOT_FOUND}


@pytest.mark.parametrize("name,request_message", GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_hostile_grpc(server, name, request_message):
    channel = grpc.insecure_channel(server.grpc_addr)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request_message, timeout=30)
    assert err.value.code() == GRPC_CODES.get(name, grpc.StatusCode.INVALID_ARGUMENT), err.value.details()
    channel.close()
    assert alive(server)


def test_grpc_message_over_the_limit_is_refused():
    from server import Server

    s = Server("--max-message-bytes", "1048576")
    try:
        channel = grpc.insecure_channel(s.grpc_addr, options=[("grpc.max_send_message_length", -1)])
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        big = grpc_request(model="strings", name="TEXT", datatype="BYTES", shape=[1], raw=[struct.pack("<I", 2 << 20) + b"x" * (2 << 20)])
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(big, timeout=30)
        # As grpc-core servers (Triton) answer; tonic's own OUT_OF_RANGE is rewritten.
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        # On a stream: the small request before it is answered, then the stream ends with the same code.
        small = grpc_request(model="strings", name="TEXT", datatype="BYTES", shape=[1], raw=[struct.pack("<I", 2) + b"ok"])
        small.id = "small"
        replies = stub.ModelStreamInfer(iter([small, big]), timeout=30)
        first = next(replies)
        assert first.error_message == "" and first.infer_response.id == "small"
        with pytest.raises(grpc.RpcError) as err:
            next(replies)
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, err.value.details()
        channel.close()
        assert alive(s)
    finally:
        assert s.stop() == 0


def test_a_body_over_the_message_limit_gets_its_413_while_the_client_is_still_sending():
    """A body past --max-message-bytes is refused with 413, and read and thrown away first (nothing held), so a
    client that sends its whole body before reading the answer (Python's http.client, tritonclient) sees the 413
    instead of a broken pipe; declared with Content-Length or sent chunked. The server goes on."""
    from server import Server

    s = Server("--max-message-bytes", str(4 << 20))
    host, port = s.http_addr.split(":")
    try:
        head = b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,16],"parameters":{"binary_data_size":64}}]}'
        body = head + bytes(24 << 20)
        headers = {"Inference-Header-Content-Length": str(len(head))}
        for chunked in (False, True):
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            if chunked:
                chunks = (body[i:i + (1 << 20)] for i in range(0, len(body), 1 << 20))
                conn.request("POST", "/v2/models/mlp/infer", body=chunks, headers=headers, encode_chunked=True)
            else:
                conn.request("POST", "/v2/models/mlp/infer", body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            assert resp.status == 413 and b"--max-message-bytes" in data, (chunked, resp.status, data[:200])
            conn.request("GET", "/v2/health/ready")
            assert conn.getresponse().status == 200
            conn.close()
        assert alive(s)
    finally:
        assert s.stop() == 0


def _h2_settings(addr):
    """The SETTINGS the server sends first on a new HTTP/2 connection, read with a raw socket: {id: value}."""
    import socket

    host, port = addr.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        # The client connection preface, then an empty SETTINGS frame.
        sock.sendall(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        data = b""
        while len(data) < 9 or len(data) < 9 + int.from_bytes(data[:3], "big"):
            chunk = sock.recv(4096)
            assert chunk, "the server closed the connection before its SETTINGS"
            data += chunk
    length, kind = int.from_bytes(data[:3], "big"), data[3]
    assert kind == 0x4, f"first frame is of type {kind}, not SETTINGS"
    payload = data[9:9 + length]
    return {int.from_bytes(payload[i:i + 2], "big"): int.from_bytes(payload[i + 2:i + 6], "big") for i in range(0, length, 6)}


def test_grpc_port_bounds_streams_per_connection(server):
    """One connection cannot open unbounded concurrent calls: SETTINGS_MAX_CONCURRENT_STREAMS (0x3) is 1024 by
    default and follows --grpc-max-concurrent-streams."""
    assert _h2_settings(server.grpc_addr).get(0x3) == 1024
    from server import Server

    s = Server("--grpc-max-concurrent-streams", "2")
    try:
        assert _h2_settings(s.grpc_addr).get(0x3) == 2
        # Calls beyond the limit on one channel wait in the client and still succeed.
        channel = grpc.insecure_channel(s.grpc_addr)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        futures = [stub.ServerReady.future(service_pb2.ServerReadyRequest(), timeout=30) for _ in range(8)]
        assert all(f.result().ready for f in futures)
        channel.close()
    finally:
        assert s.stop() == 0


def _many_inputs(n):
    r = service_pb2.ModelInferRequest(model_name="mlp")
    for _ in range(n):
        r.inputs.add()
    return r


def _many_parameters(n, where):
    r = grpc_request(raw=[b"\0" * 64])
    target = {"request": r.parameters, "input": r.inputs[0].parameters, "output": r.outputs.add(name="OUTPUT0").parameters}
    for i in range(n):
        target[where][str(i)].bool_param = True
    return r


# (what, HTTP JSON body or None, gRPC message or None, the limit's words in the error)
LIMIT_CASES = [
    ("65 dims", infer_json([{"name": "INPUT0", "shape": [1] * 65, "datatype": "FP32", "data": [0]}]),
     grpc_request(shape=[1] * 65, raw=[b"\0" * 4]), "more than 64 dims"),
    ("4097 inputs", infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}] * 4097),
     _many_inputs(4097), "more than 4096 inputs"),
    ("4097 outputs", infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}],
                                outputs=[{"name": "OUTPUT0"}] * 4097), None, "more than 4096 requested outputs"),
    ("1025 request parameters", infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16}],
                                           parameters={str(i): True for i in range(1025)}),
     _many_parameters(1025, "request"), "more than 1024 entries"),
    ("1025 input parameters", infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0] * 16,
                                           "parameters": {str(i): 1 for i in range(1025)}}]),
     _many_parameters(1025, "input"), "more than 1024 entries"),
    ("1025 output parameters", None, _many_parameters(1025, "output"), "more than 1024 entries"),
]


@pytest.mark.parametrize("name,body,message,limit", LIMIT_CASES, ids=[c[0] for c in LIMIT_CASES])
def test_requests_past_a_structural_limit_are_refused_naming_it(server, name, body, message, limit):
    """Shapes past 64 dims, more than 4096 inputs or outputs, a `parameters` map past 1024 entries: refused
    while parsed, over HTTP (400) and gRPC (INVALID_ARGUMENT), with the limit named."""
    if body is not None:
        status, data = post(server, "/v2/models/mlp/infer", body)
        assert status == 400 and limit in json.loads(data)["error"], (status, data[:300])
    if message is not None:
        channel = grpc.insecure_channel(server.grpc_addr)
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(message, timeout=30)
        channel.close()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT and limit in err.value.details(), err.value.details()
    assert alive(server)


def test_requests_at_the_structural_limits_reach_the_model(server):
    """At each limit the request parses and gets the model's own answer (here, why its shape is wrong)."""
    status, data = post(server, "/v2/models/mlp/infer", infer_json(
        [{"name": "INPUT0", "shape": [1] * 64, "datatype": "FP32", "data": [0], "parameters": {str(i): 1 for i in range(1024)}}],
        parameters={str(i): True for i in range(1024)}))
    assert status == 400 and "the model expects" in json.loads(data)["error"], data[:300]
    channel = grpc.insecure_channel(server.grpc_addr)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(grpc_request(shape=[1] * 64, raw=[b"\0" * 4]), timeout=30)
    channel.close()
    assert "the model expects" in err.value.details(), err.value.details()


def test_no_single_request_grows_memory_past_the_budget():
    """Requests that decode to many times their size (empty strings in a BYTES tensor, empty inputs, thousands
    of parameters, a gzip bomb) are charged what they decode to, or refused past a structural limit, before it
    is allocated: with a 128 MiB budget,
    the server's peak RSS (VmHWM, reset before each request) never grows by more than the budget and twice the
    request; each is refused with a client error (those that decode past the budget naming the flag) or, when
    it fits, answered."""
    import os
    import re
    import shutil
    import tempfile

    from server import REPOSITORY, Server

    mib = 1 << 20
    budget = 128 * mib
    if not os.access(f"/proc/{os.getpid()}/clear_refs", os.W_OK):
        pytest.skip("/proc/PID/clear_refs is not writable here: peak RSS cannot be reset")

    def kib(key):
        with open(f"/proc/{pid}/status") as f:
            return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024

    def peak_growth(send):
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM to the current RSS
        base = kib("VmRSS")
        answer = send()
        return kib("VmHWM") - base, answer

    n = 4 << 20  # 4 Mi empty strings: 16 MiB on the wire, 128 MiB of handles once split
    head = json.dumps({"inputs": [{"name": "TEXT", "shape": [n], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 4 * n}}]}).encode()
    http_strings = head + b"\0" * (4 * n)
    def grpc_call(request):
        try:
            stub.ModelInfer(request, timeout=120)
            return "OK", ""
        except grpc.RpcError as e:
            return e.code().name, e.details()

    # `strings_free` takes any number of strings (no batching, a free dim), so these are charged; `strings`
    # takes 32 at most, so the same requests to it are refused before they are split.
    raw_strings = grpc_request(model="strings_free", name="TEXT", datatype="BYTES", shape=[n], raw=[b"\0" * (4 * n)])
    batched_strings = grpc_request(model="strings", name="TEXT", datatype="BYTES", shape=[n], raw=[b"\0" * (4 * n)])
    listed_strings = grpc_request(model="strings", name="TEXT", datatype="BYTES", shape=[n], bytes=[b""] * n)
    empty_inputs = _many_inputs(1 << 20)
    parameters = _many_parameters(200_000, "request")
    bomb = gzip.compress(b"\0" * (200 * mib))
    cases = [
        ("http empty strings", len(http_strings), lambda: post(
            s, "/v2/models/strings_free/infer", http_strings, {"Inference-Header-Content-Length": str(len(head))})),
        ("grpc raw empty strings", raw_strings.ByteSize(), lambda: grpc_call(raw_strings)),
        ("grpc bytes_contents empty strings", listed_strings.ByteSize(), lambda: grpc_call(listed_strings)),
        ("grpc a million empty inputs", empty_inputs.ByteSize(), lambda: grpc_call(empty_inputs)),
        ("grpc 200 000 parameters", parameters.ByteSize(), lambda: grpc_call(parameters)),
        ("http empty strings past the batch", len(http_strings), lambda: post(
            s, "/v2/models/strings/infer", http_strings, {"Inference-Header-Content-Length": str(len(head))})),
        ("grpc raw empty strings past the batch", batched_strings.ByteSize(), lambda: grpc_call(batched_strings)),
        ("gzip bomb", 200 * mib, lambda: post(s, "/v2/models/mlp/infer", bomb, {"Content-Encoding": "gzip"})),
    ]
    root = tempfile.mkdtemp(prefix="ferroserve-hostile-")
    for name in ("mlp", "strings"):
        shutil.copytree(os.path.join(REPOSITORY, name), os.path.join(root, name))
    os.makedirs(os.path.join(root, "strings_free", "1"))
    shutil.copy(os.path.join(REPOSITORY, "strings", "1", "model.onnx"), os.path.join(root, "strings_free", "1"))
    with open(os.path.join(root, "strings_free", "config.pbtxt"), "w") as f:
        f.write('max_batch_size: 0\ninput [ { name: "TEXT" data_type: TYPE_STRING dims: [ -1 ] } ]\n'
                'output [ { name: "UPPER" data_type: TYPE_STRING dims: [ -1 ] },'
                ' { name: "ECHO" data_type: TYPE_STRING dims: [ -1 ] } ]\n')
    s = Server("--max-inflight-bytes", str(budget), repository=root)
    pid = s.proc.pid
    channel = grpc.insecure_channel(s.grpc_addr, options=[("grpc.max_send_message_length", 1 << 30)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        for name, size, send in cases:
            growth, (code, detail) = peak_growth(send)
            assert growth <= budget + 2 * size + 16 * mib, (name, growth >> 20, size >> 20)
            assert code in (400, 413, "INVALID_ARGUMENT", "OK"), (name, code, detail)
            assert alive(s)
        # The first three are refused for their decoded size, the next two past a structural limit, the next two
        # for more elements than the model takes: each before it is allocated.
        for _, _, send in cases[:3]:
            assert "--max-inflight-bytes" in str(send()[1])
        for _, _, send in cases[3:5]:
            assert "more than" in str(send()[1])
        for _, _, send in cases[5:7]:
            assert f"has {n} elements; model `strings` takes at most 32" in str(send()[1])
    finally:
        channel.close()
        assert s.stop() == 0
        shutil.rmtree(root)


def test_large_answers_are_written_as_they_are_sent():
    """An answer over 256 KiB is written in chunks as it is sent, with the same bytes and a Content-Length: a string
    of control characters answered in JSON (six characters a byte) is read back by tritonclient, and by a raw client
    with the header; a mixed answer (one output JSON, one binary) has the right header length; and the server grows by
    far less than the JSON text, over 10 times the string (held whole in a buffer grown by doubling, more)."""
    import re

    import numpy as np
    import tritonclient.http as httpclient
    from server import Server

    text = bytes(range(32)) * (256 << 10)  # 8 MiB, every control character
    s = Server()
    try:
        client = httpclient.InferenceServerClient(s.http_addr)
        item = httpclient.InferInput("TEXT", [1, 1], "BYTES")
        item.set_data_from_numpy(np.array([[text]], dtype=object), binary_data=True)
        outputs = [httpclient.InferRequestedOutput("ECHO", binary_data=False),
                   httpclient.InferRequestedOutput("UPPER", binary_data=True)]
        result = client.infer("strings", [item], outputs=outputs)
        assert result.as_numpy("ECHO")[0][0] in (text, text.decode())
        assert result.as_numpy("UPPER")[0][0] == text
        json_only = client.infer("strings", [item], outputs=[httpclient.InferRequestedOutput("ECHO", binary_data=False)])
        assert json_only.as_numpy("ECHO")[0][0] in (text, text.decode())
        client.close()

        head = json.dumps({"inputs": [{"name": "TEXT", "datatype": "BYTES", "shape": [1, 1],
                                       "parameters": {"binary_data_size": 4 + len(text)}}]}).encode()
        body = head + struct.pack("<I", len(text)) + text
        host, port = s.http_addr.split(":")

        def send():
            conn = http.client.HTTPConnection(host, int(port), timeout=60)
            conn.request("POST", "/v2/models/strings/infer", body=body,
                         headers={"Inference-Header-Content-Length": str(len(head))})
            resp = conn.getresponse()
            answer = (resp.status, resp.getheader("Content-Length"), resp.getheader("Transfer-Encoding"), resp.read())
            conn.close()
            return answer

        send()  # the model's own first-run allocations are not the answer's
        with open(f"/proc/{s.proc.pid}/clear_refs", "w") as f:
            f.write("5")
        with open(f"/proc/{s.proc.pid}/status") as f:
            base = int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) << 10
        status, length, chunked, data = send()
        with open(f"/proc/{s.proc.pid}/status") as f:
            grown = (int(re.search(r"VmHWM:\s+(\d+)", f.read()).group(1)) << 10) - base
        assert status == 200 and chunked is None and int(length) == len(data) > 10 * len(text)
        answer = json.loads(data)
        assert [o["data"][0] for o in answer["outputs"]] == [text.decode()] * 2
        # The input, the model's copies and our two outputs: about 8 times the text; the JSON alone is 12 times it.
        assert grown < 10 * len(text), f"{grown >> 20} MiB"
        assert alive(s)
    finally:
        assert s.stop() == 0


def test_large_json_and_inflated_bodies_are_held_once():
    """A JSON tensor (KServe v2 and v1) is packed as it is parsed (not first into a vector of 16-byte numbers or
    a JSON tree), and a body of
    unknown length (here gzip, inflated on the way in) is gathered without copies: the server's peak RSS grows
    by a small multiple of what it holds, not by the 13.6x and 2x measured before. Fresh server, nothing else
    in flight; the first request of each kind is the one measured (the allocator keeps memory for later ones)."""
    import os
    import re

    from server import Server

    mib = 1 << 20
    if not os.access(f"/proc/{os.getpid()}/clear_refs", os.W_OK):
        pytest.skip("/proc/PID/clear_refs is not writable here: peak RSS cannot be reset")

    def growth(s, send):
        def kib(key):
            with open(f"/proc/{s.proc.pid}/status") as f:
                return int(re.search(key + r":\s+(\d+)", f.read()).group(1)) * 1024

        with open(f"/proc/{s.proc.pid}/clear_refs", "w") as f:
            f.write("5")
        base = kib("VmRSS")
        answer = send()
        return kib("VmHWM") - base, answer

    n = 8 << 20  # 16 MiB of JSON: `0,` per element
    zeros = (b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,%d],"data":[' % n) + b"0," * (n - 1) + b"0]}]}"
    inflated = 64 * mib
    body = gzip.compress(b"{}" + b"\0" * inflated)
    raw = bytes(32 * mib)
    head = json.dumps({"inputs": [{"name": "INPUT0", "datatype": "FP32", "shape": [1, len(raw) // 4],
                                   "parameters": {"binary_data_size": len(raw)}}]}).encode()
    s = Server()
    try:
        # A body of known length is gathered once as it arrives: its frames and their joined copy were 84 MiB here.
        grown, (status, data) = growth(s, lambda: post(
            s, "/v2/models/mlp/infer", head + raw, {"Inference-Header-Content-Length": str(len(head))}))
        assert status == 400 and b"the model expects" in data, data[:200]
        assert grown <= len(raw) + 16 * mib, f"binary: {grown >> 20} MiB"
        grown, (status, data) = growth(s, lambda: post(s, "/v2/models/mlp/infer", zeros))
        # Held: the body (16 MiB) and the FP32 tensor (32 MiB); a vector of parsed numbers was 128 to 256 MiB.
        assert status == 400 and b"the model expects" in data, data[:200]
        assert grown <= 4 * len(zeros) + 16 * mib, f"json: {grown >> 20} MiB"
        # The KServe v1 form of the same tensor: a JSON tree of it took 33 times its text.
        v1_zeros = b'{"instances":[[' + b"0," * (n - 1) + b"0]]}"
        grown, (status, data) = growth(s, lambda: post(s, "/v1/models/mlp:predict", v1_zeros))
        assert status == 400 and b"the model expects" in data, data[:200]
        assert grown <= 4 * len(v1_zeros) + 16 * mib, f"v1 json: {grown >> 20} MiB"
        grown, (status, data) = growth(s, lambda: post(
            s, "/v2/models/mlp/infer", body, {"Content-Encoding": "gzip", "Inference-Header-Content-Length": "2"}))
        assert status == 400, data[:200]
        # Held: the inflated body once (a doubling vector held up to 1.5 times it, frames joined at the end 2).
        assert grown <= inflated + 24 * mib, f"gzip: {grown >> 20} MiB"
        # A bomb: 256 KiB that would inflate to 255 MiB stops at --max-inflated-bytes (128 MiB by default).
        # (Binary after a 2-byte header: as JSON it would pass the memory budget first, at about 85 MiB.)
        bomb = gzip.compress(b"{}" + b"\0" * (255 * mib), 9)
        assert len(bomb) < 300 * 1024
        grown, (status, data) = growth(s, lambda: post(
            s, "/v2/models/mlp/infer", bomb, {"Content-Encoding": "gzip", "Inference-Header-Content-Length": "2"}))
        assert status == 413 and b"--max-inflated-bytes" in data, data[:200]
        assert grown <= 128 * mib + 16 * mib, f"gzip bomb: {grown >> 20} MiB"
        assert alive(s)
    finally:
        assert s.stop() == 0


def test_a_grpc_message_that_decodes_far_past_its_size_is_refused(server):
    """6 Mi empty strings listed in bytes_contents are 12 MiB on the wire and about 384 MiB once decoded: refused
    (INVALID_ARGUMENT, pointing at raw_input_contents) before prost allocates them, whatever the budget; the same
    strings as raw contents are refused for the model's batch size instead, without being decoded to handles."""
    n = 6 << 20
    listed = grpc_request(model="strings", name="TEXT", datatype="BYTES", shape=[n], bytes=[b""] * n)
    channel = grpc.insecure_channel(server.grpc_addr, options=[("grpc.max_send_message_length", 1 << 30)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        with pytest.raises(grpc.RpcError) as err:
            stub.ModelInfer(listed, timeout=60)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
        assert "more than 192 MiB beyond" in err.value.details() and "raw_input_contents" in err.value.details()
    finally:
        channel.close()
    assert alive(server)


def test_v1_predict_bodies_that_are_not_objects_or_name_null_are_refused(server):
    """The text-packing path of v1 `:predict` refuses what the tree path refused: a body that is an array, and an
    `instances` of null (not read as a missing one, so `inputs` is not used in its place)."""
    row = [0.5] * 16
    for body in ([[row]], {"instances": None, "inputs": [row]}):
        status, data = post(server, "/v1/models/mlp:predict", json.dumps(body))
        assert status == 400, (body, status, data[:200])
    status, data = post(server, "/v1/models/mlp:predict", json.dumps({"instances": [row]}))
    assert status == 200, data[:200]
    status, data = post(server, "/v1/models/mlp:predict", b'{"instances": [[0.5, ')
    assert status == 400 and b"malformed predict JSON" in data, data[:200]
    # Rows keyed by input name are read as a JSON tree (41 times their text): refused past about 4 MiB, small
    # ones served.
    keyed = {"instances": [{"INPUT0": row}] * 120_000}
    status, data = post(server, "/v1/models/mlp:predict", json.dumps(keyed))
    assert status == 400 and b"as a JSON tree" in data, data[:200]
    status, data = post(server, "/v1/models/mlp:predict", json.dumps({"instances": [{"INPUT0": row}] * 4}))
    assert status == 200 and len(json.loads(data)["predictions"]) == 4, data[:200]


def test_a_version_that_is_not_a_number_is_refused_before_its_size_is_checked(server):
    """Too many raw BYTES elements for a version that cannot exist: 400 for the version string, as Triton
    answers (`failed to get model version from specified version string`)."""
    n = 1 << 16
    head = json.dumps({"inputs": [{"name": "TEXT", "shape": [n], "datatype": "BYTES",
                                   "parameters": {"binary_data_size": 4 * n}}]}).encode()
    status, data = post(server, "/v2/models/strings/versions/abc/infer", head + b"\0" * (4 * n),
                        {"Inference-Header-Content-Length": str(len(head))})
    assert status == 400 and b"version string 'abc'" in data, (status, data[:200])


@pytest.mark.parametrize("order", ["client", "sorted"])
def test_json_data_that_would_decode_past_the_growth_cap_is_refused_before_it_is_packed(server, order):
    """A JSON input whose shape claims more than 192 MiB once packed (FP64 `0,` packs 4 bytes a character; a
    BYTES element is a 32-byte handle) is refused before anything is reserved, whichever key comes first, pointing at
    the binary extension; the same shape's tensor in binary is only refused by the model."""
    for datatype, n in (("FP64", 25 << 20), ("BYTES", 7 << 20)):
        fields = [("name", '"INPUT0"'), ("shape", f"[1,{n}]"), ("datatype", f'"{datatype}"'), ("data", '[0]')]
        if order == "sorted":
            fields.sort()
        body = "{\"inputs\":[{" + ",".join(f'"{k}":{v}' for k, v in fields) + "}]}"
        status, data = post(server, "/v2/models/mlp/infer", body)
        assert status == 400 and b"more than the 192 MiB that JSON data may take" in data, data[:300]
        assert b"binary tensor data extension" in data
    assert alive(server)


@pytest.mark.parametrize("order", ["client", "sorted"])
def test_json_inputs_share_one_packing_allowance_per_request(server, order):
    """The 192 MiB that JSON data may take once packed is for the whole request, not each input: an FP64 input of
    96 MiB (24 MiB of `0,`, packed) leaves too little for a second one of 100 MiB, which is refused before anything is
    reserved for it, whichever key comes first; the second alone is only refused for its data."""
    def one(name, n, data):
        fields = [("name", f'"{name}"'), ("shape", f"[{n}]"), ("datatype", '"FP64"'), ("data", data)]
        if order == "sorted":
            fields.sort()
        return "{" + ",".join(f'"{k}":{v}' for k, v in fields) + "}"

    n = 12 << 20
    packed = one("A", n, "[" + "0," * (n - 1) + "0]")
    claim = one("B", 100 << 17, "[0]")
    status, data = post(server, "/v2/models/mlp/infer", '{"inputs":[' + packed + "," + claim + "]}")
    assert status == 400 and b"input `B`" in data and b"more than the 192 MiB that JSON data may take" in data, data
    assert b"bytes of it are left" in data and b"binary tensor data extension" in data
    status, data = post(server, "/v2/models/mlp/infer", '{"inputs":[' + claim + "]}")
    assert status == 400 and b"`data` has 1" in data, data[:300]
    assert alive(server)


def test_bare_non_finite_tokens_are_refused_when_their_rewrite_would_not_fit(server):
    """Bare NaN tokens are rewritten as markers before the parse, a copy up to 3 times the body: a 60 MiB body of
    them (180 MiB rewritten, more than the 164 MiB that may be built beside it) is refused before the copy; a few of
    them are read as NaN as always."""
    n = 15 << 20
    tokens = b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,%d],"data":[' % n + b"NaN," * (n - 1) + b"NaN]}]}"
    status, data = post(server, "/v2/models/mlp/infer", tokens)
    assert status == 400 and b"bare NaN or Infinity tokens" in data and b"binary tensor data extension" in data, data
    few = b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,16],"data":[NaN' + b",0" * 15 + b"]}]}"
    status, data = post(server, "/v2/models/mlp/infer", few)
    assert status == 200, data[:300]
    assert alive(server)


def test_a_large_body_that_ends_short_of_its_content_length_is_refused_and_the_server_goes_on(server):
    """A body over 1 MiB is gathered as it arrives into a buffer of its Content-Length: a client that sends less and
    closes its side gets 400 (or its connection closed), nothing stays held, and the next request is served; a large
    body sent to a path that is not an inference endpoint is not gathered, and gets its 404."""
    import socket

    host, port = server.http_addr.split(":")

    def send(path, length, body):
        """Sends a head claiming `length` bytes and then `body`, closes the sending side, returns the answer."""
        head = (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {length}\r\n"
                "Inference-Header-Content-Length: 2\r\n\r\n").encode()
        answer = b""
        with socket.create_connection((host, int(port)), timeout=30) as sock:
            try:
                sock.sendall(head + body)
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass  # the server answered (and closed) before the body was all sent
            try:
                while chunk := sock.recv(65536):
                    answer += chunk
            except ConnectionResetError:
                pass
        return answer

    answer = send("/v2/models/mlp/infer", 8 << 20, b"{}" + bytes(3 << 20))
    assert answer.startswith(b"HTTP/1.1 400") and b"cannot read the request body" in answer, answer[:300]
    answer = send("/v2/models/nope/infer-not", 4 << 20, bytes(4 << 20))
    # (A reset can overtake the answer on some stacks, as the body is not read.)
    assert answer == b"" or answer.startswith(b"HTTP/1.1 404"), answer[:200]
    row = [0.5] * 16
    body = json.dumps({"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": row}]})
    status, data = post(server, "/v2/models/mlp/infer", body)
    assert status == 200, data[:200]


def test_slow_clients_are_cut_off_after_the_read_timeout():
    """Slowloris: a connection that sends nothing, one byte, part of HTTP/2's preface, half a request line, or half
    a body, or sits idle after an answer, is closed once `--read-timeout-secs` passes (the stalled body answered 408 first), while others are
    served meanwhile."""
    import socket
    import time

    from server import Server
    s = Server("--read-timeout-secs", "1")
    try:
        host, port = s.http_addr.rsplit(":", 1)
        conns = {name: socket.create_connection((host, int(port)), timeout=10)
                 for name in ("nothing", "P", "part of HTTP/2's preface", "half a line", "idle", "half a body")}
        conns["P"].sendall(b"P")  # the start of both POST and PRI: protocol detection waits for more
        conns["part of HTTP/2's preface"].sendall(b"PRI * HTTP/2.0\r\n")
        conns["half a line"].sendall(b"POST /v2/models/mlp/in")
        conns["idle"].sendall(b"GET /v2/health/ready HTTP/1.1\r\nHost: x\r\n\r\n")
        conns["half a body"].sendall(b"POST /v2/models/mlp/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
        started = time.monotonic()
        status, _ = post(s, "/v2/models/mlp/infer", json.dumps(
            {"inputs": [{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]}))
        assert status == 200
        answers = {}
        for name, conn in conns.items():
            data = b""
            while chunk := conn.recv(65536):  # b"" once the server closes; socket.timeout (10 s) if it never does
                data += chunk
            answers[name] = data
            conn.close()
        assert time.monotonic() - started < 5
        for name in ("nothing", "P", "part of HTTP/2's preface", "half a line"):
            assert answers[name] == b"", answers
        assert answers["idle"].startswith(b"HTTP/1.1 200"), answers
        assert answers["half a body"].startswith(b"HTTP/1.1 408") and b"--read-timeout-secs" in answers["half a body"]
    finally:
        assert s.stop() == 0


def test_slow_grpc_clients_are_cut_off_after_the_read_timeout():
    """The dedicated gRPC port: a connection that sends nothing or part of HTTP/2's preface is closed once
    `--read-timeout-secs` passes. On both ports, a call whose message stops arriving ends with DEADLINE_EXCEEDED and
    gives back what it held, while others are served meanwhile."""
    import socket
    import time

    import numpy as np
    import tritonclient.grpc as grpcclient
    from grpc_wire import PartialCall
    from server import Server
    s = Server("--read-timeout-secs", "1")
    try:
        host, port = s.grpc_addr.rsplit(":", 1)
        conns = {name: socket.create_connection((host, int(port)), timeout=10) for name in ("nothing", "P", "PRI")}
        conns["P"].sendall(b"P")
        conns["PRI"].sendall(b"PRI * HTTP/2.0\r\n")
        calls = [PartialCall(s.grpc_addr), PartialCall(s.http_addr)]
        for call in calls:
            call.send_part_of_message(1 << 20, 1000)
        started = time.monotonic()
        client = grpcclient.InferenceServerClient(s.grpc_addr)
        inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
        assert client.infer("mlp", [inp]).as_numpy("OUTPUT0").shape == (1, 4)
        client.close()
        for name, conn in conns.items():
            try:
                while conn.recv(65536):  # b"" once the server closes; socket.timeout (10 s) if it never does
                    pass
            except ConnectionResetError:
                pass
            conn.close()
        for call in calls:
            status = call.wait_status(timeout=10)
            assert status is not None and status[0] == 4, status  # DEADLINE_EXCEEDED
            assert "--read-timeout-secs" in status[1], status
            call.close()
        assert time.monotonic() - started < 6
    finally:
        assert s.stop() == 0
