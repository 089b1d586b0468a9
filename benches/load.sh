#!/usr/bin/env bash
# A quick load figure on the MLP example, measured side by side in one run:
#   - ferroserve (release) over HTTP JSON with wrk, and over gRPC (raw contents) with h2load,
#     batch-1 requests at concurrency 1, 8 and 32;
#   - raw in-process ONNX Runtime (benches/src/bin/ort_throughput.rs) with 1 and 2 threads.
# Needs Debian's wrk and nghttp2-client (h2load): apt-get install -y wrk nghttp2-client
# DUR=seconds per point (default 10).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-10}
. benches/server.sh
build_release
out=$(mktemp -d)
.venv/bin/python benches/grpc_body.py "$out/grpc.bin"
start_server models/repository
trap 'kill $server 2>/dev/null || true; rm -rf "$out"' EXIT

echo "== ferroserve HTTP JSON (wrk), MLP batch 1"
for c in 1 8 32; do
  t=$(( c < 2 ? 1 : 2 ))
  printf 'c=%-3s ' "$c"
  wrk -t"$t" -c"$c" -d"${DUR}s" --latency -s benches/wrk-mlp.lua "http://$http/v2/models/mlp/infer" \
    | awk '/Requests\/sec/ {rps=$2} /50%/ {p50=$2} /99%/ {p99=$2} /Non-2xx/ {err=$NF} END {printf "%s infer/s  p50 %s  p99 %s  non-2xx %s\n", rps, p50, p99, (err==""?0:err)}'
done

echo "== ferroserve gRPC raw contents (h2load), MLP batch 1"
for c in 1 8 32; do
  printf 'c=%-3s ' "$c"
  h2load -c"$c" -m1 -D"$DUR" -d "$out/grpc.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$grpc/inference.GRPCInferenceService/ModelInfer" 2>/dev/null \
    | awk '/^finished in/ {rps=$4} /^requests:/ {ok=$8; err=$10} /time for request:/ {mean=$6} END {printf "%s infer/s  mean %s  succeeded %s errored %s\n", rps, mean, ok, err}'
done

echo "== no-op over the same transports at c=32 (server overhead ceiling)"
printf 'HTTP GET /v2/health/live      '
wrk -t2 -c32 -d"${DUR}s" "http://$http/v2/health/live" | awk '/Requests\/sec/ {printf "%s req/s\n", $2}'
printf '\0\0\0\0\0' > "$out/empty.bin"
printf 'gRPC ServerLive               '
h2load -c32 -m1 -D"$DUR" -d "$out/empty.bin" -H 'content-type: application/grpc' -H 'te: trailers' \
  "http://$grpc/inference.GRPCInferenceService/ServerLive" 2>/dev/null | awk '/^finished in/ {print $4, "req/s"}'

kill $server; wait $server 2>/dev/null || true
echo "== raw in-process ONNX Runtime, MLP batch 1"
target/release/ort_throughput --threads 1 --seconds "$DUR"
target/release/ort_throughput --threads 2 --seconds "$DUR"
