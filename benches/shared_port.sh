#!/usr/bin/env bash
# What serving gRPC on the HTTP port costs, measured side by side in one run (alternating, so the machine's noise
# falls on both sides), the MLP with batch-1 requests:
#   gRPC  on the HTTP port over on the dedicated gRPC port (same server), at concurrency 1 and 32
#   REST  (http-binary) on this build's HTTP port over a baseline build's, when BASELINE names a ferroserve binary
#         built before the shared port (e.g. from a `git worktree` of the previous commit)
# Usage: [BASELINE=/path/to/old/ferroserve] benches/shared_port.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. benches/server.sh
build_release
start_server models/repository
new=$server new_http=$http new_grpc=$grpc
old=""
if [ -n "${BASELINE:-}" ]; then
  SERVER_BIN=$BASELINE start_server models/repository
  old=$server old_http=$http
fi
trap 'kill $new $old 2>/dev/null || true' EXIT

rate() { target/release/ferroserve-bench --no-progress --warmup-secs 1 --window-secs 2 --max-windows 5 \
  -m mlp -u "$1" -i "$2" --concurrency "$3" | awk -v c="c=$3" '$1 == c {print $2}'; }
ratio() { echo "$1 / $2" | bc -l; }
rounds=3
for c in 1 32; do
  dedicated=0 shared=0
  for _ in $(seq $rounds); do
    dedicated=$(echo "$dedicated + $(rate "$new_grpc" grpc "$c")" | bc -l)
    shared=$(echo "$shared + $(rate "$new_http" grpc "$c")" | bc -l)
  done
  printf 'grpc c=%-3s gRPC port %8.0f infer/s   HTTP port %8.0f infer/s   HTTP/gRPC port %.3f\n' "$c" \
    "$(ratio "$dedicated" $rounds)" "$(ratio "$shared" $rounds)" "$(ratio "$shared" "$dedicated")"
done
if [ -n "$old" ]; then
  for c in 1 32; do
    before=0 after=0
    for _ in $(seq $rounds); do
      before=$(echo "$before + $(rate "$old_http" http-binary "$c")" | bc -l)
      after=$(echo "$after + $(rate "$new_http" http-binary "$c")" | bc -l)
    done
    printf 'rest c=%-3s baseline  %8.0f infer/s   this build %8.0f infer/s   this/baseline %.3f\n' "$c" \
      "$(ratio "$before" $rounds)" "$(ratio "$after" $rounds)" "$(ratio "$after" "$before")"
  done
fi
