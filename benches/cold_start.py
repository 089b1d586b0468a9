"""Cold and warm start from a local S3 server, measured side by side with boto3 downloading the same object.

    scripts/setup && cargo build --release -p ferroserve && .venv/bin/python benches/cold_start.py

Builds a ~94 MB ONNX model (one 2048x11520 FP32 MatMul) in a temporary directory, uploads it to moto_server
on 127.0.0.1, then reports the medians of N runs of:
  boto3  - `download_file` of the model object (what KServe's Python storage initializer does),
  cold   - ferroserve process start to /v2/health/ready with an empty --cache-dir,
  warm   - the same with the cache kept (a restart: listing only, no download),
  local  - the same model served from a local directory: the floor, ONNX Runtime's own session creation,
and the ratios cold/boto3 (goal <= 1.0), warm/cold (goal <= 0.2), and the storage share of a warm restart,
(warm - local) / (cold - local): what the cache saves, without the session creation no cache can skip.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
from server import onnxruntime_lib  # noqa: E402
from storage_servers import BUCKET, Moto  # noqa: E402


def make_model(path, rows=2048, cols=11520):
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["INPUT0", "W"], ["OUTPUT0"])], "big",
        [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, [None, rows])],
        [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [None, cols])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    os.makedirs(os.path.dirname(path), exist_ok=True)
    onnx.save(model, path)


def time_to_ready(binary, moto, cache, repository=f"s3://{BUCKET}/repo"):
    start = time.perf_counter()
    env = dict(os.environ, ORT_DYLIB_PATH=onnxruntime_lib(), RUST_LOG="warn", **moto.env())
    proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--http_port", "0", "--grpc_port", "0",
                             "--model-repository", repository, "--cache-dir", cache],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        line = proc.stdout.readline()
        http = line.split("http=")[1].split()[0]
        for _ in range(60000):
            try:
                with urllib.request.urlopen(f"http://{http}/v2/health/ready", timeout=5) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except Exception:
                pass
            if proc.poll() is not None:
                raise RuntimeError(f"ferroserve exited with {proc.returncode}")
            time.sleep(0.005)
        raise RuntimeError("not ready")
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "ferroserve"))
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ferroserve-coldstart-")
    model = os.path.join(work, "repo", "big", "1", "model.onnx")
    make_model(model)
    size = os.path.getsize(model)
    moto = Moto()
    try:
        moto.s3.upload_file(model, BUCKET, "repo/big/1/model.onnx")
        boto, cold, warm, local = [], [], [], []
        for run in range(args.runs):
            target = os.path.join(work, f"boto-{run}.onnx")
            t = time.perf_counter()
            moto.s3.download_file(BUCKET, "repo/big/1/model.onnx", target)
            boto.append(time.perf_counter() - t)
            os.remove(target)
            cache = os.path.join(work, f"cache-{run}")
            cold.append(time_to_ready(args.binary, moto, cache))
            warm.append(time_to_ready(args.binary, moto, cache))
            local.append(time_to_ready(args.binary, moto, cache, repository=os.path.join(work, "repo")))
        b, c, w = statistics.median(boto), statistics.median(cold), statistics.median(warm)
        lo = statistics.median(local)
        print(f"model: {size / 1e6:.1f} MB, {args.runs} runs (medians)")
        print(f"boto3 download_file:        {b:.3f} s  ({size / b / 1e6:.0f} MB/s)")
        print(f"ferroserve cold start:      {c:.3f} s  (start to ready, empty cache)")
        print(f"ferroserve warm restart:    {w:.3f} s  (start to ready, cache kept)")
        print(f"local directory start:      {lo:.3f} s  (the floor: ONNX Runtime session creation)")
        print(f"cold / boto3 = {c / b:.2f}  (goal <= 1.0)")
        print(f"warm / cold  = {w / c:.2f}  (goal <= 0.2)")
        print(f"(warm - local) / (cold - local) = {max(w - lo, 0) / max(c - lo, 1e-9):.2f}  (storage share left)")
    finally:
        moto.stop()
        subprocess.run(["rm", "-rf", work])


if __name__ == "__main__":
    main()
