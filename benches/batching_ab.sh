#!/usr/bin/env bash
# A paired A/B of two server builds' batching: both servers run at once on one repository (the batching issue's
# config on MODEL: max_batch_size 32, 64 for mlp_large, preferred sizes 8/16/32, a 2 ms window, one CPU
# instance), and each round measures, in an order rotated round by round: A's adaptive window, B's adaptive
# window, A's fixed window and A's batching off (PICKS changes the list). Measurements of one round run seconds
# apart, so their ratios hold while the host's speed drifts by up to 2x over minutes; an idle server costs the
# other nothing (its instances sleep). Prints one line per measurement (served rate, client p50/p99, server queue
# and execution time per request, items per execution, server p99, the server process's CPU time per request
# served), then for each adaptive window the median over the rounds of its server p99, and of its CPU time per
# request, over the better of A's fixed window and batching off in the same round (`ratio`).
#   A_BIN, B_BIN: the two builds (default: both target/release/ferroserve, a control run).
#   PICKS: the measurements of a round, BUILD:VARIANT (default "A:adaptive B:adaptive A:fixed A:off"; for
#   instance "A:fixed B:fixed A:off" compares the two builds' fixed windows).
#   MODEL: mlp or mlp_large (default mlp_large). ROUNDS (default 5). SECS: seconds per window (default 2).
#   LOAD: the load arguments for ferroserve-bench (default "--request-rate 6400 --distribution poisson";
#   "--concurrency 32" for a closed loop). BENCH_CPUS, SERVER_CPUS: taskset CPU lists, as in batching.sh.
# Example: A_BIN=/tmp/ferroserve-main B_BIN=target/release/ferroserve LOAD="--request-rate 8800 \
#   --distribution poisson" benches/batching_ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-mlp_large}
ROUNDS=${ROUNDS:-5}
SECS=${SECS:-2}
LOAD=${LOAD:---request-rate 6400 --distribution poisson}
[[ "$MODEL" =~ ^(mlp|mlp_large)$ ]] || { echo "MODEL must be mlp or mlp_large" >&2; exit 2; }
[[ "$ROUNDS" =~ ^[1-9][0-9]*$ && "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS and SECS must be whole numbers from 1" >&2; exit 2; }
read -ra picks <<< "${PICKS:-A:adaptive B:adaptive A:fixed A:off}"
for pick in "${picks[@]}"; do
  [[ "$pick" =~ ^[AB]:(adaptive|fixed|off)$ ]] || { echo "PICKS: $pick is not BUILD:VARIANT (A or B; adaptive, fixed or off)" >&2; exit 2; }
done
. benches/server.sh
build_release
A_BIN=${A_BIN:-target/release/ferroserve}
B_BIN=${B_BIN:-target/release/ferroserve}
for bin in "$A_BIN" "$B_BIN"; do [ -x "$bin" ] || { echo "$bin is not an executable" >&2; exit 2; }; done
repo=$(mktemp -d)
batching_variants "$repo" "$MODEL"
servers=()
trap 'kill "${servers[@]}" 2>/dev/null || true; rm -rf "$repo"' EXIT
SERVER_BIN=$A_BIN start_server "$repo"
servers+=("$server") a_http=$http a_pid=$server
SERVER_BIN=$B_BIN start_server "$repo"
servers+=("$server") b_http=$http b_pid=$server

bench_pin=()
[ -z "${BENCH_CPUS:-}" ] || bench_pin=(taskset -c "$BENCH_CPUS")
# CPU time (user and system, in clock ticks) the process $1 has used so far.
cpu_ticks() { awk '{sub(/^.*\) /, ""); print $12 + $13}' "/proc/$1/stat"; }
# One measurement of model ${MODEL}_$3 on the server at $1 (process $2): prints "served p50_ms p99_ms queue_us
# compute_us items server_p99_ms errors cpu_us" ("-" where the server reports nothing). cpu_us: the server's CPU
# time over the whole run (warm-up included, at the same load) over the requests it served in that time (the
# served rate times the run's length): what a request costs the CPU the server shares with everything else.
measure() {
  local out t0 t1 c0 c1
  t0=$(date +%s.%N) c0=$(cpu_ticks "$2")
  # shellcheck disable=SC2086
  out=$("${bench_pin[@]}" target/release/ferroserve-bench --no-progress --warmup-secs 1 --window-secs "$SECS" \
    --max-windows 3 -u "$1" -i http-binary -m "${MODEL}_$3" $LOAD 2>/dev/null | awk '
      $1 ~ /^(c=|[0-9.]+\/s)/ {line = $2 " " $4 " " $7; errors = $8}
      $1 == "server:" {gsub(/[,;]/, ""); server = $3 " " $6 " " $10 " " ($18 == "p99" ? $19 / 1000 : "-")}
      END {print (line == "" ? "0 0 0" : line), (server == "" ? "- - - -" : server), (errors == "" ? 1 : errors)}' || true)
  t1=$(date +%s.%N) c1=$(cpu_ticks "$2")
  echo "$out" | awk -v t="$(echo "$t1 - $t0" | bc)" -v c="$((c1 - c0))" \
    '{cpu = ($1 > 0 ? sprintf("%.1f", c * 1e4 / ($1 * t)) : "-"); print $0, cpu}'
}

url_of() { [ "${1%%:*}" = A ] && echo "$a_http" || echo "$b_http"; }
pid_of() { [ "${1%%:*}" = A ] && echo "$a_pid" || echo "$b_pid"; }
# One pass of each, not counted: the first load on a freshly started server stalls on a 2-core host (client p99s
# up to 1 s, server p99s of 60-110 ms, whatever the variant), longer than the generator's warm-up second.
for pick in "${picks[@]}"; do
  measure "$(url_of "$pick")" "$(pid_of "$pick")" "${pick#*:}" > /dev/null
done
declare -A server_p99s cpus
echo "model $MODEL, load: $LOAD; A=$A_BIN B=$B_BIN"
row='%-6s %-11s %9s %8s %8s %9s %9s %6s %11s %7s %s\n'
# shellcheck disable=SC2059
printf "$row" round variant "served/s" "p50 ms" "p99 ms" "queue us" "exec us" items "srv p99 ms" "cpu us" errors
for round in $(seq 0 $((ROUNDS - 1))); do
  for k in "${!picks[@]}"; do
    pick=${picks[$(((round + k) % ${#picks[@]}))]}
    read -r served p50 p99 queue exec items server_p99 errors cpu < \
      <(measure "$(url_of "$pick")" "$(pid_of "$pick")" "${pick#*:}")
    # shellcheck disable=SC2059
    printf "$row" "$round" "$pick" "$served" "$p50" "$p99" "$queue" "$exec" "$items" "$server_p99" "$cpu" "$errors"
    server_p99s[$pick]+="$server_p99 "
    cpus[$pick]+="$cpu "
  done
done
baselines=()
for pick in A:fixed A:off; do [ -z "${server_p99s[$pick]:-}" ] || baselines+=("$pick"); done
for pick in "${picks[@]}"; do
  [ "${pick#*:}" = adaptive ] && [ ${#baselines[@]} -gt 0 ] || continue
  p99_lists=() cpu_lists=()
  for b in "${baselines[@]}"; do p99_lists+=("${server_p99s[$b]}"); cpu_lists+=("${cpus[$b]}"); done
  printf '%s over the better of %s, medians of the rounds: server p99 x%s, CPU per request x%s\n' "$pick" \
    "${baselines[*]}" "$(ratio "${server_p99s[$pick]}" "${p99_lists[@]}")" "$(ratio "${cpus[$pick]}" "${cpu_lists[@]}")"
done
