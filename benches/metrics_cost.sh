#!/usr/bin/env bash
# What Prometheus metrics and (unsampled) tracing cost: the MLP at concurrency 32, batch-1 requests, over HTTP
# binary and gRPC, on three servers started side by side and measured in alternation so the machine's noise falls
# on all of them:
#   off      --allow-metrics false, no OTLP endpoint
#   metrics  the default: /metrics on
#   traced   metrics on, plus an OTLP endpoint with --trace-sample-ratio 0 (every request pays the sampling
#            decision; none is exported, as in production at a low ratio)
# Prints infer/s per server and each one's ratio to `off`.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/server.sh
build_release
repo=$(mktemp -d)
mkdir -p "$repo/mlp/1"
cp models/repository/mlp/1/model.onnx "$repo/mlp/1/"
printf 'max_batch_size: 64\ndynamic_batching { }\n' > "$repo/mlp/config.pbtxt"
start_server "$repo" --allow-metrics false
off_pid=$server off_http=$http off_grpc=$grpc
start_server "$repo"
metrics_pid=$server metrics_http=$http metrics_grpc=$grpc
# Nothing listens on port 9 (discard): with ratio 0 nothing is ever sent there.
start_server "$repo" --otlp-endpoint http://127.0.0.1:9 --trace-sample-ratio 0
traced_pid=$server traced_http=$http traced_grpc=$grpc
trap 'kill $off_pid $metrics_pid $traced_pid 2>/dev/null || true; rm -rf "$repo"' EXIT

rate() { target/release/ferroserve-bench --no-progress --warmup-secs 1 --window-secs 2 --max-windows 6 \
  -m mlp -u "$1" -i "$2" --concurrency 32 | awk '/c=32/ {print $2}'; }
for protocol in http-binary grpc; do
  off=0 metrics=0 traced=0
  for round in 1 2; do
    for server in off metrics traced; do
      if [ "$protocol" = grpc ]; then var=${server}_grpc; else var=${server}_http; fi
      eval "$server=\$(echo \"\$$server + \$(rate \"\${$var}\" \"\$protocol\")\" | bc -l)"
    done
  done
  printf '%-12s off %8.0f   metrics %8.0f (%.3f)   metrics+traced %8.0f (%.3f) infer/s\n' "$protocol" \
    "$(echo "$off / 2" | bc -l)" "$(echo "$metrics / 2" | bc -l)" "$(echo "$metrics / $off" | bc -l)" \
    "$(echo "$traced / 2" | bc -l)" "$(echo "$traced / $off" | bc -l)"
done
curl -sf "http://$metrics_http/metrics" | grep -c '^ferroserve_' | xargs echo "series exposed with metrics on:"
