"""Peak RSS growth of ferroserve per single request, for hostile and large requests: the server's VmHWM is reset
(/proc/PID/clear_refs) before each request and read after it. Each request is sent twice: the first growth is what
it costs a server that has not served one like it; the second is usually smaller (the allocator keeps memory).

    FERROSERVE_BIN=target/release/ferroserve .venv/bin/python benches/peak_rss.py [server flags...]
    ONLY=JSON ... benches/peak_rss.py      # only the cases whose name contains JSON

Starts the server on the bundled repository with the given flags (defaults: 1 GiB --max-inflight-bytes, 192 MiB
--max-message-bytes). Needs a writable /proc/PID/clear_refs (Linux, same user).
"""
import gzip, http.client, json, os, struct, sys, time
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
import grpc
from server import Server
from tritonclient.grpc import service_pb2, service_pb2_grpc
MIB = 1 << 20

def kib(pid, key):
    with open(f"/proc/{pid}/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith(key + ":"))

def post(s, path, body, headers=None, chunked=False):
    host, port = s.http_addr.split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=120)
    if chunked:
        def gen():
            for i in range(0, len(body), 1 << 20):
                yield body[i:i + (1 << 20)]
        c.request("POST", path, body=gen(), headers=headers or {}, encode_chunked=True)
    else:
        c.request("POST", path, body=body, headers=headers or {})
    r = c.getresponse(); d = r.read(); c.close()
    return r.status, d[:120]

def binary(name, datatype, shape, raw, binary_out=True):
    head = json.dumps({"inputs": [{"name": name, "datatype": datatype, "shape": shape,
                                    "parameters": {"binary_data_size": len(raw)}}],
                       "parameters": {"binary_data_output": binary_out}}).encode()
    return head + raw, {"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"}

def grpc_req(model, name, datatype, shape, raw=None, bytes_=None):
    r = service_pb2.ModelInferRequest(model_name=model)
    i = r.inputs.add(name=name, datatype=datatype, shape=shape)
    if raw is not None: r.raw_input_contents.append(raw)
    if bytes_ is not None: i.contents.bytes_contents.extend(bytes_)
    return r

s = Server(*sys.argv[1:])
pid = s.proc.pid
ch = grpc.insecure_channel(s.grpc_addr, options=[("grpc.max_send_message_length", 1 << 30), ("grpc.max_receive_message_length", 1 << 30)])
stub = service_pb2_grpc.GRPCInferenceServiceStub(ch)
def call(m):
    try:
        stub.ModelInfer(m, timeout=120); return "OK", ""
    except grpc.RpcError as e:
        return e.code().name, e.details()[:120]

big = struct.pack("<I", 64 * MIB) + b"x" * (64 * MIB)
legit_http = binary("TEXT", "BYTES", [1, 1], big)
legit_grpc = grpc_req("strings", "TEXT", "BYTES", [1, 1], raw=big)
junk = 191 * MIB  # the largest body the default --max-message-bytes (192 MiB) lets in
bad_binary = binary("INPUT0", "FP32", [1, 16], b"\0" * junk)
n = 4 << 20
strings_head = json.dumps({"inputs": [{"name": "TEXT", "shape": [n], "datatype": "BYTES", "parameters": {"binary_data_size": 4 * n}}]}).encode()
empty_inputs = service_pb2.ModelInferRequest(model_name="mlp")
for _ in range(1 << 20): empty_inputs.inputs.add()
params = grpc_req("mlp", "INPUT0", "FP32", [1, 16], raw=b"\0" * 64)
for i in range(200_000): params.parameters[str(i)].bool_param = True
zeros = 31 << 20
json_zeros = (b'{"inputs":[{"name":"INPUT0","datatype":"FP32","shape":[1,%d],"data":[' % zeros) + b"0," * (zeros - 1) + b"0]}]}"
json_bools = (b'{"inputs":[{"name":"INPUT0","datatype":"BOOL","shape":[1,%d],"data":[' % zeros) + b"0," * (zeros - 1) + b"0]}]}"
# Two FP64 inputs of 32 MiB of `0,` each: 128 MiB apiece once packed, beside the 64 MiB body.
half = (16 << 20) - 64  # just under --max-json-bytes (64 MiB) in all
json_two = (b'{"inputs":[' + b",".join(
    b'{"name":"%s","datatype":"FP64","shape":[%d],"data":[' % (n, half) + b"0," * (half - 1) + b"0]}" for n in (b"A", b"B")) + b"]}")
