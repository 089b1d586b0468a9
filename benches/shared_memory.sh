#!/usr/bin/env bash
# System shared memory against tensors in the request, measured side by side in one run with NVIDIA
# perf_analyzer (scripts/setup-peers) on one release server: the MLP (64-byte inputs, where shared memory saves
# little) and identity_fp32_4mib (a 4 MiB input summed to one float, where the copy through the socket is what
# shared memory saves). Each pair alternates with and without `--shared-memory system`, ROUNDS times, over HTTP
# and gRPC, at concurrency C, and prints the median throughput of each, their ratio, and the median server CPU
# time per inference (from /proc and the statistics extension: what shared memory costs or saves the server).
# SERVER_CPUS and PA_CPUS pin the server and perf_analyzer (taskset lists), so that the client's own cost of shared
# memory does not move the server's share of a small machine.
# ROUNDS (default 3), C (default 8), WINDOW_MS: perf_analyzer's measurement interval (default 2000).
# SWEEP=1 adds a size sweep on a generated model (`sum_fp32`: FP32 [-1] in, its sum out), 64 B to 1 MiB per input,
# to find the size from which shared memory pays; a tensor in the request costs the server next to nothing on top
# of its bytes, while one in a region costs a `pread`, a `pwrite` and three parameters per tensor.
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
trap 'kill ${server:-} 2>/dev/null || true; rm -rf "$repo"' EXIT
cp -r models/repository/mlp "$repo/"
cp -r models/triton_examples/identity_fp32_4mib "$repo/"
if [ "${SWEEP:-0}" = 1 ]; then
  mkdir -p "$repo/sum_fp32/1"
  .venv/bin/python - "$repo/sum_fp32/1/model.onnx" <<'EOF'
import sys
import onnx
from onnx import TensorProto, helper
graph = helper.make_graph(
    [helper.make_node("ReduceSum", ["INPUT0"], ["OUTPUT0"], keepdims=1)], "sum_fp32",
    [helper.make_tensor_value_info("INPUT0", TensorProto.FLOAT, ["n"])],
    [helper.make_tensor_value_info("OUTPUT0", TensorProto.FLOAT, [1])])
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9), sys.argv[1])
EOF
  printf 'name: "sum_fp32"\nplatform: "onnxruntime_onnx"\nmax_batch_size: 0\ninput [ { name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] } ]\noutput [ { name: "OUTPUT0" data_type: TYPE_FP32 dims: [ 1 ] } ]\n' > "$repo/sum_fp32/config.pbtxt"
fi
start_server "$repo"

# The server's CPU time (10 ms ticks) and the model's inference count so far.
ticks() { awk '{print $14 + $15}' "/proc/$server/stat"; }
count() {
  curl -s "http://$http/v2/models/$1/stats" | python3 -c 'import json, sys; print(json.load(sys.stdin)["model_stats"][0]["inference_count"])'
}

# One perf_analyzer run on model $1: prints its throughput (infer/s) and the server's CPU time per inference (us).
run() {
  local model=$1 t0 n0 tp
  t0=$(ticks) n0=$(count "$model")
  tp=$(LD_LIBRARY_PATH="$pa/lib" ${PA_CPUS:+taskset -c "$PA_CPUS"} "$pa/bin/perf_analyzer" --measurement-interval "$WINDOW_MS" --concurrency-range "$C" \
    --stability-percentage 20 --max-trials 10 -m "$@" |
    sed -nE 's/.*Concurrency: [0-9]+, throughput: ([0-9.]+) infer\/sec.*/\1/p' | tail -1)
  echo "$tp $(echo "($(ticks) - $t0) * 10000 / ($(count "$model") - $n0)" | bc -l)"
}
median() { sort -g | awk '{v[NR]=$1} END {print v[int((NR + 1) / 2)]}'; }

# One row: model $1 (with extra perf_analyzer arguments $3...) over protocol $2, ROUNDS alternating pairs.
compare() {
  local model=$1 protocol=$2 label=$1
  shift 2
  [ $# -eq 0 ] || label="$model $*"
  local addr
  addr=$([ "$protocol" = http ] && echo "$http" || echo "$grpc")
  local plain=() shared=() plain_cpu=() shared_cpu=()
  for _ in $(seq "$ROUNDS"); do
    read -r tp cpu < <(run "$model" -u "$addr" -i "$protocol" "$@")
    plain+=("$tp") plain_cpu+=("$cpu")
    read -r tp cpu < <(run "$model" -u "$addr" -i "$protocol" "$@" --shared-memory system)
    shared+=("$tp") shared_cpu+=("$cpu")
  done
  local p s pc sc
  p=$(printf '%s\n' "${plain[@]}" | median)
  s=$(printf '%s\n' "${shared[@]}" | median)
  pc=$(printf '%s\n' "${plain_cpu[@]}" | median)
  sc=$(printf '%s\n' "${shared_cpu[@]}" | median)
  printf '%-30s %-5s c=%s  in the request %10.1f/s (%6.1f us CPU)  shared memory %10.1f/s (%6.1f us CPU)  x%.2f\n' \
    "$label" "$protocol" "$C" "$p" "$pc" "$s" "$sc" "$(echo "$s / $p" | bc -l)"
}

for model in mlp identity_fp32_4mib; do
  for protocol in http grpc; do
    compare "$model" "$protocol"
  done
done
if [ "${SWEEP:-0}" = 1 ]; then
  # 16 elements (64 B) to 262144 (1 MiB); perf_analyzer sizes its regions from --shape.
  for n in 16 1024 16384 262144; do
    for protocol in http grpc; do
      compare sum_fp32 "$protocol" --shape "INPUT0:$n"
    done
  done
fi
