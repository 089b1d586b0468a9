#!/usr/bin/env bash
# What Prometheus metrics cost: the MLP at concurrency 32, batch-1 requests, over HTTP binary and gRPC, with
# metrics on (the default) and off (--allow-metrics false), two servers started side by side and measured in
# alternation (on, off, on, off) so the machine's noise falls on both. Prints infer/s and the on/off ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/server.sh
build_release
repo=$(mktemp -d)
mkdir -p "$repo/mlp/1"
cp models/repository/mlp/1/model.onnx "$repo/mlp/1/"
printf 'max_batch_size: 64\ndynamic_batching { }\n' > "$repo/mlp/config.pbtxt"
start_server "$repo"
on_pid=$server on_http=$http on_grpc=$grpc
start_server "$repo" --allow-metrics false
off_pid=$server off_http=$http off_grpc=$grpc
trap 'kill $on_pid $off_pid 2>/dev/null || true; rm -rf "$repo"' EXIT

rate() { target/release/ferroserve-bench --no-progress --warmup-secs 1 --window-secs 2 --max-windows 6 \
  -m mlp -u "$1" -i "$2" --concurrency 32 | awk '/c=32/ {print $2}'; }
for protocol in http-binary grpc; do
  on=0 off=0
  for round in 1 2; do
    if [ "$protocol" = grpc ]; then a=$on_grpc b=$off_grpc; else a=$on_http b=$off_http; fi
    on=$(echo "$on + $(rate "$a" "$protocol")" | bc -l)
    off=$(echo "$off + $(rate "$b" "$protocol")" | bc -l)
  done
  printf '%-12s metrics on %8.0f infer/s   off %8.0f infer/s   on/off %.3f\n' "$protocol" \
    "$(echo "$on / 2" | bc -l)" "$(echo "$off / 2" | bc -l)" "$(echo "$on / $off" | bc -l)"
done
curl -sf "http://$on_http/metrics" | grep -c '^ferroserve_' | xargs echo "series exposed with metrics on:"
