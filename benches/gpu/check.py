"""The GPU check (issue 19): runs on a machine with an NVIDIA GPU and no cargo or internet, from the bundle
`scripts/gpu-check --bundle` builds (a `ferroserve` and `ferroserve-bench` built with `--features cuda`).

It needs only the standard library and numpy, plus `nvidia-smi`. ONNX Runtime's CUDA execution provider comes
from `--ort-lib` (the `onnxruntime-gpu` wheel's `libonnxruntime.so`, with its provider libraries beside it);
without one the check says so and checks what the server must do then: refuse to place `KIND_GPU` instances,
never fall back to CPU.

Checks, each printed as PASS/FAIL/SKIP with its numbers, then a table (also written to `--out`):
  1. the server finds every GPU `nvidia-smi` lists, by UUID;
  2. `/metrics` reports each GPU's memory as `nvidia-smi` does, and its utilisation;
  3. placement: KIND_GPU, KIND_AUTO and no instance_group go to the GPU (KIND_GPU with `gpus` as listed);
     `--gpus none` puts AUTO on CPU and refuses KIND_GPU with the reason;
  4. outputs on the GPU match the committed numpy references (mlp, mlp_large);
  5. served rows/s at request batch 1, 8, 32 and 128 (c=8 clients) beside raw in-process ONNX Runtime CUDA rows/s
     at the same batch, where Python's onnxruntime has the CUDA provider;
  6. 1, 2 and 4 instances of mlp_large on one GPU (c=32): rows/s and the gain over one instance;
  7. GPU memory per instance: NVML's used memory before and after loading each instance count.
"""
import argparse
import csv
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
REPOSITORY = os.path.join(ROOT, "models", "repository")
REFERENCES = os.path.join(ROOT, "models", "reference")
RESULTS = []


def report(name, ok, detail):
    state = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
    RESULTS.append((state, name, detail))
    print(f"[{state}] {name}: {detail}", flush=True)


def nvidia_smi():
    """[(index, uuid, name, total MiB)] as nvidia-smi lists them."""
    out = subprocess.run(
        ["nvidia-smi", "--query-gpu=index,uuid,name,memory.total", "--format=csv,noheader,nounits"],
        capture_output=True, text=True, check=True).stdout
    return [tuple(f.strip() for f in line.split(",")) for line in out.strip().splitlines()]


def repository_with(groups, models=("mlp", "mlp_large")):
    """A repository holding each model of `models` once per entry of `groups` ({suffix: instance_group text})."""
    root = tempfile.mkdtemp(prefix="gpu-check-")
    for model in models:
        with open(os.path.join(REPOSITORY, model, "config.pbtxt")) as f:
            base = "\n".join(l for l in f.read().splitlines() if not l.startswith(("name:", "instance_group")))
        for suffix, group in groups.items():
            name = f"{model}_{suffix}"
            os.makedirs(os.path.join(root, name, "1"))
            shutil.copy(os.path.join(REPOSITORY, model, "1", "model.onnx"), os.path.join(root, name, "1"))
            with open(os.path.join(root, name, "config.pbtxt"), "w") as f:
                f.write(f'name: "{name}"\n{base}\n{group}\n')
    return root


class Server:
    def __init__(self, binary, ort_lib, repository, *args):
        self.log = tempfile.NamedTemporaryFile(prefix="ferroserve-gpu-", suffix=".log", delete=False)
        env = dict(os.environ, ORT_DYLIB_PATH=ort_lib, RUST_LOG="info,ort=warn")
        cmd = [binary, "--host", "127.0.0.1", "--http_port", "0", "--grpc_port", "0",
               "--model-repository", repository, *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.log, env=env, text=True)
        line = self.proc.stdout.readline()
        match = re.search(r"http=(\S+) grpc=(\S+)", line)
        if not match:
            raise RuntimeError(f"server did not start: {line!r}\n{self.logs()}")
        self.http, self.grpc = match.group(1), match.group(2)

    def logs(self):
        with open(self.log.name) as f:
            return f.read()

    def get(self, path):
        with urllib.request.urlopen(f"http://{self.http}{path}", timeout=30) as r:
            return r.read().decode()

    def index(self, timeout=120):
        deadline = time.time() + timeout
        while True:
            req = urllib.request.Request(f"http://{self.http}/v2/repository/index", data=b"{}", method="POST")
            rows = json.loads(urllib.request.urlopen(req, timeout=30).read())
            if all(r.get("state") in ("READY", "UNAVAILABLE") for r in rows) or time.time() > deadline:
                return {r["name"]: r for r in rows}
            time.sleep(0.2)

    def infer(self, model, x):
        body = json.dumps({"inputs": [{"name": "INPUT0", "shape": list(x.shape), "datatype": "FP32",
                                       "data": x.ravel().tolist()}]}).encode()
        req = urllib.request.Request(f"http://{self.http}/v2/models/{model}/infer", data=body,
                                     headers={"content-type": "application/json"})
        out = json.loads(urllib.request.urlopen(req, timeout=60).read())["outputs"][0]
        return np.array(out["data"], dtype=np.float32).reshape(out["shape"])

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def gpu_metrics(server):
    """{(family, uuid): value} of the ferroserve_gpu_ families."""
    found = {}
    for line in server.get("/metrics").splitlines():
        m = re.match(r'(ferroserve_gpu_\w+)\{gpu="(\d+)",uuid="([^"]+)"\} (\S+)', line)
        if m:
            found[(m.group(1), m.group(3))] = float(m.group(4))
    return found


