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


def test_gzip_request_is_accepted(server):
    body = gzip.compress(infer_json([{"name": "INPUT0", "shape": [1, 16], "datatype": "FP32", "data": [0.5] * 16}]).encode())
    status, data = post(server, "/v2/models/mlp/infer", body, {"Content-Encoding": "gzip"})
    assert status == 200, data


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


@pytest.mark.parametrize("name,request_message", GRPC_CASES, ids=[c[0] for c in GRPC_CASES])
def test_hostile_grpc(server, name, request_message):
    channel = grpc.insecure_channel(server.grpc_addr)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    with pytest.raises(grpc.RpcError) as err:
        stub.ModelInfer(request_message, timeout=30)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, err.value.details()
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


def test_no_single_request_grows_memory_past_the_budget():
    """Requests that decode to many times their size (empty strings in a BYTES tensor, empty inputs, thousands
    of parameters, a gzip bomb) are charged what they decode to before it is allocated: with a 128 MiB budget,
    the server's peak RSS (VmHWM, reset before each request) never grows by more than the budget and twice the
    request; each is refused with a client error (those that decode past the budget naming the flag) or, when
    it fits, answered."""
    import os
    import re

    from server import Server

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

    raw_strings = grpc_request(model="strings", name="TEXT", datatype="BYTES", shape=[n], raw=[b"\0" * (4 * n)])
    listed_strings = grpc_request(model="strings", name="TEXT", datatype="BYTES", shape=[n], bytes=[b""] * n)
    empty_inputs = service_pb2.ModelInferRequest(model_name="mlp")
    for _ in range(1 << 20):
        empty_inputs.inputs.add()
    parameters = grpc_request(raw=[b"\0" * 64])
    for i in range(200_000):
        parameters.parameters[str(i)].bool_param = True
    bomb = gzip.compress(b"\0" * (200 * mib))
    cases = [
        ("http empty strings", len(http_strings), lambda: post(
            s, "/v2/models/strings/infer", http_strings, {"Inference-Header-Content-Length": str(len(head))})),
        ("grpc raw empty strings", raw_strings.ByteSize(), lambda: grpc_call(raw_strings)),
        ("grpc bytes_contents empty strings", listed_strings.ByteSize(), lambda: grpc_call(listed_strings)),
        ("grpc a million empty inputs", empty_inputs.ByteSize(), lambda: grpc_call(empty_inputs)),
        ("grpc 200 000 parameters", parameters.ByteSize(), lambda: grpc_call(parameters)),
        ("gzip bomb", 200 * mib, lambda: post(s, "/v2/models/mlp/infer", bomb, {"Content-Encoding": "gzip"})),
    ]
    s = Server("--max-inflight-bytes", str(budget))
    pid = s.proc.pid
    channel = grpc.insecure_channel(s.grpc_addr, options=[("grpc.max_send_message_length", 1 << 30)])
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    try:
        for name, size, send in cases:
            growth, (code, detail) = peak_growth(send)
            assert growth <= budget + 2 * size + 16 * mib, (name, growth >> 20, size >> 20)
            assert code in (400, 413, "INVALID_ARGUMENT", "OK"), (name, code, detail)
            assert alive(s)
        # Each of the first four is refused for its decoded size, before it is allocated.
        for _, _, send in cases[:4]:
            assert "--max-inflight-bytes" in str(send()[1])
    finally:
        channel.close()
        assert s.stop() == 0
