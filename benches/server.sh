# Sourced by the bench scripts (from the repository root).
# build_release: installs the Python side, points ORT_DYLIB_PATH at the wheel's library, builds the release
#   binaries (ferroserve, ferroserve-bench, ort_throughput).
# start_server REPO [ARGS...]: starts a release ferroserve on free loopback ports, waits until it is ready,
#   and sets $server (pid), $http and $grpc (host:port). The caller's EXIT trap should kill $server.
#   $SERVER_BIN, when set, is the binary to start instead of target/release/ferroserve (a baseline build).
#   $SERVER_CPUS, when set, pins the server to those CPUs (a taskset list such as 0 or 0-3), so that a load
#   generator pinned elsewhere does not take its cores.
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
