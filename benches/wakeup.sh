#!/usr/bin/env bash
# The idle -> busy transition of an instance, measured side by side: the MLP under the batching issue's config
# (max_batch_size 32, one CPU instance) with dynamic batching (adaptive window) and without, at c=1 (every
# request finds the instance idle) and c=8, with ferroserve-bench over HTTP binary. Prints throughput and
# latency, the server's own queue and compute time per request (statistics extension), and the server's CPU
# time over the run. SERVER_BIN=path runs another build (a baseline) for a before/after comparison:
#   SERVER_BIN=/tmp/ferroserve-before LABEL=before benches/wakeup.sh; LABEL=after benches/wakeup.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/server.sh
build_release
repo=$(mktemp -d)
for variant in adaptive off; do
  mkdir -p "$repo/mlp_$variant/1"
  cp models/repository/mlp/1/model.onnx "$repo/mlp_$variant/1/"
  extra=""
  [ $variant = adaptive ] &&
    extra="dynamic_batching { preferred_batch_size: [8, 16, 32] max_queue_delay_microseconds: 2000 }"
  printf 'max_batch_size: 32\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n%s\n' "$extra" > "$repo/mlp_$variant/config.pbtxt"
done
start_server "$repo"
trap 'kill $server 2>/dev/null || true; rm -rf "$repo"' EXIT
cpu_ms() { awk '{print ($14 + $15) * 10}' "/proc/$server/stat"; }
printf '%-8s %-5s %-9s %s\n' label load variant "infer/s mean p50 p90 p95 p99 (ms) | server side | server CPU"
for c in 1 8; do
  for variant in adaptive off; do
    before=$(cpu_ms)
    line=$(target/release/ferroserve-bench --no-progress --warmup-secs 1 --window-secs 2 --max-windows 3 -u "$http" \
      -i http-binary -m "mlp_$variant" --concurrency "$c" 2>&1 | grep -E "^ *c=|server:" | tr -s ' ' | tr '\n' ' ')
    printf '%-8s c=%-3s %-9s %s| server CPU %s ms\n' "${LABEL:-}" "$c" "$variant" "$line" "$(($(cpu_ms) - before))"
  done
done
