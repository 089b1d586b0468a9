"""Overload: offered load far past capacity, with a mix of small requests and 64 MiB requests, against a release
ferroserve with its default in-flight memory budget (--max-inflight-bytes, 1 GiB). Reports offered against served
rate, the refusals (429), the latency of admitted requests, the server's peak RSS, and how fast it serves again once
the load stops.

    .venv/bin/python benches/overload.py [--seconds 60] [--factor 10] [--budget-mib 1024]

Small requests: the MLP, batch 1, HTTP binary, from a pool of threads at a fixed rate. Large requests: `strings`
with one 64 MiB BYTES element (HTTP binary), offered open-loop at FACTOR times the rate the server sustains for
them alone (measured first, closed loop): each arrival is sent on a thread and connection of its own, so slow
answers do not hold back the offer. Needs target/release/ferroserve (benches/server.sh's build_release).
"""
import argparse
import http.client
import json
import os
import re
import struct
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MIB = 1 << 20


def body_for(model_input, datatype, shape, raw):
    header = json.dumps({"inputs": [{"name": model_input, "datatype": datatype, "shape": shape,
                                     "parameters": {"binary_data_size": len(raw)}}],
                         "parameters": {"binary_data_output": True}}).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


SMALL = body_for("INPUT0", "FP32", [1, 16], struct.pack("<16f", *([0.5] * 16)))
LARGE_SIZE = 64 * MIB
LARGE = body_for("TEXT", "BYTES", [1, 1], struct.pack("<I", LARGE_SIZE) + b"x" * LARGE_SIZE)


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"VmRSS:\s+(\d+)", f.read()).group(1)) / 1024


class Client:
    def __init__(self, addr):
        self.host, self.port = addr.split(":")
        self.conn = None

    def post(self, path, body_headers):
        body, headers = body_headers
        for attempt in range(2):
            if self.conn is None:
                self.conn = http.client.HTTPConnection(self.host, int(self.port), timeout=120)
            try:
                self.conn.request("POST", path, body=body, headers=headers)
                response = self.conn.getresponse()
                response.read()
                return response.status
            except (ConnectionError, http.client.HTTPException, OSError):
                self.conn.close()
                self.conn = None
                if attempt:
                    return -1
        return -1


