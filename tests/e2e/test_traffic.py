"""Traffic between the versions of one model, inside the server: a weighted split measured over 2,000 requests
(HTTP and gRPC), named versions bypassing it, a pin header, sticky keys, stable metadata, a run-time policy change
under load with no failed request, shadow copies whose divergence is measured, and a canary that returns errors
rolled back by the guard. The models are `add_version`'s (OUT = IN + version), so every answer says which version
computed it, independently of the response's `model_version` field."""
import json
import os
import re
import shutil
import tempfile
import threading
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from server import REPOSITORY, Server

ADD = os.path.join(REPOSITORY, "add_version")


def model(root, name, parameters, versions=(1, 2), files=None):
    os.makedirs(os.path.join(root, name))
    for v in versions:
        src = (files or {}).get(v, os.path.join(ADD, str(v), "model.onnx"))
        os.makedirs(os.path.join(root, name, str(v)))
        shutil.copy(src, os.path.join(root, name, str(v), "model.onnx"))
    params = "".join(f'parameters {{ key: "{k}" value: {{ string_value: "{v}" }} }}\n' for k, v in parameters.items())
    with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
        f.write(f'name: "{name}"\nmax_batch_size: 0\nversion_policy: {{ all {{ }} }}\n{params}')


@pytest.fixture(scope="module")
def server():
    root = tempfile.mkdtemp(prefix="ferroserve-traffic-")
    model(root, "split", {"traffic_split": "1:90,2:10"})
    model(root, "pinned", {"traffic_split": "1:50,2:50", "traffic_pin_header": "x-model-version"})
    model(root, "sticky", {"traffic_split": "1:50,2:50", "traffic_sticky_header": "x-user-id"})
    model(root, "live", {})
    model(root, "shadowed", {"traffic_split": "1:100", "traffic_shadow": "2:1.0:64"})
    # Version 2 takes a different input (the MLP's), so every request the split sends it fails.
    model(root, "guarded", {"traffic_split": "1:80,2:20",
                            "traffic_guard": "error_rate=0.2,p99_ratio=1000,window_secs=60,min_requests=10"},
          files={2: os.path.join(REPOSITORY, "mlp", "1", "model.onnx")})
    s = Server(repository=root)
    yield s
    assert s.stop() == 0, s.logs()
    shutil.rmtree(root)


def http_infer(client, name, headers=None, value=10, version=""):
    inp = httpclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([value], dtype=np.int32))
    r = client.infer(name, [inp], headers=headers, model_version=version)
    served = int(r.get_response()["model_version"])
    assert int(r.as_numpy("OUT")[0]) == value + served  # the answer itself says which version computed it
    return served


def traffic(server, name, method="GET", body=None):
    req = urllib.request.Request(f"{server.http_url}/v2/models/{name}/traffic", method=method,
                                 data=None if body is None else json.dumps(body).encode())
    with urllib.request.urlopen(req) as r:
        return json.loads(r.read())


def scrape(server):
    with urllib.request.urlopen(server.http_url + "/metrics") as r:
        return r.read().decode()


def metric(text, name, **labels):
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            if all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_90_10_split_over_2000_requests(server):
    client = httpclient.InferenceServerClient(server.http_addr)
    counts = {1: 0, 2: 0}
    for _ in range(2000):
        counts[http_infer(client, "split")] += 1
    # Binomial(2000, 0.1): sd 0.0067; 5 sd.
    assert abs(counts[2] / 2000 - 0.10) < 0.034, counts
    # A request that names a version bypasses the split.
    assert {http_infer(client, "split", version="2") for _ in range(20)} == {2}
    text = scrape(server)
    assert metric(text, "ferroserve_traffic_weight", model="split", version="1") == 90
    assert metric(text, "ferroserve_requests_total", model="split", version="2", protocol="http", code="200") >= counts[2]
    client.close()


