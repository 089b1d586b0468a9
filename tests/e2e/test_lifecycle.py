"""Model lifecycle against the real binary: control modes, reloads under continuous load over HTTP and gRPC
with zero failed requests, load/unload storms, and health endpoints that agree at every moment."""
import json
import os
import shutil
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

from server import REPOSITORY, Server, binary, onnxruntime_lib


def copy_models(*names):
    root = tempfile.mkdtemp(prefix="ferroserve-lifecycle-")
    for name in names:
        shutil.copytree(os.path.join(REPOSITORY, name), os.path.join(root, name))
    return root


def instance_threads(pid, prefix):
    """Threads named after a version's instances (`fs-<model>:<version>-<n>`, cut to 15 chars by the kernel);
    threads an instance starts (ONNX Runtime's intra-op pool) inherit its name, so compare counts with a
    baseline taken after the first load."""
    names = []
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/comm") as f:
                name = f.read().strip()
        except FileNotFoundError:
            continue
        if name.startswith(prefix):
            names.append(name)
    return names



def health_status(addr, service=""):
    """grpc.health.v1.Health/Check by hand (no grpcio-health-checking needed): 1 SERVING, 2 NOT_SERVING."""
    channel = grpc.insecure_channel(addr)
    try:
        # HealthCheckRequest{service=1}; HealthCheckResponse{status=1 (enum)}.
        encoded = service.encode()
        request = (b"\x0a" + bytes([len(encoded)]) + encoded) if encoded else b""
        call = channel.unary_unary("/grpc.health.v1.Health/Check")
        reply = call(request, timeout=5)
        return reply[1] if len(reply) >= 2 else 0
    finally:
        channel.close()


def http_ready(url):
    try:
        with urllib.request.urlopen(url + "/v2/health/ready", timeout=5) as r:
            return r.status == 200
    except urllib.error.HTTPError:
        return False


def test_unreadable_repository_exits_instead_of_reporting_ready():
    out = subprocess.run(
        [binary(), "--host", "127.0.0.1", "--http_port", "0", "--grpc_port", "0",
         "--model-repository", "/does/not/exist"],
        capture_output=True, text=True, timeout=60,
        env=dict(os.environ, ORT_DYLIB_PATH=onnxruntime_lib()))
    assert out.returncode != 0
    assert "/does/not/exist" in out.stderr


def test_poll_mode_waits_for_an_unreadable_repository():
    root = tempfile.mkdtemp(prefix="ferroserve-poll-")
    repo = os.path.join(root, "repo")
    s = Server("--model-control-mode", "poll", "--repository-poll-secs", "1", repository=repo, wait_ready=False)
    try:
        time.sleep(1.5)
        assert s.proc.poll() is None, "poll mode stays up"
        assert not http_ready(s.http_url)
        assert health_status(s.grpc_addr) == 2
        shutil.copytree(os.path.join(REPOSITORY, "mlp"), os.path.join(repo, "mlp"))
        s.wait_ready(timeout=30)
        assert health_status(s.grpc_addr) == 1
        client = httpclient.InferenceServerClient(s.http_addr)
        index = client.get_model_repository_index()
        assert [m["name"] for m in index] == ["mlp"]
        # Load and unload belong to explicit mode, as in Triton.
        try:
            client.unload_model("mlp")
            raise AssertionError("poll mode must refuse an explicit unload")
        except InferenceServerException as e:
            assert "explicit" in str(e)
        client.close()
    finally:
        assert s.stop() == 0
        shutil.rmtree(root)


