#!/usr/bin/env bash
# Starts the mesh of by-hand.yaml by hand, each component its own process — istiod
# (`meshsim control`), then the app and the sidecar of each of its three pods
# (`meshsim app`, `meshsim sidecar`) — sends one request through frontend-v1-0's
# sidecar to the backend service, prints the response, and stops every process.
#
#   MESHSIM=target/release/meshsim examples/by-hand.sh
#
# Every address is on loopback, 127.SLICE.x.y (SLICE: 100–249, default random).
set -euo pipefail
MESHSIM=${MESHSIM:-meshsim}
SLICE=${SLICE:-$((100 + RANDOM % 150))}
here=$(cd "$(dirname "$0")" && pwd)
scenario=$here/by-hand.yaml
logs=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$logs"
}
trap cleanup EXIT

# start NAME ARGS...: one component in the background; it stops by itself after 60s.
start() {
  local name=$1
  shift
  "$MESHSIM" "$@" --slice "$SLICE" --for 60s >"$logs/$name.log" 2>&1 &
  pids+=($!)
}

# wait_ready NAME: until the component prints its `ready:` line (10 s at most).
wait_ready() {
  for _ in $(seq 100); do
    grep -q '^ready:' "$logs/$1.log" && return 0
    sleep 0.1
  done
  echo "$1 did not get ready:" >&2
  cat "$logs/$1.log" >&2
  exit 1
}

start istiod control "$scenario"
wait_ready istiod
pods="frontend-v1-0 backend-v1-0 backend-v1-1"
for pod in $pods; do
  start "app-$pod" app "$scenario" --pod "$pod"
  start "sidecar-$pod" sidecar "$scenario" --pod "$pod"
done
for pod in $pods; do
  wait_ready "app-$pod"
  wait_ready "sidecar-$pod"
  echo "$pod: $(grep '^ready:' "$logs/sidecar-$pod.log")"
done

# frontend-v1-0's outbound listener, from the address table istiod printed.
read -r ip port < <(sed -n 's/^pod frontend-v1-0 .* outbound \([0-9.]*\):\([0-9]*\).*/\1 \2/p' "$logs/istiod.log")
echo "GET http://backend/ through frontend-v1-0's sidecar at $ip:$port"
exec 3<>"/dev/tcp/$ip/$port"
printf 'GET / HTTP/1.1\r\nHost: backend\r\nConnection: close\r\n\r\n' >&3
timeout 5 cat <&3
echo
exec 3<&-
