"""Every request has an id: the client's x-request-id, or one generated, echoed in the response (HTTP header,
gRPC metadata) and named in the log lines written while handling the request."""
import re
import time
import urllib.error
import urllib.request

import grpc

from server import Server


def test_request_ids_over_http_and_grpc():
    s = Server(env={"RUST_LOG": "info,ferroserve=debug,ort=warn"})
    try:
        request = urllib.request.Request(s.http_url + "/v2/health/ready", headers={"x-request-id": "client-id-42"})
        with urllib.request.urlopen(request) as r:
            assert r.headers["x-request-id"] == "client-id-42"
        with urllib.request.urlopen(s.http_url + "/v2/health/live") as r:
            generated = r.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{16}-[0-9a-f]+", generated), generated
        try:
            urllib.request.urlopen(urllib.request.Request(s.http_url + "/v2/models/absent/infer", data=b"{}",
                                                          headers={"x-request-id": "bad-request-7"}, method="POST"))
        except urllib.error.HTTPError as e:
            assert e.code in (400, 404) and e.headers["x-request-id"] == "bad-request-7"
        channel = grpc.insecure_channel(s.grpc_addr)
        live = channel.unary_unary("/inference.GRPCInferenceService/ServerLive")
        _, call = live.with_call(b"", metadata=[("x-request-id", "grpc-id-9")], timeout=5)
        assert dict(call.initial_metadata())["x-request-id"] == "grpc-id-9"
        channel.close()
        time.sleep(0.2)
        logs = s.logs()
        assert "\x1b[" not in logs, "no terminal colours in logs written to a file"
        assert re.search(r'request\{id="bad-request-7".*request rejected', logs), logs[-2000:]
    finally:
        assert s.stop() == 0