class Load:
    """Continuous inference on mlp over HTTP and gRPC from background threads; counts every failure."""

    def __init__(self, server):
        self.server, self.stop, self.ok, self.failures = server, threading.Event(), 0, []
        self.lock = threading.Lock()
        x = np.random.rand(2, 16).astype(np.float32)
        self.threads = [threading.Thread(target=self.http, args=(x,)), threading.Thread(target=self.grpc, args=(x,))]
        for t in self.threads:
            t.start()

    def record(self, fn):
        try:
            out = fn()
            assert out.shape == (2, 4)
            with self.lock:
                self.ok += 1
        except Exception as e:  # every failure is a test failure; keep going to count them
            with self.lock:
                self.failures.append(repr(e))

    def http(self, x):
        client = httpclient.InferenceServerClient(self.server.http_addr)
        inp = httpclient.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_data_from_numpy(x, binary_data=True)
        for _ in range(100000):
            if self.stop.is_set():
                break
            self.record(lambda: client.infer("mlp", [inp]).as_numpy("OUTPUT0"))
        client.close()

    def grpc(self, x):
        client = grpcclient.InferenceServerClient(self.server.grpc_addr)
        inp = grpcclient.InferInput("INPUT0", [2, 16], "FP32")
        inp.set_data_from_numpy(x)
        for _ in range(100000):
            if self.stop.is_set():
                break
            self.record(lambda: client.infer("mlp", [inp]).as_numpy("OUTPUT0"))
        client.close()

    def finish(self):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=60)
        return self.ok, self.failures


def test_ten_reloads_under_load_fail_no_request_and_keep_one_pool():
    root = copy_models("mlp")
    s = Server("--model-control-mode", "explicit", "--load-model", "mlp", repository=root)
    try:
        http = httpclient.InferenceServerClient(s.http_addr)
        grpc_client = grpcclient.InferenceServerClient(s.grpc_addr)
        baseline = len(instance_threads(s.proc.pid, "fs-mlp:1-"))
        assert baseline >= 1
        load = Load(s)
        model = os.path.join(root, "mlp", "1", "model.onnx")
        for i in range(10):
            # Touch the file so the reload really rebuilds the version (unchanged files are kept as they are).
            os.utime(model, (time.time() + i + 1, time.time() + i + 1))
            (http if i % 2 else grpc_client).load_model("mlp")
            assert http_ready(s.http_url) and http.is_server_ready() and grpc_client.is_server_ready()
            assert health_status(s.grpc_addr) == 1
            assert health_status(s.grpc_addr, "inference.GRPCInferenceService") == 1
        ok, failures = load.finish()
        assert failures == [], failures[:5]
        assert ok > 0
        assert len(instance_threads(s.proc.pid, "fs-mlp:1-")) == baseline
        stats = http.get_inference_statistics("mlp")["model_stats"][0]
        assert stats["version"] == "1"
        http.close()
        grpc_client.close()
    finally:
        assert s.stop() == 0
        shutil.rmtree(root)


