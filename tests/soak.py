"""Soak: mixed protocols, model reloads and traffic-policy changes for a while, asserting that nothing fails and
that the server's memory and file descriptors stay flat.

    .venv/bin/python tests/soak.py --minutes 60        # the long run (not part of CI)
    .venv/bin/python tests/soak.py --minutes 5         # CI's run (scripts/test)

Load: tritonclient HTTP (binary and JSON) and gRPC unary on the MLP, a long-lived gRPC stream on `add_version`,
REST over the shared port's gRPC; every few seconds `strings` is unloaded and loaded again and the MLP's traffic
split between its two versions changes. Checks, after a warm-up of a fifth of the run: zero failed requests,
the server's RSS in the last fifth within 5 % of its level after the warm-up (16 MiB for runs under 30 minutes), and its open file
descriptors within 8 of theirs. Uses FERROSERVE_BIN like the end-to-end tests.
"""
import argparse
import json
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from server import REPOSITORY, Server  # noqa: E402


def repository():
    root = tempfile.mkdtemp(prefix="ferroserve-soak-")
    for v in ("1", "2"):
        os.makedirs(os.path.join(root, "mlp", v))
        shutil.copy(os.path.join(REPOSITORY, "mlp", "1", "model.onnx"), os.path.join(root, "mlp", v, "model.onnx"))
    with open(os.path.join(root, "mlp", "config.pbtxt"), "w") as f:
        f.write("max_batch_size: 64\ndynamic_batching { }\nversion_policy: { all { } }\n")
    for name in ("strings", "add_version"):
        shutil.copytree(os.path.join(REPOSITORY, name), os.path.join(root, name))
    return root


def sample(pid):
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024
    return rss, len(os.listdir(f"/proc/{pid}/fd"))


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--minutes", type=float, default=60)
    args = parser.parse_args()
    seconds = args.minutes * 60
    root = repository()
    server = Server("--model-control-mode", "explicit", "--load-model", "*", repository=root)
    failures, counts, samples = [], {}, []
    lock = threading.Lock()
    stop = threading.Event()

    def count(kind):
        with lock:
            counts[kind] = counts.get(kind, 0) + 1

    def fail(kind, error):
        with lock:
            failures.append(f"{time.strftime('%H:%M:%S')} {kind}: {error}")

    x = np.random.default_rng(0).standard_normal((4, 16)).astype(np.float32)

    def http_worker(binary):
        client = httpclient.InferenceServerClient(server.http_addr)
        while not stop.is_set():
            try:
                inp = httpclient.InferInput("INPUT0", [4, 16], "FP32")
                inp.set_data_from_numpy(x, binary_data=binary)
                out = httpclient.InferRequestedOutput("OUTPUT0", binary_data=binary)
                assert client.infer("mlp", [inp], outputs=[out]).as_numpy("OUTPUT0").shape == (4, 4)
                count("http")
            except Exception as e:  # noqa: BLE001 (every failure is reported)
                fail("http", e)
                time.sleep(0.1)
        client.close()

    def grpc_worker(addr, kind):
        client = grpcclient.InferenceServerClient(addr)
        while not stop.is_set():
            try:
                inp = grpcclient.InferInput("INPUT0", [4, 16], "FP32")
                inp.set_data_from_numpy(x)
                assert client.infer("mlp", [inp]).as_numpy("OUTPUT0").shape == (4, 4)
                count(kind)
            except Exception as e:  # noqa: BLE001
                fail(kind, e)
                time.sleep(0.1)
        client.close()

    def stream_worker():
        client = grpcclient.InferenceServerClient(server.grpc_addr)
        results = queue.Queue()
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        i = 0
        while not stop.is_set():
            inp = grpcclient.InferInput("IN", [1], "INT32")
            inp.set_data_from_numpy(np.array([i], dtype=np.int32))
            client.async_stream_infer("add_version", [inp], model_version="1", request_id=str(i))
            try:
                result, error = results.get(timeout=30)
                if error is not None:
                    fail("stream", error)
                elif int(result.as_numpy("OUT")[0]) != i + 1:
                    fail("stream", f"wrong answer for {i}")
                else:
                    count("stream")
            except queue.Empty:
                fail("stream", "no answer in 30 s")
            i += 1
        client.stop_stream()
        client.close()

    def control_worker():
        client = httpclient.InferenceServerClient(server.http_addr)
        n = 0
        while not stop.wait(3):
            n += 1
            try:
                if n % 2:
                    client.unload_model("strings")
                    client.load_model("strings")
                    inp = httpclient.InferInput("TEXT", [1, 1], "BYTES")
                    inp.set_data_from_numpy(np.array([[b"soak"]], dtype=np.object_))
                    assert client.infer("strings", [inp]).as_numpy("UPPER")[0][0] in (b"SOAK", "SOAK")
                    count("reload")
                else:
                    split = {"split": {"1": n % 7 * 10 + 10, "2": 100 - (n % 7 * 10 + 10)}}
                    req = urllib.request.Request(f"{server.http_url}/v2/models/mlp/traffic", method="PUT",
                                                 data=json.dumps(split).encode())
                    with urllib.request.urlopen(req, timeout=30) as r:
                        assert r.status == 200
                    count("traffic")
            except Exception as e:  # noqa: BLE001
                fail("control", e)
        client.close()

    def sampler():
        while not stop.wait(1):
            samples.append((time.monotonic(),) + sample(server.proc.pid))

    threads = [threading.Thread(target=f, args=a) for f, a in (
        (http_worker, (True,)), (http_worker, (False,)), (grpc_worker, (server.grpc_addr, "grpc")),
        (grpc_worker, (server.http_addr, "grpc-on-http")), (stream_worker, ()), (control_worker, ()),
        (sampler, ()))]
    started = time.monotonic()
    for t in threads:
        t.start()
    try:
        time.sleep(seconds)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
        code = server.stop()
        shutil.rmtree(root)

    warm = [s for s in samples if s[0] - started >= seconds / 5]
    third = max(1, len(warm) // 5)
    early, late = warm[:third], warm[-third:]
    rss_early = sum(s[1] for s in early) / len(early)
    rss_late = sum(s[1] for s in late) / len(late)
    fds_early, fds_late = max(s[2] for s in early), max(s[2] for s in late)
    print(f"{args.minutes:g} min: requests {dict(sorted(counts.items()))}, failures {len(failures)}")
    print(f"RSS after warm-up {rss_early:.1f} MiB, at the end {rss_late:.1f} MiB "
          f"({(rss_late / rss_early - 1) * 100:+.1f} %); open fds {fds_early} -> {fds_late}; exit code {code}")
    for line in failures[:20]:
        print("  " + line)
    # Flat: within 5 % for a long run. A short run (CI's 5 minutes) is still inside the allocator's and the
    # reloaded sessions' warm-up, so it is allowed 16 MiB. (It was allowed 32 MiB while the metrics exporter kept
    # every histogram sample, about 240 bytes per request: a 5-minute CI run then grew 244 -> 260 MiB and passed.
    # Since the fix, a 60-minute run here stayed at 70-76 MiB.) A leak of 64 bytes per request (about 350,000
    # requests in 5 minutes: 21 MB) fails it.
    allowance = rss_early * 0.05 if args.minutes >= 30 else max(rss_early * 0.05, 16)
    ok = (not failures and code == 0 and all(counts.get(k, 0) > 0 for k in
                                              ("http", "grpc", "grpc-on-http", "stream", "reload", "traffic"))
          and rss_late <= rss_early + allowance and fds_late <= fds_early + 8)
    print("soak passed" if ok else "soak FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
