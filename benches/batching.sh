#!/usr/bin/env bash
# Dynamic batching, measured side by side in one run (one server, models measured in turn), with the config the
# batching issue names: max_batch_size 32 (64 for mlp_large), preferred sizes 8/16/32, a 2 ms window, one CPU
# instance; three variants of each model:
#   adaptive  that config as written (ferroserve's default window)
#   fixed     the same with `batch_window: fixed` (Triton's behaviour: a partial batch waits out the window)
#   off       no dynamic_batching (one request per execution)
# Prints, per model: closed-loop p50 at c=1,2,4 and throughput at c=32 (each variant, and the ratios the goals
# use), with the server's own execution time per request and items per execution at c=32 (stable where
# throughput is not: on a 2-core machine the load generator shares the CPU), then open-loop Poisson p99 at 30%
# and 80% of the saturated rate (the highest Poisson rate the better of the fixed window and batching off
# sustains, found by a ramp over 50-150 % of the lowest c=32 throughput of the three: see open_capacity), as
# the client saw it and as the server measured it (from the request's arrival in the engine to its answer, read
# from the server's latency buckets). The server's p99 is the one the open-loop goal is judged on: on a machine
# where the generator shares the cores, the client's tail is mostly the generator's own scheduling.
# Beside c=32 and each open-loop point: the CPU's busy share the adaptive window saw during the run
# (`ferroserve_cpu_busy_ratio`); on CPU it holds partial batches for the preferred size only from 0.85 on.
# SECS: seconds per measurement window (default 2).
# ROUNDS: measurements of each closed-loop point, the variants alternating; medians are printed (default 1), and
#   each ratio is the median of the ratios within a round. Single measurements at c=32 move by 10-20% from run
#   to run on a shared 2-core machine, and the host's speed drifts by more over minutes.
# OPEN_ROUNDS: the same for each open-loop point (default 5): a single p99 there, even the server's, moves by
#   up to 2x from run to run on a 2-core machine, set by the few requests behind a scheduling stall. The open
#   loop then takes about 10 minutes (60 measurements) plus up to 6 for the ramps (44), the closed loop about 9.
# SATURATED: the open loop's saturated rates, as "mlp=15000 mlp_large=9000" (those a previous run printed as
#   sustained): when set, the closed-loop part and the ramp are skipped (unless RAMP_TO is set too, in which
#   case the ramp starts from these rates).
# MODELS: the models to measure, of "mlp mlp_large" (default both); SHARES: the open-loop rates, in percent of the
#   saturated rate (default "30 80"). With SATURATED they let one open-loop point be measured again alone.
# RAMP_FROM, RAMP_TO: the open loop's saturated rate is found by a ramp over these percentages of the closed
#   loop's c=32 rate (default 50 to 150, in steps of 10): the highest rate the better of the fixed window and
#   batching off sustains (see open_capacity). RAMP_TO=0 takes the closed-loop rate itself, as before.
# BACKLOG_MS: a server p99 over this many ms (default 100, 50 windows) counts as overloaded: a backlog.
# SERVER_CPUS, BENCH_CPUS: CPU lists (taskset) for the server and the load generator, for instance 0-5 and 6-7,
#   so that they do not take each other's cores (default: not pinned).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-2}
ROUNDS=${ROUNDS:-1}
OPEN_ROUNDS=${OPEN_ROUNDS:-5}
MODELS=${MODELS:-mlp mlp_large}
SHARES=${SHARES:-30 80}
BACKLOG_MS=${BACKLOG_MS:-100}
RAMP_FROM=${RAMP_FROM:-50}
RAMP_TO=${RAMP_TO:-$([ -n "${SATURATED:-}" ] && echo 0 || echo 150)}
[[ "$BACKLOG_MS" =~ ^[0-9]+$ && "$RAMP_FROM" =~ ^[0-9]+$ && "$RAMP_TO" =~ ^[0-9]+$ ]] ||
  { echo "BACKLOG_MS, RAMP_FROM and RAMP_TO must be whole numbers" >&2; exit 2; }
