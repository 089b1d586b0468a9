#!/usr/bin/env bash
# System shared memory against tensors in the request, measured side by side in one run with NVIDIA
# perf_analyzer (scripts/setup-peers) on one release server: the MLP (64-byte inputs, where shared memory saves
# little) and identity_fp32_4mib (a 4 MiB input summed to one float, where the copy through the socket is what
# shared memory saves). Each pair alternates with and without `--shared-memory system`, ROUNDS times, over HTTP
# and gRPC, at concurrency C, and prints the median throughput of each, their ratio, and the median server CPU
# time per inference (from /proc and the statistics extension: what shared memory costs or saves the server).
# ROUNDS (default 3), C (default 8), WINDOW_MS: perf_analyzer's measurement interval (default 2000).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
C=${C:-8}
WINDOW_MS=${WINDOW_MS:-2000}
. benches/server.sh
build_release
pa=.tools/perf_analyzer
[ -x "$pa/bin/perf_analyzer" ] || { echo "perf_analyzer is not installed: run scripts/setup-peers" >&2; exit 1; }
repo=$(mktemp -d)
cp -r models/repository/mlp "$repo/"
cp -r models/triton_examples/identity_fp32_4mib "$repo/"
start_server "$repo"
trap 'kill $server 2>/dev/null || true; rm -rf "$repo"' EXIT

# The server's CPU time (10 ms ticks) and the model's inference count so far.
ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
count() {
  curl -s "http://$http/v2/models/$1/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["model_stats"][0]["inference_count"])'
}

# One perf_analyzer run on model $1: prints its throughput (infer/s) and the server's CPU time per inference (us).
run() {
  local model=$1 t0 n0 tp
  t0=$(ticks) n0=$(count "$model")
  tp=$(LD_LIBRARY_PATH="$pa/lib" "$pa/bin/perf_analyzer" --measurement-interval "$WINDOW_MS" --concurrency-range "$C" \
    --stability-percentage 20 --max-trials 10 -m "$@" |
    sed -nE 's/.*Concurrency: [0-9]+, throughput: ([0-9.]+) infer\/sec.*/\1/p' | tail -1)
  echo "$tp $(echo "($(ticks) - $t0) * 10000 / ($(count "$model") - $n0)" | bc -l)"
}
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'; }

for model in mlp identity_fp32_4mib; do
  for protocol in http grpc; do
    addr=$([ "$protocol" = http ] && echo "$http" || echo "$grpc")
    plain=() shared=() plain_cpu=() shared_cpu=()
    for _ in $(seq "$ROUNDS"); do
      read -r tp cpu < <(run "$model" -u "$addr" -i "$protocol")
      plain+=("$tp") plain_cpu+=("$cpu")
      read -r tp cpu < <(run "$model" -u "$addr" -i "$protocol" --shared-memory system)
      shared+=("$tp") shared_cpu+=("$cpu")
    done
    p=$(printf '%s\n' "${plain[@]}" | median)
    s=$(printf '%s\n' "${shared[@]}" | median)
    pc=$(printf '%s\n' "${plain_cpu[@]}" | median)
    sc=$(printf '%s\n' "${shared_cpu[@]}" | median)
    printf '%-20s %-5s c=%s  in the request %10.1f/s (%6.1f us CPU)  shared memory %10.1f/s (%6.1f us CPU)  x%.2f\n' \
      "$model" "$protocol" "$C" "$p" "$pc" "$s" "$sc" "$(echo "$s / $p" | bc -l)"
  done
done
