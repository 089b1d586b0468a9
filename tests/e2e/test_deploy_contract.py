"""The container contract, without Kubernetes: the binary started as KServe starts the ServingRuntime's container
(its args with `{{.Name}}` filled in, its env, `PORT`, the model in the model dir) accepts every argument,
reaches ready and serves; and the InferenceServices name that runtime and formats it declares."""
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

import numpy as np
import tritonclient.http as httpclient
import yaml

from server import REPOSITORY, ROOT, binary, onnxruntime_lib
from storage_servers import free_port

DEPLOY = os.path.join(ROOT, "deploy")


def manifests():
    docs = []
    for name in sorted(os.listdir(DEPLOY)):
        if name.endswith(".yaml"):
            with open(os.path.join(DEPLOY, name)) as f:
                docs.extend(d for d in yaml.safe_load_all(f) if d)
    return docs


def runtime():
    found = [d for d in manifests() if d["kind"] in ("ServingRuntime", "ClusterServingRuntime")]
    assert len(found) == 1
    return found[0]


def test_inference_services_use_the_runtime_and_a_format_it_declares():
    rt = runtime()
    formats = {f["name"] for f in rt["spec"]["supportedModelFormats"]}
    assert {"onnx", "pytorch", "safetensors"} <= formats
    services = [d for d in manifests() if d["kind"] == "InferenceService"]
    assert services
    for svc in services:
        model = svc["spec"]["predictor"]["model"]
        assert model["runtime"] == rt["metadata"]["name"]
        assert model["modelFormat"]["name"] in formats


def test_the_runtime_container_starts_as_kserve_starts_it():
    container = runtime()["spec"]["containers"][0]
    model_dir = tempfile.mkdtemp(prefix="ferroserve-mnt-models-")
    shutil.copy(os.path.join(REPOSITORY, "mlp", "1", "model.onnx"), model_dir)
    http_port, grpc_port = free_port(), free_port()
    # KServe passes the args as written; only what must differ on a shared test machine is replaced: the
    # model dir (KServe mounts /mnt/models) and fixed ports (PORT is what KServe sets for HTTP).
    args = []
    for arg in container["args"]:
        arg = arg.replace("{{.Name}}", "mlp-isvc")
        arg = re.sub(r"^--model_dir=.*", f"--model_dir={model_dir}", arg)
        arg = re.sub(r"^--grpc_port=.*", f"--grpc_port={grpc_port}", arg)
        arg = re.sub(r"^--cache-dir=.*", f"--cache-dir={model_dir}/.cache", arg)
        if not arg.startswith("--http_port="):
            args.append(arg)
    env = dict(os.environ, ORT_DYLIB_PATH=onnxruntime_lib(), PORT=str(http_port))
    env.update({e["name"]: e["value"] for e in container.get("env", [])})
    proc = subprocess.Popen([binary(), "--host", "127.0.0.1"] + args, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(300):
            if proc.poll() is not None:
                raise AssertionError(f"exited {proc.returncode} (2 = an argument was refused): {proc.stderr.read()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/v2/health/ready", timeout=2) as r:
                    if r.status == 200:
                        break
            except Exception:
                time.sleep(0.1)
        else:
            raise AssertionError("never ready")
        client = httpclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        inp = httpclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
        assert client.infer("mlp-isvc", [inp]).as_numpy("OUTPUT0").shape == (1, 4)
        probe = container["readinessProbe"]["httpGet"]["path"]
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{probe}") as r:
            assert r.status == 200
        annotations = runtime()["spec"].get("annotations", {})
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}{annotations['prometheus.kserve.io/path']}") as r:
            assert b"ferroserve_requests_total" in r.read()
        client.close()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        shutil.rmtree(model_dir)
    assert proc.returncode == 0
    # FERROSERVE_LOG_FORMAT=json from the manifest: every log line is a JSON object.
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines and all(l.startswith("{") for l in lines), err[:500]