def test_the_split_over_grpc_and_metadata_that_does_not_move(server):
    client = grpcclient.InferenceServerClient(server.grpc_addr)
    served = []
    for _ in range(400):
        inp = grpcclient.InferInput("IN", [1], "INT32")
        inp.set_data_from_numpy(np.array([5], dtype=np.int32))
        r = client.infer("split", [inp])
        v = int(r.get_response().model_version)
        assert int(r.as_numpy("OUT")[0]) == 5 + v
        served.append(v)
    assert 0.03 < served.count(2) / 400 < 0.2, served.count(2)
    metas = {str(client.get_model_metadata("split")) for _ in range(20)}
    assert len(metas) == 1
    http = httpclient.InferenceServerClient(server.http_addr)
    assert len({json.dumps(http.get_model_metadata("split"), sort_keys=True) for _ in range(20)}) == 1
    assert len({json.dumps(http.get_model_config("split"), sort_keys=True) for _ in range(20)}) == 1
    client.close()
    http.close()


def test_a_pin_header_chooses_the_version(server):
    client = httpclient.InferenceServerClient(server.http_addr)
    for v in (1, 2):
        assert {http_infer(client, "pinned", headers={"x-model-version": str(v)}) for _ in range(30)} == {v}
    with pytest.raises(Exception, match="'pinned' version 7 is not found"):
        http_infer(client, "pinned", headers={"x-model-version": "7"})
    grpc = grpcclient.InferenceServerClient(server.grpc_addr)
    inp = grpcclient.InferInput("IN", [1], "INT32")
    inp.set_data_from_numpy(np.array([1], dtype=np.int32))
    assert {grpc.infer("pinned", [inp], headers={"x-model-version": "2"}).get_response().model_version
            for _ in range(20)} == {"2"}
    client.close()
    grpc.close()


def test_sticky_keys_keep_a_user_on_one_version_and_spread_users(server):
    client = httpclient.InferenceServerClient(server.http_addr)
    per_user = {}
    for user in range(200):
        seen = {http_infer(client, "sticky", headers={"x-user-id": f"user-{user}"}) for _ in range(5)}
        assert len(seen) == 1, (user, seen)
        per_user[user] = seen.pop()
    twos = sum(1 for v in per_user.values() if v == 2)
    assert 60 < twos < 140, twos  # 50/50 by weight over 200 users
    client.close()


def test_changing_weights_under_load_fails_no_request(server):
    stop = threading.Event()
    failures, served = [], []

    def load():
        client = httpclient.InferenceServerClient(server.http_addr)
        while not stop.is_set():
            try:
                served.append(http_infer(client, "live"))
            except Exception as e:  # noqa: BLE001 - any failure is what this test counts
                failures.append(repr(e))
        client.close()

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    try:
        for weights in ({"1": 100, "2": 0}, {"1": 50, "2": 50}, {"1": 0, "2": 100}, {"1": 90, "2": 10}):
            view = traffic(server, "live", "PUT", {"split": weights})
            assert view["source"] == "admin" and view["policy"]["split"] == weights
            time.sleep(0.3)
        traffic(server, "live", "PUT", {"split": {"1": 0, "2": 100}})
        time.sleep(0.2)
        mark = len(served)
        time.sleep(0.3)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=30)
    assert failures == []
    assert len(served) > 200
    assert set(served[mark + 8:]) == {2}  # after the last change, everything goes to 2 (in-flight ones aside)
    view = traffic(server, "live", "DELETE")
    assert view["source"] == "config" and view["routing"] == "latest"
    text = scrape(server)  # versions that left the split show weight 0, not their last weight
    assert metric(text, "ferroserve_traffic_weight", model="live", version="2") == 0


def test_bad_policies_are_refused(server):
    for body, reason in (({"split": {"9": 100}}, "no version 9"), ({"split": {"1": 0}}, "above 0"),
                         ({"splat": {}}, "unknown field"), ({"shadow": {"version": 2, "fraction": 3}}, "fraction")):
        with pytest.raises(urllib.error.HTTPError) as e:
            traffic(server, "live", "PUT", body)
        assert e.value.code == 400
        assert reason in json.loads(e.value.read())["error"], body
    with pytest.raises(urllib.error.HTTPError) as e:
        traffic(server, "nope")
    assert e.value.code == 404