def bench(bench_binary, server, model, batch, concurrency, seconds=3):
    """Served rows/s and the server's mean batch, from ferroserve-bench over gRPC."""
    out = tempfile.NamedTemporaryFile(suffix=".csv", delete=False).name
    subprocess.run([bench_binary, "-m", model, "-u", server.grpc, "-i", "grpc", "-b", str(batch),
                    "--concurrency", str(concurrency), "--warmup-secs", "1", "--window-secs", str(seconds),
                    "--max-windows", "3", "--no-progress", "--csv", out], check=True, capture_output=True,
                   text=True, timeout=120)
    with open(out) as f:
        row = list(csv.DictReader(f))[-1]
    return float(row["infer_per_sec"]) * batch, row.get("server_batch", "")


def raw_ort_rows_per_sec(model, batch, seconds=3):
    """In-process ONNX Runtime CUDA rows/s (Python's onnxruntime), or None where it has no CUDA provider."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return None
    session = ort.InferenceSession(os.path.join(REPOSITORY, model, "1", "model.onnx"),
                                   providers=["CUDAExecutionProvider"])
    width = session.get_inputs()[0].shape[1]
    x = np.random.default_rng(0).standard_normal((batch, width)).astype(np.float32)
    for _ in range(20):
        session.run(None, {"INPUT0": x})
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        session.run(None, {"INPUT0": x})
        runs += 1
    return runs * batch / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--binary", required=True)
    parser.add_argument("--bench", required=True, help="ferroserve-bench")
    parser.add_argument("--ort-lib", required=True, help="libonnxruntime.so, from onnxruntime-gpu for CUDA")
    parser.add_argument("--out", default=None, help="folder for the table and the logs")
    args = parser.parse_args()

    try:
        gpus = nvidia_smi()
    except (OSError, subprocess.CalledProcessError) as e:
        print(f"no GPU here ({e}): nothing to check", flush=True)
        return 2
    print(f"nvidia-smi: {gpus}", flush=True)

    groups = {"gpu": "instance_group [ { count: 1, kind: KIND_GPU } ]",
              "gpu0": "instance_group [ { count: 1, kind: KIND_GPU, gpus: [ 0 ] } ]",
              "auto": "instance_group [ { count: 1, kind: KIND_AUTO } ]",
              "unsaid": "",
              "cpu": "instance_group [ { count: 1, kind: KIND_CPU } ]"}
    root = repository_with(groups)
    server = Server(args.binary, args.ort_lib, root)
    try:
        logs = server.logs()
        seen = [uuid for _, uuid, _, _ in gpus if uuid in logs]
        report("1 discovery", len(seen) == len(gpus), f"{len(seen)} of {len(gpus)} GPUs logged by UUID")

        metrics = gpu_metrics(server)
        worst = 0.0
        for _, uuid, _, total_mib in gpus:
            total = metrics.get(("ferroserve_gpu_memory_total_bytes", uuid))
            worst = max(worst, abs((total or 0) - float(total_mib) * 2**20) / (float(total_mib) * 2**20))
        has_util = all(("ferroserve_gpu_utilization_ratio", g[1]) in metrics for g in gpus)
        report("2 metrics", worst < 0.01 and has_util, f"memory total within {worst:.2%} of nvidia-smi; "
               f"utilization {'present' if has_util else 'MISSING'}")

        index = server.index()
        on_gpu = [n for n in index if not n.endswith("_cpu")]
        ready = [n for n in on_gpu if index[n]["state"] == "READY"]
        ort_cuda = len(ready) == len(on_gpu)
        if ort_cuda:
            configs = {n: json.loads(server.get(f"/v2/models/{n}/config"))["instance_group"][0] for n in on_gpu}
            placed = all(c["kind"] == "KIND_GPU" and c["gpus"] for c in configs.values())
            report("3 placement", placed, f"{len(on_gpu)} GPU/AUTO/unsaid groups READY as KIND_GPU: "
                   + ", ".join(f"{n}={c['gpus']}" for n, c in sorted(configs.items())))
        else:
            reasons = {n: index[n].get("reason", "") for n in on_gpu if index[n]["state"] != "READY"}
            refused = all("CUDA" in r or "cuda" in r for r in reasons.values())
            report("3 placement", None if refused else False,
                   "ONNX Runtime at --ort-lib has no CUDA provider: GPU groups refused with the reason, "
                   f"none fell back to CPU ({len(reasons)} refused; e.g. {next(iter(reasons.values()), '')!r})")
        report("3 CPU group", index.get("mlp_cpu", {}).get("state") == "READY", "KIND_CPU serves on CPU")

        if ort_cuda:
            worst = 0.0
            for model in ("mlp", "mlp_large"):
                ref = np.load(os.path.join(REFERENCES, f"{model}.npz"))
                got = server.infer(f"{model}_gpu", ref["INPUT0"])
                worst = max(worst, float(np.linalg.norm(got - ref["OUTPUT0"]) / np.linalg.norm(ref["OUTPUT0"])))
            # ONNX Runtime's CUDA provider may use TF32 matrix units: about 3e-4 relative.
            report("4 outputs", worst < 2e-3, f"worst ||gpu - numpy|| / ||numpy|| = {worst:.2e} (bound 2e-3)")
            rows = []
            for batch in (1, 8, 32, 128):
                served, mean_batch = bench(args.bench, server, "mlp_large_gpu", batch, 8)
                raw = raw_ort_rows_per_sec("mlp_large", batch)
                ratio = f"{served / raw:.2f}" if raw else "n/a"
                rows.append((batch, served, raw, ratio, mean_batch))
                report(f"5 served vs raw, batch {batch}", None if raw is None else served >= 0.9 * raw,
                       f"served {served:,.0f} rows/s (server batch {mean_batch}), raw "
                       f"{'n/a' if raw is None else f'{raw:,.0f}'} rows/s, ratio {ratio}")
        else:
            report("4 outputs", None, "needs ONNX Runtime's CUDA provider")
    finally:
        server.stop()
        shutil.rmtree(root)

    if ort_cuda:
        # Instances: one repository per count, so NVML's used memory before and after tells the cost.
        gains = {}
        for count in (1, 2, 4):
            root = repository_with({"n": f"instance_group [ {{ count: {count}, kind: KIND_GPU }} ]"},
                                   models=("mlp_large",))
            server = Server(args.binary, args.ort_lib, root, "--model-control-mode", "explicit")
            try:
                before = sum(v for (f, _), v in gpu_metrics(server).items() if f == "ferroserve_gpu_memory_used_bytes")
                urllib.request.urlopen(urllib.request.Request(
                    f"http://{server.http}/v2/repository/models/mlp_large_n/load", data=b"{}", method="POST"),
                    timeout=300)
                after = sum(v for (f, _), v in gpu_metrics(server).items() if f == "ferroserve_gpu_memory_used_bytes")
                served, mean_batch = bench(args.bench, server, "mlp_large_n", 1, 32)
                gains[count] = served
                report(f"6 {count} instance(s)", True,
                       f"{served:,.0f} rows/s at c=32 (server batch {mean_batch}), x{served / gains[1]:.2f} of one; "
                       f"GPU memory {(after - before) / count / 2**20:,.0f} MiB per instance")
            finally:
                server.stop()
                shutil.rmtree(root)
        report("6 two instances >= 1.5x one", gains[2] >= 1.5 * gains[1], f"x{gains[2] / gains[1]:.2f}")

    lines = [f"{state:4}  {name}: {detail}" for state, name, detail in RESULTS]
    print("\n".join(["", "== GPU check", *lines]), flush=True)
    if args.out:
        os.makedirs(args.out, exist_ok=True)
        with open(os.path.join(args.out, "gpu-check.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
    return 1 if any(state == "FAIL" for state, _, _ in RESULTS) else 0


if __name__ == "__main__":
    sys.exit(main())
