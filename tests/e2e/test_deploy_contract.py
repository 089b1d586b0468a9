"""The container contract, without Kubernetes: the binary started as KServe starts the ServingRuntime's container
(its args with `{{.Name}}` filled in, its env, `PORT`, the model in the model dir) accepts every argument,
reaches ready and serves; and the InferenceServices name that runtime and formats it declares."""
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
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


def http_port_argument(container):
    return next(int(a.split("=", 1)[1]) for a in container["args"] if a.startswith("--http_port="))


def test_one_port_named_h2c_carries_both_protocols():
    """Knative allows one container port; named h2c, it carries gRPC as well as REST (to ferroserve's HTTP port)."""
    container = runtime()["spec"]["containers"][0]
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("h2c", http_port_argument(container))]
    assert "grpc-v2" in runtime()["spec"]["protocolVersions"]
    assert container["readinessProbe"]["httpGet"]["port"] == http_port_argument(container)
    declaring = [d for d in manifests() if d["kind"] == "InferenceService" and d["spec"]["predictor"]["model"].get("ports")]
    assert declaring, "an example InferenceService spells the one port out"
    for svc in declaring:
        ports = svc["spec"]["predictor"]["model"]["ports"]
        assert [(p["name"], p["containerPort"]) for p in ports] == [("h2c", http_port_argument(container))], svc


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
        # gRPC on the same (h2c) port, as Knative forwards it.
        grpc = grpcclient.InferenceServerClient(f"127.0.0.1:{http_port}")
        inp = grpcclient.InferInput("INPUT0", [1, 16], "FP32")
        inp.set_data_from_numpy(np.ones((1, 16), dtype=np.float32))
        assert grpc.infer("mlp-isvc", [inp]).as_numpy("OUTPUT0").shape == (1, 4)
        grpc.close()
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
        shutil.rmtree(model_dir)
    assert proc.returncode == 0
    # FERROSERVE_LOG_FORMAT=json from the manifest: every log line is a JSON object.
    lines = [l for l in err.splitlines() if l.strip()]
    assert lines and all(l.startswith("{") for l in lines), err[:500]


def final_stage(path):
    """The instructions of a Dockerfile's last stage, as (INSTRUCTION, arguments) with continuations joined."""
    with open(path) as f:
        text = re.sub(r"\\\n", " ", f.read())
    lines = [l.strip() for l in text.splitlines() if l.strip() and not l.strip().startswith("#")]
    last_from = max(i for i, l in enumerate(lines) if l.upper().startswith("FROM "))
    return [tuple(l.split(None, 1)) for l in lines[last_from:]]


@pytest.mark.parametrize("dockerfile", ["Dockerfile", "Dockerfile.cuda"])
def test_the_images_run_ferroserve_as_pid_1_non_root_with_arguments_it_accepts(dockerfile):
    """No Docker engine here: the images are checked as written. The final stage runs as a numeric non-root user
    (runAsNonRoot needs a number), execs the binary directly (exec form: SIGTERM reaches ferroserve, which
    drains), points ORT_DYLIB_PATH and the binary at paths the stage copies in, and its default arguments are
    ones the binary accepts."""
    stage = final_stage(os.path.join(DEPLOY, dockerfile))
    instructions = [i for i, _ in stage]
    user = [a for i, a in stage if i == "USER"]
    assert user and re.fullmatch(r"[1-9]\d*(:\d+)?", user[-1]), user
    entrypoint = json.loads([a for i, a in stage if i == "ENTRYPOINT"][-1])
    cmd = json.loads([a for i, a in stage if i == "CMD"][-1])
    copied = [a.split()[-1] for i, a in stage if i == "COPY"]
    assert any(entrypoint[0].startswith(dest) for dest in copied), (entrypoint, copied)
    env = " ".join(a for i, a in stage if i == "ENV")
    ort = re.search(r"ORT_DYLIB_PATH=(\S+)", env).group(1)
    assert any(ort.startswith(dest) for dest in copied), (ort, copied)
    assert instructions.index("USER") > max(i for i, x in enumerate(instructions) if x in ("RUN", "COPY"))
    # The default arguments parse (`--help` after them: a refused argument exits 2 before help is printed).
    out = subprocess.run([binary()] + cmd + ["--help"], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    # The build installs the wheels the tests pin, so image and tests use the same native libraries.
    with open(os.path.join(DEPLOY, dockerfile)) as f:
        text = f.read()
    assert "tests/requirements.txt" in text and "tests/requirements-nodeps.txt" in text
