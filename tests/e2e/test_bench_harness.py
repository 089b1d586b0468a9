"""The load-test harness (ferroserve-bench) against the real server: every protocol, closed and open loop,
and its CSV / JSON / SVG outputs."""
import csv
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from server import REPOSITORY, ROOT, Server

BENCH = os.environ.get("FERROSERVE_BENCH_BIN", os.path.join(ROOT, "target", "debug", "ferroserve-bench"))
QUICK = ["--warmup-secs", "0.2", "--window-secs", "0.4", "--max-windows", "3", "--stable-windows", "2",
         "--stability-percent", "50", "--no-progress"]


def bench(*args):
    out = subprocess.run([BENCH, *args, *QUICK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


@pytest.mark.parametrize("protocol,port", [("http-json", "http"), ("http-binary", "http"), ("grpc", "grpc")])
def test_closed_loop_sweep(server, protocol, port):
    addr = server.http_addr if port == "http" else server.grpc_addr
    d = tempfile.mkdtemp()
    stdout = bench("-m", "mlp", "-u", addr, "-i", protocol, "--concurrency", "1:4:x2",
                   "--csv", f"{d}/r.csv", "--json", f"{d}/r.json", "--svg", f"{d}/r.svg")
    assert "infer/s" in stdout and "c=4" in stdout
    rows = list(csv.DictReader(open(f"{d}/r.csv")))
    assert [float(r["load"]) for r in rows] == [1, 2, 4]
    assert all(float(r["infer_per_sec"]) > 0 and r["errors"] == "0" for r in rows), rows
    doc = json.load(open(f"{d}/r.json"))
    assert doc["model"] == "mlp" and len(doc["results"]) == 3
    assert all(r["p99_ms"] >= r["p50_ms"] > 0 for r in doc["results"])
    # The server side, from ferroserve's statistics extension, as perf_analyzer's "Server:" section.
    for r in doc["results"]:
        assert r["server"]["requests"] > 0 and r["server"]["batch"] >= 1, r
        assert r["server"]["compute_us"] > 0 and r["server"]["queue_us"] >= 0, r
        # Latency percentiles inside the server, from its latency buckets: at most what the client saw.
        assert 0 < r["server"]["p50_us"] <= r["server"]["p99_us"], r
        assert r["server"]["p50_us"] <= r["p50_ms"] * 1000 * 1.07, r
    assert "items per execution" in stdout and "latency p50" in stdout
    assert all(float(r["server_batch"]) >= 1 and float(r["server_p99_us"]) > 0 for r in rows), rows
    svg = open(f"{d}/r.svg").read()
    assert svg.startswith("<svg") and "p99 latency" in svg and svg.count("<circle") == 6


def test_open_loop_poisson_with_input_file(server):
    d = tempfile.mkdtemp()
    with open(f"{d}/in.json", "w") as f:
        json.dump({"TEXT": ["alpha", "beta"]}, f)
    bench("-m", "strings", "-u", server.http_addr, "--request-rate", "100,200", "--distribution", "poisson",
          "-b", "2", "--input-data", f"{d}/in.json", "--json", f"{d}/r.json")
    doc = json.load(open(f"{d}/r.json"))
    rates = [r["throughput"] for r in doc["results"]]
    assert 50 < rates[0] < 150 and 120 < rates[1] < 300, rates
    assert all(r["errors"] == 0 for r in doc["results"])


def test_input_file_in_perf_analyzer_format(server):
    d = tempfile.mkdtemp()
    with open(f"{d}/in.json", "w") as f:
        json.dump({"data": [{"TEXT": {"content": ["alpha", "beta", "gamma"], "shape": [1]}},
                            {"TEXT": {"content": ["x", "y", "z"], "shape": [1]}}]}, f)
    out = subprocess.run([BENCH, "-m", "strings", "-u", server.http_addr, "-b", "3", "--concurrency", "1",
                          "--input-data", f"{d}/in.json", "--json", f"{d}/r.json", *QUICK],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "uses the first" in out.stderr
    assert json.load(open(f"{d}/r.json"))["results"][0]["errors"] == 0
    # Base64 content is named as unsupported rather than sent as something else.
    with open(f"{d}/b64.json", "w") as f:
        json.dump({"data": [{"TEXT": {"b64": "YWJj"}}]}, f)
    out = subprocess.run([BENCH, "-m", "strings", "-u", server.http_addr, "--input-data", f"{d}/b64.json", *QUICK],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "b64" in out.stderr


def test_a_request_the_server_refuses_fails_fast_with_its_reason(server):
    out = subprocess.run([BENCH, "-m", "mlp", "-u", server.http_addr, "-b", "999", "--concurrency", "1", *QUICK],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "first request failed" in out.stderr and "batch size 999" in out.stderr
    assert "Stack backtrace" not in out.stderr


def test_errors_under_load_are_counted_and_reported():
    # A queue of 2 behind a 200 ms batching window: the first request passes, most of a c=8 load gets 429.
    root = tempfile.mkdtemp()
    os.makedirs(os.path.join(root, "mlp", "1"))
    shutil.copy(os.path.join(REPOSITORY, "mlp", "1", "model.onnx"), os.path.join(root, "mlp", "1", "model.onnx"))
    with open(os.path.join(root, "mlp", "config.pbtxt"), "w") as f:
        f.write("max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 200000 "
                "default_queue_policy { max_queue_size: 2 } }\n"
                'parameters { key: "batch_window" value: { string_value: "fixed" } }\n')
    s = Server(repository=root)
    try:
        d = tempfile.mkdtemp()
        out = subprocess.run([BENCH, "-m", "mlp", "-u", s.http_addr, "--concurrency", "8", "--json", f"{d}/r.json",
                              *QUICK], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "requests failed" in out.stderr and "429" in out.stderr
        assert json.load(open(f"{d}/r.json"))["results"][0]["errors"] > 0
    finally:
        assert s.stop() == 0
        shutil.rmtree(root)


def test_unknown_model_fails_fast(server):
    out = subprocess.run([BENCH, "-m", "nope", "-u", server.http_addr, *QUICK], capture_output=True, text=True, timeout=60)
    assert out.returncode != 0 and "404" in out.stderr
