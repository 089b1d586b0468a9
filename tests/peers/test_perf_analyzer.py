"""NVIDIA perf_analyzer (the tritonclient 2.51 build, set up by scripts/setup-peers) against ferroserve over
HTTP and gRPC: it reads the model config and metadata, drives inference with its own random data for every
datatype, and reads the server-side statistics."""
import os
import re
import shutil
import subprocess
import tempfile

import pytest

from server import REPOSITORY, ROOT, Server

TOOLS = os.path.join(ROOT, ".tools", "perf_analyzer")
PERF_ANALYZER = os.path.join(TOOLS, "bin", "perf_analyzer")
# The bundled strings model takes a batch-only input; Triton serves such a model with a reshape.
STRINGS_TRITON = ('max_batch_size: 32\n'
                  'input [ { name: "TEXT" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
                  'output [ { name: "UPPER" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } },\n'
                  '         { name: "ECHO" data_type: TYPE_STRING dims: [ 1 ] reshape: { shape: [ ] } } ]\n'
                  'dynamic_batching { }\n')


@pytest.fixture(scope="module")
def pa_server():
    if not os.path.exists(PERF_ANALYZER):
        pytest.fail("perf_analyzer is not installed: run scripts/setup-peers")
    root = tempfile.mkdtemp()
    shutil.copytree(REPOSITORY, root, dirs_exist_ok=True)
    with open(os.path.join(root, "strings", "config.pbtxt"), "w") as f:
        f.write(STRINGS_TRITON)
    s = Server(repository=root)
    yield s
    assert s.stop() == 0, s.logs()
    shutil.rmtree(root)


def perf_analyzer(*args):
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(TOOLS, "lib"))
    out = subprocess.run([PERF_ANALYZER, "--measurement-interval", "300", "--stability-percentage", "90",
                          "--max-trials", "20", *args], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


def number(text, label):
    match = re.search(rf"{label}: ([0-9.]+)", text)
    assert match, f"no `{label}` in:\n{text}"
    return float(match.group(1))


@pytest.mark.parametrize("protocol", ["http", "grpc"])
@pytest.mark.parametrize("model,batch", [("mlp", 1), ("mixed", 4), ("strings", 2), ("mlp_large", 8)])
def test_perf_analyzer_runs_against_ferroserve(pa_server, protocol, model, batch):
    addr = pa_server.http_addr if protocol == "http" else pa_server.grpc_addr
    out = perf_analyzer("-m", model, "-u", addr, "-i", protocol, "-b", str(batch), "--concurrency-range", "2")
    assert number(out, "Throughput") > 0
    # Server-side statistics, read through the statistics extension.
    assert number(out, "Inference count") > 0 and number(out, "Execution count") > 0
    assert number(out, "Successful request count") > 0


def test_perf_analyzer_async_request_rate_over_grpc(pa_server):
    out = perf_analyzer("-m", "mlp", "-u", pa_server.grpc_addr, "-i", "grpc", "--async",
                        "--request-rate-range", "200")
    assert 100 < number(out, "Throughput") < 400


def test_perf_analyzer_streaming_over_grpc(pa_server):
    out = perf_analyzer("-m", "mlp", "-u", pa_server.grpc_addr, "-i", "grpc", "--streaming",
                        "--concurrency-range", "4")
    assert number(out, "Throughput") > 0 and number(out, "Inference count") > 0


def test_perf_analyzer_with_shared_memory_gets_the_reason(pa_server):
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(TOOLS, "lib"))
    out = subprocess.run([PERF_ANALYZER, "-m", "mlp", "-u", pa_server.grpc_addr, "-i", "grpc", "--shared-memory",
                          "system", "--concurrency-range", "1", "--measurement-interval", "300"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode != 0
    assert "no shared-memory extension" in out.stdout + out.stderr