# A string of control characters, answered in JSON: each byte is written as a six-character escape, twice (UPPER
# and ECHO).
ctrl = struct.pack("<I", 32 * MIB) + b"\x01" * (32 * MIB)
ctrl_json_out = binary("TEXT", "BYTES", [1, 1], ctrl, binary_out=False)
only = os.environ.get("ONLY")
v1_zeros = b'{"instances":[[' + b"0," * (zeros - 1) + b"0]]}"
rows = 450_000  # about 20 MiB of rows keyed by input name: read as a JSON tree
v1_rows = b'{"instances":[' + b",".join([b'{"INPUT0":[' + b",".join([b"0"] * 16) + b"]}"] * rows) + b"]}"
cases = [
    ("http v1 JSON 20 MiB of keyed rows", len(v1_rows) >> 20, lambda: post(s, "/v1/models/mlp:predict", v1_rows, {"Content-Type": "application/json"})),
    ("http v1 JSON 62 MiB of zeros", 62, lambda: post(s, "/v1/models/mlp:predict", v1_zeros, {"Content-Type": "application/json"})),
    ("http JSON 64 MiB of zeros (FP32)", 64, lambda: post(s, "/v2/models/mlp/infer", json_zeros, {"Content-Type": "application/json"})),
    ("http JSON 64 MiB of zeros (BOOL)", 64, lambda: post(s, "/v2/models/mlp/infer", json_bools, {"Content-Type": "application/json"})),
    ("http JSON 64 MiB, two FP64 inputs", 64, lambda: post(s, "/v2/models/mlp/infer", json_two, {"Content-Type": "application/json"})),
    ("http binary 32 MiB control chars, JSON out", 32, lambda: post(s, "/v2/models/strings/infer", *ctrl_json_out)),
    ("http binary 64 MiB string (legit)", 64, lambda: post(s, "/v2/models/strings/infer", *legit_http)),
    ("grpc raw 64 MiB string (legit)", 64, lambda: call(legit_grpc)),
    ("http 191 MiB binary, wrong size", 191, lambda: post(s, "/v2/models/mlp/infer", *bad_binary)),
    ("http 191 MiB binary, chunked", 191, lambda: post(s, "/v2/models/mlp/infer", *bad_binary, chunked=True)),
    ("http 191 MiB junk JSON", 191, lambda: post(s, "/v2/models/mlp/infer", b"[" * junk, {"Content-Type": "application/json"})),
    ("http 191 MiB junk JSON chunked", 191, lambda: post(s, "/v2/models/mlp/infer", b"[" * junk, {"Content-Type": "application/json"}, chunked=True)),
    ("grpc 191 MiB raw, wrong size", 191, lambda: call(grpc_req("mlp", "INPUT0", "FP32", [1, 16], raw=b"\0" * junk))),
    ("http 4 Mi empty strings", 16, lambda: post(s, "/v2/models/strings/infer", strings_head + b"\0" * (4 * n), {"Inference-Header-Content-Length": str(len(strings_head))})),
    ("grpc raw 4 Mi empty strings", 16, lambda: call(grpc_req("strings", "TEXT", "BYTES", [n], raw=b"\0" * (4 * n)))),
    ("grpc 4 Mi bytes_contents", 8, lambda: call(grpc_req("strings", "TEXT", "BYTES", [n], bytes_=[b""] * n))),
    ("grpc 6 Mi bytes_contents", 12, lambda: call(grpc_req("strings", "TEXT", "BYTES", [6 << 20], bytes_=[b""] * (6 << 20)))),
    ("grpc a million empty inputs", 2, lambda: call(empty_inputs)),
    ("grpc 200 000 parameters", 3, lambda: call(params)),
    ("gzip binary 191 MiB", 0, lambda: post(s, "/v2/models/mlp/infer", gzip.compress(b"{}" + b"\0" * junk), {"Content-Encoding": "gzip", "Inference-Header-Content-Length": "2"})),
    ("gzip bomb 200 MiB", 0, lambda: post(s, "/v2/models/mlp/infer", gzip.compress(b"\0" * (200 * MIB)), {"Content-Encoding": "gzip"})),
]
try:
    print(f"{'case':40} {'MiB sent':>8} {'growth 1st, 2nd (MiB)':>16} RSS  answer")
    for name, size, send in cases:
        if only and only not in name: continue
        growths = []
        for _ in range(2):
            time.sleep(1)
            with open(f"/proc/{pid}/clear_refs", "w") as f: f.write("5")
            base = kib(pid, "VmRSS")
            ans = send()
            growths.append((kib(pid, "VmHWM") - base) / 1024)
        print(f"{name:40} {size:>8} {growths[0]:>7.0f} {growths[1]:>7.0f} {kib(pid, 'VmRSS') // 1024:>5}  {ans[0]} {str(ans[1])[:70]}", flush=True)
finally:
    ch.close(); print("stop", s.stop())
