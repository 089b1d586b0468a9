"""Dynamic batching end to end: outputs are identical alone and inside a batch, for every batching example
model; queue limits answer 429 / RESOURCE_EXHAUSTED; queue timeouts answer 504 / DEADLINE_EXCEEDED."""
import concurrent.futures
import os
import shutil
import tempfile

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import REPOSITORY, Server

# A long, fixed batching window (Triton's behaviour, not the adaptive default) so that concurrent requests surely
# meet in one batch.
FIXED = 'parameters { key: "batch_window" value: { string_value: "fixed" } }\n'
CONFIGS = {
    "mlp": 'max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 200000 }\n',
    "mixed": 'max_batch_size: 16\ndynamic_batching { max_queue_delay_microseconds: 200000 }\n',
    "strings": 'max_batch_size: 32\ndynamic_batching { max_queue_delay_microseconds: 200000 }\n',
    "mlp_large": 'max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 200000 }\n',
    "tiny_queue": 'max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 300000 '
                  'default_queue_policy { max_queue_size: 2 } }\n',
    "timeouts": 'max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 300000 '
                'default_queue_policy { default_timeout_microseconds: 20000 } }\n',
    "overridable": 'max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 300000 '
                   'default_queue_policy { default_timeout_microseconds: 10000000 allow_timeout_override: true } }\n',
}


@pytest.fixture(scope="module")
def batching_server():
    root = tempfile.mkdtemp()
    for name, config in CONFIGS.items():
        source = name if name in ("mlp", "mixed", "strings", "mlp_large") else "mlp"
        os.makedirs(os.path.join(root, name, "1"))
        shutil.copy(os.path.join(REPOSITORY, source, "1", "model.onnx"), os.path.join(root, name, "1", "model.onnx"))
        with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
            f.write(config + FIXED)
    s = Server(repository=root)
    yield s
    assert s.stop() == 0
    shutil.rmtree(root)


def requests_for(model, rng):
    """Eight requests of varying batch sizes and values for `model`: (inputs, output names)."""
    out = []
    for i in range(8):
        n = 1 + i % 3
        if model == "mlp":
            inputs = {"INPUT0": rng.standard_normal((n, 16)).astype(np.float32)}
        elif model == "mlp_large":
            inputs = {"INPUT0": rng.standard_normal((n, 128)).astype(np.float32)}
        elif model == "mixed":
            inputs = {
                "A": rng.standard_normal((n, 4)).astype(np.float32),
                "B": rng.integers(-50, 50, (n, 4)).astype(np.int64),
                "C": rng.standard_normal((n, 2)).astype(np.float16),
            }
        else:
            inputs = {"TEXT": np.array([f"req{i}-item{j}".encode() for j in range(n)], dtype=np.object_)}
        out.append(inputs)
    return out


def infer(client, model, inputs):
    triton_inputs = []
    for name, value in inputs.items():
        dtype = {np.float32: "FP32", np.int64: "INT64", np.float16: "FP16", np.object_: "BYTES"}[value.dtype.type]
        i = httpclient.InferInput(name, list(value.shape), dtype)
        i.set_data_from_numpy(value, binary_data=True)
        triton_inputs.append(i)
    result = client.infer(model, triton_inputs)
    return {o["name"]: result.as_numpy(o["name"]) for o in result.get_response()["outputs"]}


def grpc_extra_map(model_stats, field_number):
    """One of ferroserve's own ModelStatistics maps (`batch_reasons`, field 1000; `success_latency_buckets`, 1001)
    read from the message's unknown fields: each entry is a length-delimited MapEntry of key (field 1, a string or
    a varint) and value (field 2, varint)."""
    from google.protobuf.unknown_fields import UnknownFieldSet

    def varint(data, i):
        shift = value = 0
        while True:
            b = data[i]
            value |= (b & 0x7F) << shift
            i, shift = i + 1, shift + 7
            if not b & 0x80:
                return value, i

    entries = {}
    for field in UnknownFieldSet(model_stats):
        if field.field_number != field_number:
            continue
        entry = field.data if isinstance(field.data, bytes) else bytes(field.data)
        i, key, value = 0, None, 0
        while i < len(entry):
            tag, i = varint(entry, i)
            if tag == 0x0A:
                n, i = varint(entry, i)
                key, i = entry[i:i + n].decode(), i + n
            elif tag == 0x08:
                key, i = varint(entry, i)
            else:
                value, i = varint(entry, i)
        entries[key] = value
    return entries


@pytest.mark.parametrize("model", ["mlp", "mlp_large", "mixed", "strings"])
def test_output_is_identical_alone_and_in_a_batch(batching_server, model):
    rng = np.random.default_rng(42)
    requests = requests_for(model, rng)
    client = httpclient.InferenceServerClient(batching_server.http_addr, concurrency=len(requests))
    alone = [infer(client, model, r) for r in requests]
    with concurrent.futures.ThreadPoolExecutor(len(requests)) as pool:
        together = list(pool.map(lambda r: infer(httpclient.InferenceServerClient(batching_server.http_addr), model, r), requests))
    for a, b in zip(alone, together):
        assert a.keys() == b.keys()
        for name in a:
            assert np.array_equal(a[name], b[name]), (model, name, a[name], b[name])
    stats = client.get_inference_statistics(model)["model_stats"][0]
    sizes = [int(b["batch_size"]) for b in stats["batch_stats"]]
    assert max(sizes) > 3, f"requests were not batched: batch sizes {sizes}"
    client.close()


