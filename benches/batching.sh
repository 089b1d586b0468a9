#!/usr/bin/env bash
# Dynamic batching, measured side by side in one run (one server, models measured in turn), with the config the
# batching issue names: max_batch_size 32 (64 for mlp_large), preferred sizes 8/16/32, a 2 ms window, one CPU
# instance; three variants of each model:
#   adaptive  that config as written (ferroserve's default window)
#   fixed     the same with `batch_window: fixed` (Triton's behaviour: a partial batch waits out the window)
#   off       no dynamic_batching (one request per execution)
# Prints, per model: closed-loop p50 at c=1,2,4 and throughput at c=32 (each variant, and the ratios the goals
# use), then open-loop Poisson p99 at 30% and 80% of the saturated rate (the lowest c=32 throughput of the three:
# a rate every variant can sustain).
# SECS: seconds per measurement window (default 2).
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${SECS:-2}
. benches/server.sh
build_release
repo=$(mktemp -d)
instance='instance_group [ { count: 1 kind: KIND_CPU } ]'
for m in mlp mlp_large; do
  max=$([ "$m" = mlp ] && echo 32 || echo 64)
  for variant in adaptive fixed off; do
    mkdir -p "$repo/${m}_$variant/1"
    cp "models/repository/$m/1/model.onnx" "$repo/${m}_$variant/1/"
    batching="dynamic_batching { preferred_batch_size: [8, 16, 32] max_queue_delay_microseconds: 2000 }"
    case $variant in
      adaptive) extra="$batching" ;;
      fixed) extra="$batching
parameters { key: \"batch_window\" value: { string_value: \"fixed\" } }" ;;
      off) extra="" ;;
    esac
    printf 'max_batch_size: %s\n%s\n%s\n' "$max" "$instance" "$extra" > "$repo/${m}_$variant/config.pbtxt"
  done
done
start_server "$repo"
trap 'kill $server 2>/dev/null || true; rm -rf "$repo"' EXIT

# One measurement: prints "infer/s p50_ms p99_ms".
measure() {
  target/release/ferroserve-bench --no-progress --warmup-secs 1 --window-secs "$SECS" --max-windows 4 \
    -u "$http" -i http-binary "$@" | awk '$1 ~ /^(c=|[0-9.]+\/s)/ {print $2, $4, $7}' | tail -1
}
ratio() { echo "$1 / $2" | bc -l | xargs printf '%.2f'; }

for m in mlp mlp_large; do
  echo "== $m: closed loop (HTTP binary, batch-1 requests)"
  printf '%-6s %-28s %-28s %-28s %s\n' "" adaptive fixed off "adaptive/off p50, adaptive/fixed & /off rate"
  declare -A rate p50
  for c in 1 2 4 32; do
    line=""
    for variant in adaptive fixed off; do
      read -r r p _ < <(measure -m "${m}_$variant" --concurrency "$c")
      rate[$variant]=$r p50[$variant]=$p
      line+=$(printf '%-28s ' "$(printf '%9.0f/s p50 %6.3f ms' "$r" "$p")")
    done
    if [ "$c" = 32 ]; then
      goal="rate x$(ratio "${rate[adaptive]}" "${rate[fixed]}") of fixed, x$(ratio "${rate[adaptive]}" "${rate[off]}") of off"
      saturated=$(printf "%s\n" "${rate[adaptive]}" "${rate[fixed]}" "${rate[off]}" | sort -g | head -1)
      eval "saturated_$m=$saturated"
    else
      goal="p50 x$(ratio "${p50[adaptive]}" "${p50[off]}") of off"
    fi
    printf 'c=%-4s %s%s\n' "$c" "$line" "$goal"
  done
done

for m in mlp mlp_large; do
  eval "saturated=\$saturated_$m"
  echo "== $m: open loop, Poisson arrivals (saturated rate $(printf '%.0f' "$saturated")/s): p99 ms"
  for share in 30 80; do
    r=$(echo "$saturated * $share / 100" | bc)
    line=""
    declare -A p99
    for variant in adaptive fixed off; do
      read -r _ _ p < <(measure -m "${m}_$variant" --request-rate "$r" --distribution poisson)
      p99[$variant]=$p
      line+=$(printf '%-10s p99 %7.3f   ' "$variant" "$p")
    done
    best=$(printf '%s\n' "${p99[fixed]}" "${p99[off]}" | sort -g | head -1)
    printf '%3s%% (%6s/s)  %s adaptive / better of fixed,off: x%s\n' "$share" "$r" "$line" "$(ratio "${p99[adaptive]}" "$best")"
  done
done
for m in mlp mlp_large; do
  echo "== why $m batches ran (adaptive variant)"
  curl -sf "http://$http/v2/models/${m}_adaptive/stats" | .venv/bin/python -c \
    'import json,sys; s=json.load(sys.stdin)["model_stats"][0]; print("  ", s["batch_reasons"], "items/execution %.1f" % (s["inference_count"] / max(1, s["execution_count"])))'
done