def test_shadow_copies_are_measured_and_never_answer(server):
    client = httpclient.InferenceServerClient(server.http_addr)
    for i in range(50):
        assert http_infer(client, "shadowed", value=i) == 1  # the client only ever sees the primary
    text = ""
    for _ in range(100):  # shadows finish after their primaries: wait for them (bounded)
        text = scrape(server)
        if metric(text, "ferroserve_shadow_requests_total", model="shadowed", version="2", outcome="ok") >= 50:
            break
        time.sleep(0.05)
    assert metric(text, "ferroserve_shadow_requests_total", model="shadowed", version="2", outcome="ok") == 50
    # Version 2 answers IN + 2 where version 1 answers IN + 1: every shadow differs by exactly 1.
    count = metric(text, "ferroserve_shadow_max_abs_difference_count", model="shadowed", version="2")
    total = metric(text, "ferroserve_shadow_max_abs_difference_sum", model="shadowed", version="2")
    assert count == 50 and total == pytest.approx(50.0)
    assert metric(text, "ferroserve_shadow_duration_seconds_count", model="shadowed", version="2") == 50
    assert metric(text, "ferroserve_requests_total", model="shadowed", version="2") == 0  # not client traffic
    client.close()


def test_a_failing_canary_is_rolled_back(server):
    client = httpclient.InferenceServerClient(server.http_addr)
    errors = 0
    for _ in range(300):
        try:
            http_infer(client, "guarded")
        except Exception:  # noqa: BLE001 - the canary's 400s are the point
            errors += 1
        view = traffic(server, "guarded")
        if view["source"] == "rollback":
            break
    assert view["source"] == "rollback", view
    assert view["policy"]["split"] == {"1": 80, "2": 0}
    assert view["rollbacks"][0]["version"] == 2 and "error rate" in view["rollbacks"][0]["reason"]
    assert errors >= 10
    assert {http_infer(client, "guarded") for _ in range(50)} == {1}  # after the rollback, no more errors
    text = scrape(server)
    assert metric(text, "ferroserve_traffic_rollbacks_total", model="guarded", version="2") == 1
    assert metric(text, "ferroserve_traffic_weight", model="guarded", version="2") == 0
    client.close()


def _field(number, text):
    """One length-delimited protobuf field (what these messages are made of)."""
    data = text.encode()
    out, n = bytes([number << 3 | 2]), len(data)
    while n >= 0x80:
        out += bytes([n & 0x7F | 0x80])
        n >>= 7
    return out + bytes([n]) + data


def _state(message):
    """TrafficState.state_json out of its wire bytes."""
    assert message[0] == 0x0A
    n, shift, i = 0, 0, 1
    while True:
        b = message[i]
        n |= (b & 0x7F) << shift
        i += 1
        shift += 7
        if b < 0x80:
            return json.loads(message[i:i + n])


def test_traffic_control_over_grpc(server):
    import grpc

    channel = grpc.insecure_channel(server.grpc_addr)
    call = lambda rpc: channel.unary_unary(f"/ferroserve.traffic.v1.TrafficControl/{rpc}",  # noqa: E731
                                           request_serializer=lambda b: b, response_deserializer=_state)
    state = call("GetTraffic")(_field(1, "split"))
    assert state["policy"]["split"] == {"1": 90, "2": 10} and state["source"] == "config"
    state = call("SetTraffic")(_field(1, "live") + _field(2, json.dumps({"pinned_version": 1})))
    assert state["routing"] == "pinned:1" and state["source"] == "admin"
    client = httpclient.InferenceServerClient(server.http_addr)
    assert {http_infer(client, "live") for _ in range(20)} == {1}
    with pytest.raises(grpc.RpcError) as e:
        call("SetTraffic")(_field(1, "live") + _field(2, '{"split": {"5": 1}}'))
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "no version 5" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        call("GetTraffic")(_field(1, "nope"))
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    assert call("ResetTraffic")(_field(1, "live"))["routing"] == "latest"
    assert {http_infer(client, "live") for _ in range(20)} == {2}
    client.close()
    channel.close()


def test_v1_predict_follows_the_split(server):
    served = []
    for _ in range(300):
        req = urllib.request.Request(f"{server.http_url}/v1/models/split:predict", method="POST",
                                     data=json.dumps({"instances": [7]}).encode())
        with urllib.request.urlopen(req) as r:
            served.append(json.loads(r.read())["predictions"][0] - 7)  # OUT - IN = the version that computed it
    assert set(served) == {1, 2} and 0.02 < served.count(2) / 300 < 0.22, served.count(2)
