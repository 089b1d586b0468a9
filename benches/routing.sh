#!/usr/bin/env bash
# What routing between versions costs: the MLP with two loaded versions, at concurrency 32 with batch-1 requests,
# over HTTP binary and gRPC, served by one server as two models measured in alternation (latest, split, latest,
# split) so the machine's noise falls on both:
#   latest  no traffic policy: the newest version serves
#   split   traffic_split 1:90,2:10 (a random draw and a weighted choice per request)
# Prints infer/s for each and split/latest.
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/server.sh
build_release
repo=$(mktemp -d)
for name in latest split; do
  for v in 1 2; do
    mkdir -p "$repo/$name/$v"
    cp models/repository/mlp/1/model.onnx "$repo/$name/$v/"
  done
  printf 'max_batch_size: 64\ndynamic_batching { }\nversion_policy: { all { } }\n' > "$repo/$name/config.pbtxt"
done
printf 'parameters { key: "traffic_split" value: { string_value: "1:90,2:10" } }\n' >> "$repo/split/config.pbtxt"
start_server "$repo"
trap 'kill $server 2>/dev/null || true; rm -rf "$repo"' EXIT

rate() { target/release/ferroserve-bench --no-progress --warmup-secs 1 --window-secs 2 --max-windows 6 \
  -m "$1" -u "$2" -i "$3" --concurrency 32 | awk '/c=32/ {print $2}'; }
for protocol in http-binary grpc; do
  if [ "$protocol" = grpc ]; then addr=$grpc; else addr=$http; fi
  latest=0 split=0
  for round in 1 2 3; do
    latest=$(echo "$latest + $(rate latest "$addr" "$protocol")" | bc -l)
    split=$(echo "$split + $(rate split "$addr" "$protocol")" | bc -l)
  done
  printf '%-12s latest %8.0f infer/s   split 90/10 %8.0f infer/s   split/latest %.3f\n' "$protocol" \
    "$(echo "$latest / 3" | bc -l)" "$(echo "$split / 3" | bc -l)" "$(echo "$split / $latest" | bc -l)"
done
curl -sf "http://$http/metrics" | grep -E '^ferroserve_requests_total\{.*model="split"' | sed 's/^/  /'
