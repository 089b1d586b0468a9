"""Prometheus `/metrics` after real traffic over HTTP and gRPC: request counts by model, version, protocol and
code (refused requests included, unknown models under empty labels), engine histograms that agree with the
statistics extension, gauges, process metrics, and the separate --metrics-port listener."""
import re
import urllib.error
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from server import Server

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')


def scrape(url):
    with urllib.request.urlopen(url + "/metrics") as r:
        assert r.headers["Content-Type"].startswith("text/plain")
        text = r.read().decode()
    samples = {}
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        m = SAMPLE.match(line)
        assert m, line
        labels = tuple(sorted(re.findall(r'(\w+)="([^"]*)"', m.group(3) or "")))
        samples[(m.group(1), labels)] = float(m.group(4))
    return samples, text


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_after_traffic():
    s = Server("--metrics-port", "0")
    try:
        x = np.ones((2, 16), dtype=np.float32)
        http = httpclient.InferenceServerClient(s.http_addr)
        for _ in range(3):
            inp = httpclient.InferInput("INPUT0", [2, 16], "FP32")
            inp.set_data_from_numpy(x)
            http.infer("mlp", [inp])
        grpc = grpcclient.InferenceServerClient(s.grpc_addr)
        for _ in range(2):
            inp = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
            inp.set_data_from_numpy(x)
            grpc.infer("mlp", [inp])
        body = b'{"inputs":[{"name":"INPUT0","shape":[1,16],"datatype":"FP32","data":[' + b",".join([b"1"] * 16) + b"]}]}"
        for path, code in (("/v2/models/no-such-model/infer", 404), ("/v2/models/mlp/infer", 400)):
            data = body if code == 404 else b'{"inputs":[]}'
            try:
                urllib.request.urlopen(urllib.request.Request(s.http_url + path, data=data, method="POST"))
            except urllib.error.HTTPError as e:
                assert e.code == code
        samples, text = scrape(s.http_url)
        assert value(samples, "ferroserve_requests_total", model="mlp", version="1", protocol="http", code="200") == 3
        assert value(samples, "ferroserve_requests_total", model="mlp", version="1", protocol="grpc", code="OK") == 2
        assert value(samples, "ferroserve_requests_total", model="", version="", protocol="http", code="404") == 1
        assert value(samples, "ferroserve_requests_total", model="mlp", version="1", protocol="http", code="400") == 1
        assert "no-such-model" not in text, "unknown model names never become label values"
        assert value(samples, "ferroserve_request_duration_seconds_count", model="mlp", version="1", protocol="http") == 4
        assert value(samples, "ferroserve_payload_bytes_total", model="mlp", version="1", protocol="grpc",
                     direction="in") > 2 * 16 * 4
        # The engine's families agree with the statistics extension.
        stats = http.get_inference_statistics("mlp")["model_stats"][0]
        executions = stats["execution_count"]
        assert value(samples, "ferroserve_queue_duration_seconds_count", model="mlp", version="1") == \
            stats["inference_stats"]["queue"]["count"] == 5
        assert value(samples, "ferroserve_batch_size_count", model="mlp", version="1") == executions
        assert value(samples, "ferroserve_inferences_total", model="mlp", version="1") == stats["inference_count"] == 10
        assert value(samples, "ferroserve_compute_duration_seconds_bucket", model="mlp", version="1", le="+Inf") == executions
        assert value(samples, "ferroserve_inflight_requests", model="mlp", version="1") == 0
        assert value(samples, "ferroserve_queue_depth", model="mlp", version="1") == 0
        assert value(samples, "ferroserve_model_state", model="mlp", state="READY") == 1
        assert value(samples, "ferroserve_model_load_duration_seconds_count", model="mlp") == 1
        assert value(samples, "process_resident_memory_bytes") > 1e6
        assert value(samples, "process_cpu_seconds_total") > 0
        assert "# TYPE ferroserve_queue_duration_seconds histogram" in text
        metrics_addr = re.search(r"metrics=(\S+)", s.listening).group(1)
        separate, _ = scrape("http://" + metrics_addr)
        assert value(separate, "ferroserve_requests_total", model="mlp", version="1", protocol="grpc", code="OK") == 2
        http.close()
        grpc.close()
    finally:
        assert s.stop() == 0
