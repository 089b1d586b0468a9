#!/usr/bin/env bash
# Dynamic batching and server overhead, measured side by side in one run on this machine with ferroserve-bench
# and h2load (apt-get install -y nghttp2-client):
#   - batch-1 requests at concurrency 32 over HTTP binary, each MLP with dynamic batching on and off;
#   - p99 with a 1 ms batching window;
#   - gRPC ModelInfer against a no-op gRPC call (ServerLive) at concurrency 32, with h2load.
# DUR=seconds per h2load point (default 8).
set -euo pipefail
cd "$(dirname "$0")/.."
DUR=${DUR:-8}
. benches/server.sh
build_release
repo=$(mktemp -d)
for m in mlp mlp_large; do
  for variant in "$m" "${m}_nobatch" "${m}_window1ms"; do
    mkdir -p "$repo/$variant/1"
    cp "models/repository/$m/1/model.onnx" "$repo/$variant/1/"
  done
  printf 'max_batch_size: 64\ndynamic_batching { }\n' > "$repo/$m/config.pbtxt"
  printf 'max_batch_size: 64\n' > "$repo/${m}_nobatch/config.pbtxt"
  printf 'max_batch_size: 64\ndynamic_batching { max_queue_delay_microseconds: 1000 }\n' > "$repo/${m}_window1ms/config.pbtxt"
done
start_server "$repo"
trap 'kill $server 2>/dev/null || true; rm -rf "$repo"' EXIT

bench() { target/release/ferroserve-bench --no-progress --warmup-secs 1 --window-secs 2 --max-windows 6 "$@"; }
echo "== HTTP binary, batch-1 requests, concurrency 32"
for m in mlp mlp_nobatch mlp_window1ms mlp_large mlp_large_nobatch mlp_large_window1ms; do
  printf '%-20s' "$m"; bench -m "$m" -u "$http" -i http-binary --concurrency 32 | tail -1
done

echo "== gRPC at concurrency 32 (h2load): ModelInfer on mlp vs a no-op ServerLive"
.venv/bin/python benches/grpc_body.py "$repo/infer.bin"
printf '\0\0\0\0\0' > "$repo/empty.bin"
for rpc in ModelInfer ServerLive; do
  body=$([ "$rpc" = ModelInfer ] && echo "$repo/infer.bin" || echo "$repo/empty.bin")
  printf '%-12s' "$rpc"
  h2load -c32 -m1 -D"$DUR" -d "$body" -H 'content-type: application/grpc' -H 'te: trailers' \
    "http://$grpc/inference.GRPCInferenceService/$rpc" 2>/dev/null | awk '/^finished in/ {print $4, "req/s"}'
done
