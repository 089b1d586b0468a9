# Sourced by the bench scripts (from the repository root).
# build_release: installs the Python side, points ORT_DYLIB_PATH at the wheel's library, builds the release
#   binaries (ferroserve, ferroserve-bench, ort_throughput).
# start_server REPO [ARGS...]: starts a release ferroserve on free loopback ports, waits until it is ready,
#   and sets $server (pid), $http and $grpc (host:port). The caller's EXIT trap should kill $server.
#   $SERVER_BIN, when set, is the binary to start instead of target/release/ferroserve (a baseline build).
#   $SERVER_CPUS, when set, pins the server to those CPUs (a taskset list such as 0 or 0-3), so that a load
#   generator pinned elsewhere does not take its cores.
# batching_variants REPO MODEL: writes MODEL (mlp or mlp_large, from models/repository) into REPO three times, under
#   the batching issue's config (max_batch_size 32, 64 for mlp_large, preferred sizes 8/16/32, a 2 ms window, one
#   CPU instance): MODEL_adaptive (that config as written), MODEL_fixed (`batch_window: fixed`, Triton's
#   behaviour) and MODEL_off (no dynamic_batching).
# median VALUES...: the median of numbers.
# ratio LIST LIST...: the median over rounds of the first list's value over the smallest of the others' (see below).
build_release() {
  scripts/setup
  export ORT_DYLIB_PATH="${ORT_DYLIB_PATH:-$(scripts/ort-lib)}"
  cargo build --release -q -p ferroserve -p ferroserve-benches --bins
}

start_server() {
  local repo=$1 out
  shift
  out=$(mktemp)
  local pin=()
  [ -z "${SERVER_CPUS:-}" ] || pin=(taskset -c "$SERVER_CPUS")
  "${pin[@]}" "${SERVER_BIN:-target/release/ferroserve}" --host 127.0.0.1 --http_port 0 --grpc_port 0 --model-repository "$repo" "$@" \
    > "$out" 2> "$out.log" &
  server=$!
  for _ in $(seq 100); do grep -q listening "$out" 2>/dev/null && break; sleep 0.1; done
  http=$(sed -E 's/.*http=([^ ]+).*/\1/' "$out" | head -1)
  grpc=$(sed -E 's/.*grpc=([^ ]+).*/\1/' "$out" | head -1)
  for _ in $(seq 100); do curl -sf "http://$http/v2/health/ready" >/dev/null && break; sleep 0.1; done
}

batching_variants() {
  local repo=$1 m=$2 max variant extra batching
  max=$([ "$m" = mlp ] && echo 32 || echo 64)
  batching="dynamic_batching { preferred_batch_size: [8, 16, 32] max_queue_delay_microseconds: 2000 }"
  for variant in adaptive fixed off; do
    mkdir -p "$repo/${m}_$variant/1"
    cp "models/repository/$m/1/model.onnx" "$repo/${m}_$variant/1/"
    case $variant in
      adaptive) extra="$batching" ;;
      fixed) extra="$batching
parameters { key: \"batch_window\" value: { string_value: \"fixed\" } }" ;;
      off) extra="" ;;
    esac
    printf 'max_batch_size: %s\ninstance_group [ { count: 1 kind: KIND_CPU } ]\n%s\n' "$max" "$extra" \
      > "$repo/${m}_$variant/config.pbtxt"
  done
}

median() { printf '%s\n' "$@" | sort -g | awk '{v[NR] = $1} END {print (NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2)}'; }

# The median, over the rounds, of the ratio of the first list to the elementwise smallest of the others (lists of
# one value per round, space-separated, in round order): the variants of one round ran within seconds of each
# other, while the host's speed moves by up to 2x over minutes (one run's c=32 rates went from 13 700/s to
# 28 600/s and back), so ratios of medians taken across rounds mix those speeds. "-" when no round has both.
ratio() {
  local num=$1 i v best ok list
  shift
  local -a nums dens=() ratios=()
  read -ra nums <<< "$num"
  for i in "${!nums[@]}"; do
    best=""
    for list in "$@"; do
      read -ra dens <<< "$list"
      v=${dens[$i]:-0}
      [[ "$v" =~ ^[0-9.]+$ ]] && [ "$(echo "$v > 0" | bc)" = 1 ] || continue
      if [ -z "$best" ] || [ "$(echo "$v < $best" | bc)" = 1 ]; then best=$v; fi
    done
    ok=0
    [[ "${nums[$i]}" =~ ^[0-9.]+$ ]] && ok=$(echo "${nums[$i]} > 0" | bc)
    [ -z "$best" ] || [ "$ok" != 1 ] || ratios+=("$(echo "${nums[$i]} / $best" | bc -l)")
  done
  if [ ${#ratios[@]} = 0 ]; then echo -; else median "${ratios[@]}" | xargs printf '%.2f'; fi
}