def percentile(values, p):
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p / 100 * len(values)))]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--factor", type=float, default=10)
    parser.add_argument("--budget-mib", type=int, default=1024)
    parser.add_argument("--small-rate", type=float, default=200)
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "ferroserve"))
    args = parser.parse_args()

    binary = args.binary
    env = dict(os.environ, RUST_LOG="warn")
    proc = subprocess.Popen([binary, "--host", "127.0.0.1", "--http_port", "0", "--grpc_port", "0",
                             "--model-repository", os.path.join(ROOT, "models", "repository"),
                             "--max-inflight-bytes", str(args.budget_mib * MIB)],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
    try:
        addr = re.search(r"http=(\S+)", proc.stdout.readline()).group(1)
        for _ in range(300):
            try:
                c = http.client.HTTPConnection(*addr.split(":"), timeout=2)
                c.request("GET", "/v2/health/ready")
                if c.getresponse().status == 200:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        idle_rss = rss_mib(proc.pid)

        # Capacity for large requests alone: two closed-loop clients for a few seconds.
        done, stop = [], threading.Event()

        def closed_loop():
            client = Client(addr)
            while not stop.is_set():
                if client.post("/v2/models/strings/infer", LARGE) == 200:
                    done.append(time.monotonic())

        threads = [threading.Thread(target=closed_loop) for _ in range(2)]
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(8)
        stop.set()
        for t in threads:
            t.join()
        capacity = len(done) / (time.monotonic() - started)
        offered_rate = capacity * args.factor

        # Overload: large requests offered open-loop at FACTOR x capacity, small ones at a fixed rate.
        results = {"large": [], "small": []}  # (status, seconds)
        lock = threading.Lock()
        stop.clear()
        peak = [idle_rss]

        def watch_rss():
            while not stop.is_set():
                peak[0] = max(peak[0], rss_mib(proc.pid))
                time.sleep(0.1)

        def paced(kind, path, body, rate, workers):
            def worker(offset):
                client = Client(addr)
                interval = workers / rate
                next_at = time.monotonic() + offset * interval / workers
                while not stop.is_set():
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_at += interval
                    t0 = time.monotonic()
                    status = client.post(path, body)
                    with lock:
                        results[kind].append((status, time.monotonic() - t0))
            return [threading.Thread(target=worker, args=(i,)) for i in range(workers)]

        def open_loop(kind, path, body, rate, cap=512):
            """Arrivals at `rate` per second whatever the server does: each on a thread and connection of its
            own, so a slow answer never delays the next send (closed-loop workers would let the offer collapse
            to the served rate). Past `cap` sends in flight, an arrival is counted as not sent."""
            in_flight = threading.Semaphore(cap)

            def send():
                t0 = time.monotonic()
                client = Client(addr)
                status = client.post(path, body)
                if client.conn is not None:
                    client.conn.close()
                with lock:
                    results[kind].append((status, time.monotonic() - t0))
                in_flight.release()

            def dispatch():
                next_at = time.monotonic()
                while not stop.is_set():
                    delay = next_at - time.monotonic()
                    if delay > 0:
                        time.sleep(delay)
                    next_at += 1 / rate
                    if in_flight.acquire(blocking=False):
                        threading.Thread(target=send, daemon=True).start()
                    else:
                        with lock:
                            results[kind].append((0, 0.0))  # not sent: the generator's own limit
            return [threading.Thread(target=dispatch)]

        threads = [threading.Thread(target=watch_rss)]
        threads += open_loop("large", "/v2/models/strings/infer", LARGE, offered_rate)
        threads += paced("small", "/v2/models/mlp/infer", SMALL, args.small_rate, 8)
        started = time.monotonic()
        for t in threads:
            t.start()
        time.sleep(args.seconds)
        stop.set()
        for t in threads:
            t.join(timeout=180)
        elapsed = time.monotonic() - started
        # Sends still in flight finish (or fail) before the recovery check.
        deadline = time.monotonic() + 180
        while threading.active_count() > 1 and time.monotonic() < deadline:
            time.sleep(0.1)

        # Recovery: right after the flood, small and large requests are served again.
        t0 = time.monotonic()
        client = Client(addr)
        recovered = [client.post("/v2/models/mlp/infer", SMALL) for _ in range(20)]
        recovered += [client.post("/v2/models/strings/infer", LARGE) for _ in range(3)]
        recovery_s = time.monotonic() - t0

        def summary(kind):
            rows = results[kind]
            ok = [s for st, s in rows if st == 200]
            refused = sum(1 for st, _ in rows if st == 429)
            unsent = sum(1 for st, _ in rows if st == 0)
            other = sorted({st for st, _ in rows if st not in (0, 200, 429)})
            return (f"{kind:5s} offered {len(rows) / elapsed:7.1f}/s served {len(ok) / elapsed:7.1f}/s "
                    f"429 {refused:6d} unsent {unsent} other {other} admitted p50 {percentile(ok, 50) * 1000:8.1f} ms "
                    f"p99 {percentile(ok, 99) * 1000:8.1f} ms")

        print(f"large-request capacity alone: {capacity:.2f}/s; offered x{args.factor:g} for {elapsed:.0f} s; "
              f"budget {args.budget_mib} MiB")
        print(summary("large"))
        print(summary("small"))
        print(f"RSS idle {idle_rss:.0f} MiB, peak {peak[0]:.0f} MiB (budget {args.budget_mib} MiB)")
        print(f"after the load: {recovered.count(200)}/{len(recovered)} served in {recovery_s:.2f} s")
        return 0 if recovered.count(200) == len(recovered) else 1
    finally:
        proc.terminate()
        proc.wait(timeout=60)


if __name__ == "__main__":
    sys.exit(main())