RAMP_FROM=$((10#$RAMP_FROM)) RAMP_TO=$((10#$RAMP_TO))
if [ "$RAMP_TO" != 0 ] && { [ "$RAMP_FROM" -lt 1 ] || [ "$RAMP_FROM" -gt "$RAMP_TO" ]; }; then
  echo "RAMP_FROM must be from 1 to RAMP_TO (or RAMP_TO 0: no ramp)" >&2
  exit 2
fi
for m in $MODELS; do
  [[ "$m" =~ ^(mlp|mlp_large)$ ]] || { echo "MODELS: '$m' is not mlp or mlp_large" >&2; exit 2; }
done
for share in $SHARES; do
  [[ "$share" =~ ^[1-9][0-9]?$ ]] || { echo "SHARES: '$share' is not a percentage from 1 to 99" >&2; exit 2; }
done
declare -A saturated_rate
skip_closed=""
if [ -n "${SATURATED:-}" ]; then
  skip_closed=1
  for pair in $SATURATED; do
    name=${pair%%=*} value=${pair#*=}
    [[ "$name" =~ ^(mlp|mlp_large)$ && "$value" =~ ^[0-9]+(\.[0-9]+)?$ ]] ||
      { echo "SATURATED: '$pair' is not mlp=RATE or mlp_large=RATE" >&2; exit 2; }
    saturated_rate[$name]=$value
  done
  for m in $MODELS; do
    [ -n "${saturated_rate[$m]:-}" ] || { echo "SATURATED needs a rate for $m" >&2; exit 2; }
  done
fi
for n in "$ROUNDS" "$OPEN_ROUNDS"; do
  [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "ROUNDS and OPEN_ROUNDS must be whole numbers from 1" >&2; exit 2; }
done
. benches/server.sh
build_release
repo=$(mktemp -d)
for m in mlp mlp_large; do
  batching_variants "$repo" "$m"
done
start_server "$repo"
trap 'kill $server 2>/dev/null || true; rm -rf "$repo"' EXIT

# One measurement: prints "infer/s p50_ms p99_ms compute_us items_per_execution server_p99_ms errors cpu_busy"
# (compute, items and the server's p99 from its statistics over the measured windows, "-" where it reports none;
# errors: requests that failed or that the generator could not send; cpu_busy: the CPU's busy share as the
# adaptive window saw it, `ferroserve_cpu_busy_ratio`, read after the first measured window, "-" without it).
bench_pin=()
[ -z "${BENCH_CPUS:-}" ] || bench_pin=(taskset -c "$BENCH_CPUS")
measure() {
  local out busy sample
  sample=$(mktemp)
  (sleep "$((1 + SECS))"; curl -sf "http://$http/metrics" | awk '$1 == "ferroserve_cpu_busy_ratio" {print $2}' > "$sample") &
  out=$("${bench_pin[@]}" target/release/ferroserve-bench --no-progress --warmup-secs 1 --window-secs "$SECS" \
    --max-windows 4 -u "$http" -i http-binary "$@" | awk '
      $1 ~ /^(c=|[0-9.]+\/s)/ {line = $2 " " $4 " " $7; errors = $8}
      $1 == "server:" {gsub(/[,;]/, ""); server = $6 " " $10 " " ($18 == "p99" ? $19 / 1000 : "-")}
      END {print (line == "" ? "0 0 0" : line), (server == "" ? "- - -" : server), (errors == "" ? 1 : errors)}') || true
  wait $! || true
  busy=$(cat "$sample")
  rm -f "$sample"
  echo "$out ${busy:--}"
}

# Measures every variant of model $2 $1 times, alternating, the order rotated each round (the host's speed drifts
# over minutes, and whichever variant runs first after a change of load warms the caches and the CPU's clock for
# the others), with the load arguments that follow; sets the medians in rate[], p50[], p99[], compute[], items[]
# and server_p99[] by variant, the values of each round (in round order, for `ratio`) in rates[], p50s[], p99s[]
# and server_p99s[], and in overloaded the variants that had errors in any round or whose server p99 showed a
# backlog (over $BACKLOG_MS). Measures only the variants in $variants (default all three).
declare -A rate p50 p99 compute items server_p99 cpu rates p50s p99s server_p99s
overloaded=""
variants=(adaptive fixed off)
measure_variants() {
  local rounds=$1 m=$2 variant r p q c i s e u
  shift 2
  overloaded=""
  declare -A computes itemss cpus
  rates=() p50s=() p99s=() server_p99s=()
  local round k n=${#variants[@]}
  for round in $(seq 0 $((rounds - 1))); do
    for k in $(seq 0 $((n - 1))); do
      variant=${variants[$(((round + k) % n))]}
      read -r r p q c i s e u < <(measure -m "${m}_$variant" "$@")
      if [ "${e:-0}" != 0 ] || { [[ "$s" =~ ^[0-9.]+$ ]] && [ "$(echo "$s > $BACKLOG_MS" | bc)" = 1 ]; }; then
        [[ " $overloaded " == *" $variant "* ]] || overloaded+=" $variant"
      fi
      rates[$variant]+="$r " p50s[$variant]+="$p " p99s[$variant]+="$q " computes[$variant]+="$c " itemss[$variant]+="$i "
      server_p99s[$variant]+="$s " cpus[$variant]+="$u "
    done
  done
  for variant in "${variants[@]}"; do
    # shellcheck disable=SC2086
    rate[$variant]=$(median ${rates[$variant]}) p50[$variant]=$(median ${p50s[$variant]}) \
      p99[$variant]=$(median ${p99s[$variant]}) compute[$variant]=$(median ${computes[$variant]//-/0}) \
      items[$variant]=$(median ${itemss[$variant]//-/0}) server_p99[$variant]=$(median ${server_p99s[$variant]//-/0}) \
      cpu[$variant]=$(median ${cpus[$variant]//-/0})
  done
}

[ "$ROUNDS" = 1 ] || [ -n "$skip_closed" ] || echo "(closed loop: medians of $ROUNDS alternating measurements)"
for m in $MODELS; do
  [ -z "$skip_closed" ] || break
  echo "== $m: closed loop (HTTP binary, batch-1 requests)"
  printf '%-6s %-28s %-28s %-28s %s\n' "" adaptive fixed off "adaptive/off p50, adaptive/fixed & /off rate"
  for c in 1 2 4 32; do
    measure_variants "$ROUNDS" "$m" --concurrency "$c"
    line=""
    for variant in adaptive fixed off; do
      line+=$(printf '%-28s ' "$(printf '%9.0f/s p50 %6.3f ms' "${rate[$variant]}" "${p50[$variant]}")")
    done
    if [ "$c" = 32 ]; then
      goal="rate x$(ratio "${rates[adaptive]}" "${rates[fixed]}") of fixed, x$(ratio "${rates[adaptive]}" "${rates[off]}") of off"
      saturated=$(printf "%s\n" "${rate[adaptive]}" "${rate[fixed]}" "${rate[off]}" | sort -g | head -1)
      saturated_rate[$m]=$saturated
    else
      goal="p50 x$(ratio "${p50s[adaptive]}" "${p50s[off]}") of off"
    fi
    printf 'c=%-4s %s%s\n' "$c" "$line" "$goal"
    if [ "$c" = 32 ]; then
      line=""
      for variant in adaptive fixed off; do
        line+=$(printf '%-28s ' "$(printf '%5.1f us, %4.1f items/exec' "${compute[$variant]}" "${items[$variant]}")")
      done
      printf '%-6s %sexecution time per request in the server, items per execution\n' "" "$line"
      printf '%-6s CPU busy during the run (the adaptive window holds from 0.85): adaptive %s, fixed %s, off %s\n' "" \
        "${cpu[adaptive]}" "${cpu[fixed]}" "${cpu[off]}"
    fi
  done
done

# The open loop's saturated rate: the highest Poisson rate, in steps of a tenth of the closed loop's, that the
# better of the fixed window and batching off sustains (one round each, no errors and no backlog). An open-loop
# generator costs more CPU per request than a closed one, and on a 2-core machine it shares the server's cores:
# 80 % of the closed-loop c=32 rate overloaded every variant in some runs there (p99s of hundreds of ms that
# measure the backlog, not the batching), and the goal's "80 % of the saturated rate" means a rate the server
# can keep up with. It is the baselines' capacity, not the adaptive window's: a window that gives up capacity
# shows as a miss at 80 %.
# Prints the rate and how it ended: "sustained" (the next step overloaded both), "not-reached" (RAMP_TO was
# sustained: a lower bound) or "none" (the first step overloaded both; its rate is printed).
open_capacity() {
  local m=$1 closed=$2 step offered capacity="" ended=not-reached
  local -a variants=(fixed off)
  for step in $(seq "$RAMP_FROM" 10 "$RAMP_TO"); do
    offered=$(echo "$closed * $step / 100" | bc)
    measure_variants 1 "$m" --request-rate "$offered" --distribution poisson
    if [ "$overloaded" = " fixed off" ]; then
      ended=sustained
      break
    fi
    capacity=$offered
  done
  [ -n "$capacity" ] || { capacity=$(echo "$closed * $RAMP_FROM / 100" | bc); ended=none; }
  echo "$capacity $ended"
}

for m in $MODELS; do
  saturated=${saturated_rate[$m]}
  if [ "$RAMP_TO" != 0 ]; then
    ramp_log=$(mktemp)
    ramped=$(open_capacity "$m" "$saturated" 2>"$ramp_log") || true
    read -r saturated ended <<< "$ramped"
    [[ "${saturated:-}" =~ ^[0-9]+$ ]] || { echo "the ramp failed:" >&2; cat "$ramp_log" >&2; exit 1; }
    rm -f "$ramp_log"
    case $ended in
      sustained) how="the fixed window or batching off sustains $saturated/s (one step more overloaded both)" ;;
      not-reached) how="the fixed window or batching off sustained the ramp's top, $saturated/s (a lower bound)" ;;
      *) how="even the ramp's first step overloaded both the fixed window and batching off: $saturated/s" ;;
    esac
    echo "== $m: open loop: $how; ramp from $RAMP_FROM % to $RAMP_TO % of $(printf '%.0f' "${saturated_rate[$m]}")/s"
  fi
  echo "== $m: open loop, Poisson arrivals (saturated rate $(printf '%.0f' "$saturated")/s): p99 ms, in the server / at the client, medians of $OPEN_ROUNDS alternating measurements"
  for share in $SHARES; do
    r=$(echo "$saturated * $share / 100" | bc)
    measure_variants "$OPEN_ROUNDS" "$m" --request-rate "$r" --distribution poisson
    line=""
    for variant in adaptive fixed off; do
      line+=$(printf '%-8s %7.3f / %7.3f   ' "$variant" "${server_p99[$variant]}" "${p99[$variant]}")
    done
    printf '%3s%% (%6s/s)  %s adaptive / better of fixed,off: x%s in the server, x%s at the client; CPU busy %s\n' \
      "$share" "$r" "$line" "$(ratio "${server_p99s[adaptive]}" "${server_p99s[fixed]}" "${server_p99s[off]}")" \
      "$(ratio "${p99s[adaptive]}" "${p99s[fixed]}" "${p99s[off]}")" \
      "${cpu[adaptive]}"
    # An open loop the machine cannot keep up with (the generator shares its cores) queues without bound:
    # its p99 measures the backlog, not the batching.
    [ -z "$overloaded" ] || echo "      overloaded (requests failed or not sent, or a server p99 over $BACKLOG_MS ms in some round):$overloaded"
  done
done

for m in $MODELS; do
  echo "== why $m batches ran (adaptive variant)"
  curl -sf "http://$http/v2/models/${m}_adaptive/stats" | .venv/bin/python -c \
    'import json,sys; s=json.load(sys.stdin)["model_stats"][0]; print("  ", s["batch_reasons"], "items/execution %.1f" % (s["inference_count"] / max(1, s["execution_count"])))'
done