def test_full_queue_is_refused_over_http_and_grpc(batching_server):
    x = np.zeros((1, 16), dtype=np.float32)

    def http_call(_):
        c = httpclient.InferenceServerClient(batching_server.http_addr)
        i = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        i.set_data_from_numpy(x)
        try:
            c.infer("tiny_queue", [i])
            return 200
        except InferenceServerException as e:
            return int(e.status()) if e.status() and e.status().isdigit() else e.status()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        codes = list(pool.map(http_call, range(10)))
    assert codes.count(200) >= 2 and 429 in codes, codes
    assert set(codes) <= {200, 429}, codes

    def grpc_call(_):
        c = grpcclient.InferenceServerClient(batching_server.grpc_addr)
        i = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        i.set_data_from_numpy(x)
        try:
            c.infer("tiny_queue", [i])
            return "OK"
        except InferenceServerException as e:
            return e.status()

    with concurrent.futures.ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(grpc_call, range(10)))
    assert "StatusCode.RESOURCE_EXHAUSTED" in statuses, statuses


def test_queue_timeout(batching_server):
    client = httpclient.InferenceServerClient(batching_server.http_addr)
    i = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    i.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        client.infer("timeouts", [i])
    assert err.value.status() == "504"
    # As in Triton's queue policy, a request's own `timeout` parameter (microseconds) shortens the default where
    # the policy allows overrides, never lengthens it, and is ignored elsewhere.
    with pytest.raises(InferenceServerException) as err:
        client.infer("overridable", [i], timeout=1000)
    assert err.value.status() == "504"
    assert client.infer("overridable", [i], timeout=5_000_000).as_numpy("OUTPUT0").shape == (1, 4)
    with pytest.raises(InferenceServerException) as err:
        client.infer("timeouts", [i], timeout=900_000_000)
    assert err.value.status() == "504"
    assert client.infer("mlp", [i], timeout=1000).as_numpy("OUTPUT0").shape == (1, 4)
    g = grpcclient.InferenceServerClient(batching_server.grpc_addr)
    gi = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
    gi.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    with pytest.raises(InferenceServerException) as err:
        g.infer("timeouts", [gi])
    assert err.value.status() == "StatusCode.DEADLINE_EXCEEDED"


def test_bad_priority_is_rejected(batching_server):
    client = httpclient.InferenceServerClient(batching_server.http_addr)
    i = httpclient.InferInput("INPUT0", [1, 16], "FP32")
    i.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
    # Models without priority levels ignore the parameter, as Triton does.
    assert client.infer("mlp", [i], priority=3).as_numpy("OUTPUT0").shape == (1, 4)


def test_the_adaptive_window_does_not_hold_a_lone_request(tmp_path):
    """With the default (adaptive) window, a 200 ms `max_queue_delay` is an upper bound: sequential requests run
    at once (the model is idle and nothing else is arriving), and the statistics say why each batch ran; the same
    config with `batch_window: fixed` waits out the window, as Triton does; a misspelled window fails the load."""
    import time

    import urllib.request

    for name, extra in (("adaptive", ""), ("fixed", FIXED),
                        ("typo", 'parameters { key: "batch_window" value: { string_value: "sometimes" } }\n')):
        os.makedirs(tmp_path / name / "1")
        shutil.copy(os.path.join(REPOSITORY, "mlp", "1", "model.onnx"), tmp_path / name / "1" / "model.onnx")
        (tmp_path / name / "config.pbtxt").write_text(
            "max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 200000 }\n" + extra)
    s = Server(repository=str(tmp_path), wait_ready=False)
    try:
        client = httpclient.InferenceServerClient(s.http_addr)
        for _ in range(100):
            if client.is_model_ready("adaptive") and client.is_model_ready("fixed"):
                break
            time.sleep(0.1)
        x = np.ones((1, 16), dtype=np.float32)
        took = {}
        for name in ("adaptive", "fixed"):
            start = time.perf_counter()
            for _ in range(3):
                infer(client, name, {"INPUT0": x})
            took[name] = (time.perf_counter() - start) / 3
        assert took["adaptive"] < 0.1 < 0.2 <= took["fixed"] + 0.01, took  # the window is 200 ms
        stats = client.get_inference_statistics("adaptive")["model_stats"][0]
        assert stats["batch_reasons"]["adaptive"] == 3 and stats["batch_reasons"]["window"] == 0
        fixed = client.get_inference_statistics("fixed")["model_stats"][0]
        assert fixed["batch_reasons"]["window"] == 3
        # Latency inside the server, bucketed for percentiles: the fixed window's three requests each waited
        # 200 ms; the adaptive ones none. Buckets are [exclusive upper bound in ns, count], about 6 % wide.
        for model_stats, low, high in ((stats, 0, 100e6), (fixed, 200e6, 2e9)):
            buckets = model_stats["success_latency_buckets"]
            assert sum(n for _, n in buckets) == 3, buckets
            assert all(low < upper <= high for upper, _ in buckets), buckets
            assert [u for u, _ in buckets] == sorted(u for u, _ in buckets), buckets
        # gRPC carries the same in ModelStatistics fields 1000 and 1001 (maps tritonclient skips as unknown).
        gclient = grpcclient.InferenceServerClient(s.grpc_addr)
        for name, reason, http_stats in (("adaptive", "adaptive", stats), ("fixed", "window", fixed)):
            model_stats = gclient.get_inference_statistics(name).model_stats[0]
            assert grpc_extra_map(model_stats, 1000)[reason] == 3
            assert grpc_extra_map(model_stats, 1001) == dict(http_stats["success_latency_buckets"])
        gclient.close()
        with urllib.request.urlopen(s.http_url + "/metrics") as r:
            text = r.read().decode()
        assert 'ferroserve_batches_total{model="adaptive",version="1",reason="adaptive"} 3' in text
        index = {m["name"]: m for m in client.get_model_repository_index()}
        assert index["typo"]["state"] == "UNAVAILABLE" and "batch_window" in index["typo"]["reason"]
        client.close()
    finally:
        s.stop()
