"""ferroserve-bench against another KServe v2 server: Seldon MLServer (from PyPI, set up by
scripts/setup-peers), over HTTP JSON and gRPC. MLServer has no binary tensor extension: the harness must say
so at once instead of measuring errors."""
import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request

import pytest

from server import ROOT

BENCH = os.environ.get("FERROSERVE_BENCH_BIN", os.path.join(ROOT, "target", "debug", "ferroserve-bench"))
MLSERVER = os.path.join(ROOT, ".venv-mlserver", "bin", "mlserver")
MODEL = os.path.join(os.path.dirname(os.path.abspath(__file__)), "mlserver_model")
QUICK = ["--warmup-secs", "0.2", "--window-secs", "0.4", "--max-windows", "3", "--stable-windows", "2",
         "--stability-percent", "50", "--no-progress"]


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def mlserver():
    if not os.path.exists(MLSERVER):
        pytest.fail("MLServer is not installed: run scripts/setup-peers")
    root = tempfile.mkdtemp()
    shutil.copytree(MODEL, root, dirs_exist_ok=True)
    http, grpc, metrics = free_port(), free_port(), free_port()
    with open(os.path.join(root, "settings.json"), "w") as f:
        json.dump({"host": "127.0.0.1", "http_port": http, "grpc_port": grpc, "metrics_port": metrics,
                   "parallel_workers": 0}, f)
    log = open(os.path.join(root, "mlserver.log"), "w")
    proc = subprocess.Popen([MLSERVER, "start", root], stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/v2/models/doubler/ready", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("MLServer did not start:\n" + open(log.name).read())
        time.sleep(0.2)
    yield {"http": f"127.0.0.1:{http}", "grpc": f"127.0.0.1:{grpc}"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.parametrize("protocol", ["http-json", "grpc"])
def test_bench_measures_mlserver(mlserver, protocol):
    d = tempfile.mkdtemp()
    addr = mlserver["http"] if protocol == "http-json" else mlserver["grpc"]
    out = subprocess.run([BENCH, "-m", "doubler", "-u", addr, "-i", protocol, "--concurrency", "1,2",
                          "--json", f"{d}/r.json", *QUICK], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    results = json.load(open(f"{d}/r.json"))["results"]
    assert len(results) == 2
    assert all(r["errors"] == 0 and r["throughput"] > 0 and r["p99_ms"] > 0 for r in results), results
    # MLServer has no statistics extension: no server-side figures, and no failure for lack of them.
    assert all(r["server"] is None for r in results), results


def test_bench_says_why_binary_requests_fail_on_mlserver(mlserver):
    out = subprocess.run([BENCH, "-m", "doubler", "-u", mlserver["http"], "-i", "http-binary", *QUICK],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "first request failed" in out.stderr and "binary_tensor_data" in out.stderr
