"""NVIDIA perf_analyzer (the tritonclient 2.51 build, set up by scripts/setup-peers) against ferroserve over
HTTP and gRPC: it reads the model config and metadata, drives inference with its own random data for every
datatype, and reads the server-side statistics."""
import json
import os
import re
import subprocess
import urllib.request

import pytest

from server import ROOT

TOOLS = os.path.join(ROOT, ".tools", "perf_analyzer")
PERF_ANALYZER = os.path.join(TOOLS, "bin", "perf_analyzer")


@pytest.fixture(scope="module")
def pa_server(server):
    if not os.path.exists(PERF_ANALYZER):
        pytest.fail("perf_analyzer is not installed: run scripts/setup-peers")
    return server


def perf_analyzer(*args):
    # These runs check that perf_analyzer works against ferroserve, not how fast: a loose stability
    # criterion keeps a busy CI machine from failing them.
    env = dict(os.environ, LD_LIBRARY_PATH=os.path.join(TOOLS, "lib"))
    out = subprocess.run([PERF_ANALYZER, "--measurement-interval", "300", "--stability-percentage", "500",
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


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_perf_analyzer_with_system_shared_memory(pa_server, protocol):
    # perf_analyzer makes one region per input and per output (keys "/INPUT0_0_0", "/OUTPUT0"), registers them,
    # sends every tensor through them and unregisters all regions when done. mlp's output has fixed dims ([4]),
    # so perf_analyzer sizes the output region itself (batch x 16 bytes): `--output-shared-memory-size` is only
    # read for outputs of variable size.
    addr = pa_server.http_addr if protocol == "http" else pa_server.grpc_addr
    out = perf_analyzer("-m", "mlp", "-u", addr, "-i", protocol, "-b", "2", "--shared-memory", "system",
                        "--concurrency-range", "2")
    assert number(out, "Throughput") > 0
    assert number(out, "Inference count") > 0 and number(out, "Successful request count") > 0
    with urllib.request.urlopen(pa_server.http_url + "/v2/systemsharedmemory/status", timeout=10) as r:
        assert json.load(r) == []


def test_perf_analyzer_on_a_model_without_batching_given_a_shape(pa_server):
    out = perf_analyzer("-m", "add_version", "-u", pa_server.http_addr, "--shape", "IN:5", "--concurrency-range", "2")
    assert number(out, "Throughput") > 0