def test_load_unload_storm_leaves_exactly_one_pool():
    root = copy_models("mlp", "strings")
    s = Server("--model-control-mode", "explicit", "--load-model", "strings", "--load-model", "mlp",
               repository=root)
    try:
        baseline = len(instance_threads(s.proc.pid, "fs-mlp:1-"))
        assert baseline >= 1
        errors = []

        def storm(i):
            client = httpclient.InferenceServerClient(s.http_addr)
            for j in range(6):
                try:
                    if (i + j) % 3 == 2:
                        client.unload_model("mlp")
                    else:
                        client.load_model("mlp")
                except Exception as e:
                    errors.append(repr(e))
            client.close()

        threads = [threading.Thread(target=storm, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert errors == [], errors[:3]
        client = grpcclient.InferenceServerClient(s.grpc_addr)
        client.load_model("mlp")
        assert len(instance_threads(s.proc.pid, "fs-mlp:1-")) == baseline
        assert client.is_model_ready("mlp") and client.is_server_ready()
        client.unload_model("mlp")
        assert instance_threads(s.proc.pid, "fs-mlp:1-") == [], "unload returns once the instances stopped"
        assert not client.is_model_ready("mlp")
        assert client.is_server_ready(), "an unloaded model does not hold readiness back"
        index = {m.name: m for m in client.get_model_repository_index().models}
        assert index["mlp"].state == "UNAVAILABLE" and index["mlp"].reason == "unloaded"
        client.close()
    finally:
        assert s.stop() == 0
        shutil.rmtree(root)


def test_failed_reload_keeps_serving_and_config_override():
    root = copy_models("mlp")
    s = Server("--model-control-mode", "explicit", "--load-model", "mlp", repository=root)
    try:
        baseline = len(instance_threads(s.proc.pid, "fs-mlp:1-"))
        client = httpclient.InferenceServerClient(s.http_addr)
        with open(os.path.join(root, "mlp", "config.pbtxt"), "a") as f:
            f.write("\nmax_batch_size: banana\n")
        try:
            client.load_model("mlp")
            raise AssertionError("a broken config must fail the reload")
        except InferenceServerException as e:
            assert "banana" in str(e)
        assert client.is_model_ready("mlp") and client.is_server_ready()
        inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.zeros((1, 16), dtype=np.float32))
        assert client.infer("mlp", [inp]).as_numpy("OUTPUT0").shape == (1, 4)
        row = [m for m in client.get_model_repository_index() if m["name"] == "mlp"][0]
        assert row["state"] == "READY" and "banana" in row["reason"]
        # Triton's config override replaces the broken file for this load.
        override = json.dumps({"name": "mlp", "max_batch_size": 8,
                               "instance_group": [{"count": 2, "kind": "KIND_CPU"}]})
        client.load_model("mlp", config=override)
        assert client.get_model_config("mlp")["max_batch_size"] == 8
        assert len(instance_threads(s.proc.pid, "fs-mlp:1-")) == 2 * baseline
        assert "reload failed" not in json.dumps(client.get_model_repository_index())
        client.close()
    finally:
        assert s.stop() == 0
        shutil.rmtree(root)


def test_health_turns_not_serving_on_sigterm():
    s = Server("--shutdown-grace-secs", "2")
    try:
        assert health_status(s.grpc_addr) == 1 and http_ready(s.http_url)
        assert health_status(s.grpc_addr, "mlp") == 1
        try:
            health_status(s.grpc_addr, "no-such-service")
            raise AssertionError("unknown services are NOT_FOUND")
        except grpc.RpcError as e:
            assert e.code() == grpc.StatusCode.NOT_FOUND
        s.proc.send_signal(15)
        time.sleep(0.5)
        assert not http_ready(s.http_url)
        assert health_status(s.grpc_addr) == 2
    finally:
        assert s.stop() == 0


def test_configs_that_would_start_unbounded_threads_fail_their_load():
    """A config may not ask for unbounded OS threads: instance_group count over 256, more than 1024 instances over
    all groups, or intra_op_thread_count over 256 (or not a number) fail the load with the reason, and the version
    already serving goes on."""
    root = copy_models("mlp")
    s = Server("--model-control-mode", "explicit", "--load-model", "mlp", repository=root)
    try:
        client = httpclient.InferenceServerClient(s.http_addr)
        bad = {
            "count 100000": {"instance_group": [{"count": 100000, "kind": "KIND_CPU"}]},
            "5 groups of 256": {"instance_group": [{"count": 256, "kind": "KIND_CPU"}] * 5},
            "1000000 threads": {"parameters": {"intra_op_thread_count": {"string_value": "1000000"}}},
            "threads: many": {"parameters": {"intra_op_thread_count": {"string_value": "many"}}},
        }
        expected = {"count 100000": "from 1 to 256", "5 groups of 256": "at most 1024",
                    "1000000 threads": "intra_op_thread_count", "threads: many": "intra_op_thread_count"}
        for case, config in bad.items():
            with pytest.raises(InferenceServerException) as err:
                client.load_model("mlp", config=json.dumps({"name": "mlp", "max_batch_size": 8, **config}))
            assert expected[case] in str(err.value), (case, str(err.value))
            assert client.is_model_ready("mlp"), case
        client.close()
    finally:
        assert s.stop() == 0
        shutil.rmtree(root)
