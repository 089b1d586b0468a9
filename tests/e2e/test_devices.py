"""Where instances run, on a machine without a GPU (CI): `KIND_AUTO` and a config without `instance_group` run on
CPU, `KIND_GPU` fails its load with the reason (never a silent fall-back to CPU) while the other models serve,
`--gpus` naming a device that is not there stops the start, and each instance's busy time is a metric.

The same questions on a GPU are the GPU check's (scripts/gpu-check)."""
import json
import os
import re
import shutil
import tempfile
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from server import REPOSITORY, Server

HAS_GPU = os.path.exists("/dev/nvidiactl")
pytestmark = pytest.mark.skipif(HAS_GPU, reason="these check the answers of a machine without a GPU")

GROUPS = {
    "on_cpu": "instance_group [ { count: 1, kind: KIND_CPU } ]",
    "on_gpu": "instance_group [ { count: 1, kind: KIND_GPU } ]",
    "on_gpu_1": "instance_group [ { count: 1, kind: KIND_GPU, gpus: [ 1 ] } ]",
    "auto": "instance_group [ { count: 2, kind: KIND_AUTO } ]",
    "unsaid": "",
}


def repository_of_mlps():
    """The MLP under each of `GROUPS`'s instance groups."""
    root = tempfile.mkdtemp()
    with open(os.path.join(REPOSITORY, "mlp", "config.pbtxt")) as f:
        base = "\n".join(line for line in f.read().splitlines() if not line.startswith(("name:", "instance_group")))
    for name, group in GROUPS.items():
        os.makedirs(os.path.join(root, name, "1"))
        shutil.copy(os.path.join(REPOSITORY, "mlp", "1", "model.onnx"), os.path.join(root, name, "1", "model.onnx"))
        with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
            f.write(f'name: "{name}"\n{base}\n{group}\n')
    return root


def wait_for_models(client, names, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        index = {m["name"]: m for m in client.get_model_repository_index()}
        if all(index.get(n, {}).get("state") in ("READY", "UNAVAILABLE") for n in names):
            return index
        time.sleep(0.1)
    raise AssertionError(f"models still loading: {index}")


def infer(client, model):
    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("OUTPUT0")


@pytest.mark.parametrize("gpus, reason", [("all", "no CUDA driver on this machine"), ("none", "--gpus none")])
def test_gpu_groups_fail_their_load_with_the_reason_and_the_rest_serve_on_cpu(gpus, reason):
    root = repository_of_mlps()
    s = Server("--gpus", gpus, repository=root, wait_ready=False)
    try:
        client = httpclient.InferenceServerClient(s.http_addr)
        index = wait_for_models(client, GROUPS)
        for name in ("on_gpu", "on_gpu_1"):
            assert index[name]["state"] == "UNAVAILABLE", index[name]
            assert "asks for a GPU" in index[name]["reason"] and reason in index[name]["reason"], index[name]
            assert not client.is_model_ready(name)
        reference = infer(client, "on_cpu")
        for name in ("on_cpu", "auto", "unsaid"):
            assert index[name]["state"] == "READY", index[name]
            np.testing.assert_allclose(infer(client, name), reference, rtol=1e-6)
        assert not client.is_server_ready(), "a model that should serve does not"

        # KIND_AUTO is reported as what it became, on both protocols.
        config = client.get_model_config("auto")
        assert config["instance_group"][0]["kind"] == "KIND_CPU" and config["instance_group"][0]["count"] == 2
        assert client.get_model_config("unsaid")["instance_group"][0]["kind"] == "KIND_CPU"
        grpc = grpcclient.InferenceServerClient(s.grpc_addr)
        group = grpc.get_model_config("auto").config.instance_group[0]
        assert group.kind == grpcclient.model_config_pb2.ModelInstanceGroup.KIND_CPU and group.count == 2
        row = {m.name: m for m in grpc.get_model_repository_index().models}["on_gpu"]
        assert row.state == "UNAVAILABLE" and reason in row.reason
        grpc.close()
        client.close()
    finally:
        assert s.stop() == 0
        shutil.rmtree(root)


@pytest.mark.parametrize("gpus", ["0", "0,1"])
def test_gpus_naming_a_device_that_is_not_there_stops_the_start(gpus):
    with pytest.raises(RuntimeError) as failed:
        Server("--gpus", gpus)
    assert "--gpus names GPU 0, but no CUDA driver on this machine" in str(failed.value)


def test_a_malformed_gpus_flag_is_refused():
    with pytest.raises(RuntimeError) as failed:
        Server("--gpus", "first")
    assert "`first` is not `all`, `none` or a list of GPU ordinals" in str(failed.value)


def scrape(url):
    with urllib.request.urlopen(url + "/metrics") as r:
        return r.read().decode()


def busy_nanoseconds(text, model):
    """{(instance, device): nanoseconds} of `model`'s instances."""
    found = {}
    for line in text.splitlines():
        if line.startswith("ferroserve_instance_busy_nanoseconds_total{") and f'model="{model}"' in line:
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.split("}")[0]))
            found[(labels["instance"], labels["device"])] = float(line.rsplit(" ", 1)[1])
    return found


def test_each_instance_reports_its_busy_time_and_no_gpu_series_appear_without_a_gpu():
    root = repository_of_mlps()
    try:
        s = Server("--gpus", "none", repository=root, wait_ready=False)
        try:
            client = httpclient.InferenceServerClient(s.http_addr)
            wait_for_models(client, GROUPS)
            for _ in range(20):
                infer(client, "auto")
            busy = busy_nanoseconds(scrape(s.http_url), "auto")
            assert set(busy) == {("0", "cpu"), ("1", "cpu")}, busy
            assert sum(busy.values()) > 0
            stats = json.loads(urllib.request.urlopen(s.http_url + "/v2/models/auto/stats").read())
            compute_ns = sum(stats["model_stats"][0]["inference_stats"][k]["ns"]
                             for k in ("compute_input", "compute_infer", "compute_output"))
            # Busy time covers the whole execution, compute included.
            assert sum(busy.values()) >= compute_ns, (busy, compute_ns)
            text = scrape(s.http_url)
            assert "ferroserve_gpu_" not in text
            assert "# HELP ferroserve_instance_busy_nanoseconds_total" in text
            client.close()
        finally:
            assert s.stop() == 0
    finally:
        shutil.rmtree(root)
