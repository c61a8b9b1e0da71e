#!/usr/bin/env bash
# Remote RPC across a real network hop: asarrayd serves mutual TLS in one
# network namespace, and the C++ client, asarrayctl and the Python client
# call it from another, across a veth pair. Exits 77 (skipped) with the
# reason when namespaces cannot be made (not root).
#   two_hosts_test.sh ASARRAYD ASARRAYCTL SECOND_HOST_CLIENT PYTHON
set -euo pipefail
asarrayd=$1 asarrayctl=$2 cpp_client=$3 python=$4
here=$(cd "$(dirname "$0")" && pwd)
source "$here/netns.sh"
why=$(netns_unavailable)
if [ -n "$why" ]; then
  echo "SKIPPED: the two-host test $why"
  exit 77
fi

work=$(mktemp -d /tmp/asarrayd-2hosts-XXXXXX)
server_pid=
stop_server() {  # SIGTERM, then SIGKILL after 10 s; its exit status
  kill "$server_pid" 2>/dev/null || return 0
  for _ in $(seq 100); do kill -0 "$server_pid" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$server_pid" 2>/dev/null
  local rc=0
  wait "$server_pid" || rc=$?
  server_pid=
  return $rc
}
cleanup() {
  [ -n "$server_pid" ] && stop_server
  netns_down
  rm -rf "$work"
}
trap cleanup EXIT
netns_up 2h
bash "$here/../../scripts/test_pki.sh" "$work/pki" "$SERVER_IP" >/dev/null 2>&1
pki=$work/pki
port=18443
address="$SERVER_IP:$port"
on_server() { ip netns exec "$SERVER_NS" "$@"; }
on_client() { ip netns exec "$CLIENT_NS" "$@"; }
fail() { echo "FAIL: $*"; exit 1; }

# Not through on_server: $! must be asarrayd itself (ip netns exec execs it).
ip netns exec "$SERVER_NS" "$asarrayd" --listen "unix:$work/s/asarrayd.sock,$address" \
  --tls_cert="$pki/server.pem" --tls_key="$pki/server.key" --tls_client_ca="$pki/ca.pem" \
  --max_message_bytes=8388608 --shm_prefix="asarrayd-2h-$$" 2>"$work/server.log" &
server_pid=$!
export ASARRAY_TLS_CA=$pki/ca.pem ASARRAY_TLS_CERT=$pki/alice.pem ASARRAY_TLS_KEY=$pki/alice.key
for _ in $(seq 200); do
  on_client "$asarrayctl" --server "$address" health >/dev/null 2>&1 && break
  kill -0 "$server_pid" 2>/dev/null || { cat "$work/server.log"; fail "asarrayd exited"; }
  sleep 0.05
done
on_client "$asarrayctl" --server "$address" health | grep -qx SERVING || fail "not serving"
echo "ok: asarrayd serves mutual TLS on $address in $SERVER_NS"

# Traffic stays inside the namespaces: each has no interface but lo and its
# end of the veth pair, and neither end, nor the subnet, is in the host's.
for ns in "$SERVER_NS" "$CLIENT_NS"; do
  links=$(ip -n "$ns" -o link show | awk -F': ' '{print $2}' | sed 's/@.*//' | sort | tr '\n' ' ')
  [ "$(echo "$links" | wc -w)" -eq 2 ] || fail "namespace $ns has links: $links"
done
if ip -o addr show | grep -q "10\.231\.0\."; then fail "the host's namespace has the subnet"; fi
if ip -o link show | grep -q "$CLIENT_IFACE"; then fail "the veth is in the host's namespace"; fi
echo "ok: the namespaces hold only lo and the veth pair"

# The C++ client.
on_client env ASARRAY_REMOTE_SERVER="$address" ASARRAY_REMOTE_PKI="$pki" "$cpp_client"
echo "ok: the C++ client"

# asarrayctl: convert (inline, as a remote client does), read, take, release.
ctl() { on_client env ASARRAY_SERVER="$address" "$asarrayctl" "$@"; }
"$python" -c "import numpy; numpy.save('$work/in.npy', numpy.arange(12, dtype='<i4').reshape(3, 4))"
handle=$(ctl convert "$work/in.npy" --dtype float64)
id=$(echo "$handle" | "$python" -c "import json, sys; print(json.load(sys.stdin)['id'])")
ctl read "$id" --save "$work/out.npy" >/dev/null
"$python" -c "
import numpy
a = numpy.load('$work/out.npy')
assert a.dtype == numpy.float64 and a.tolist() == numpy.arange(12.).reshape(3, 4).tolist(), a"
taken=$(ctl take "$id" --dtype int8 --save "$work/take.npy" |
  "$python" -c "import json, sys; print(json.load(sys.stdin)['id'])")
"$python" -c "import numpy; assert numpy.load('$work/take.npy').dtype == numpy.int8"
ctl list | grep -q "$id" || fail "alice's list lacks $id"
bob() { ASARRAY_TLS_CERT=$pki/bob.pem ASARRAY_TLS_KEY=$pki/bob.key ctl "$@"; }
[ -z "$(bob list)" ] || fail "bob lists alice's tensors"
if bob read "$id" --save "$work/bob.npy" 2>"$work/err"; then fail "bob read alice's tensor"; fi
grep -q NOT_FOUND "$work/err" || fail "bob's read: $(cat "$work/err")"
if ASARRAY_TLS_CA= ASARRAY_TLS_CERT= ASARRAY_TLS_KEY= ctl health 2>"$work/err"; then
  fail "plaintext got through"
fi
grep -q "plaintext TCP" "$work/err" || fail "plaintext refusal: $(cat "$work/err")"
if ASARRAY_TLS_CA=$pki/untrusted.pem ctl health 2>"$work/err"; then fail "untrusted CA got through"; fi
grep -q "TLS" "$work/err" || fail "untrusted refusal: $(cat "$work/err")"
ctl release "$id"
ctl release "$taken"
[ -z "$(ctl list)" ] || fail "the release left a tensor"
echo "ok: asarrayctl"

# The Python client: the remote test module, against this server, with the
# client side's interface counters for the compression check.
on_client env ASARRAY_REMOTE_SERVER="$address" ASARRAY_REMOTE_PKI="$pki" \
  ASARRAY_REMOTE_IFACE="$CLIENT_IFACE" PYTHONPATH="${PYTHONPATH:-}" ASARRAYD="$asarrayd" \
  "$python" -m pytest -q -p no:cacheprovider "$here/../python/test_remote.py"
echo "ok: the Python client"

stop_server || fail "asarrayd exited with $? (its log: $(tail -3 "$work/server.log"))"
echo "PASS"
