#!/usr/bin/env bash
# Remote figures across a veth pair with mutual TLS (as root): a 64 MiB
# upload + convert and a 64 MiB read-back, against bare gRPC streams of the
# same bytes on the same TLS channel. Prints one JSON line.
#   bench/remote_bench.sh BUILD_DIR [REPS]
set -euo pipefail
build=$1 reps=${2:-9}
here=$(cd "$(dirname "$0")" && pwd)
source "$here/../tests/remote/netns.sh"
why=$(netns_unavailable)
[ -z "$why" ] || { echo "remote_bench: $why" >&2; exit 1; }
work=$(mktemp -d /tmp/asarrayd-rbench-XXXXXX)
server_pid=
cleanup() {
  [ -n "$server_pid" ] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  netns_down
  rm -rf "$work"
}
trap cleanup EXIT
netns_up rb
bash "$here/../scripts/test_pki.sh" "$work/pki" "$SERVER_IP" >/dev/null 2>&1
ip netns exec "$SERVER_NS" "$build/bench/service_bench" --serve "$SERVER_IP:18443" \
  --pki "$work/pki" 2>"$work/server.log" &
server_pid=$!
for _ in $(seq 100); do grep -q serving "$work/server.log" && break; sleep 0.05; done
ip netns exec "$CLIENT_NS" "$build/bench/service_bench" --remote "$SERVER_IP:18443" \
  --pki "$work/pki" --reps "$reps"
