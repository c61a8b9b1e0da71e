# Two "hosts" on one machine: network namespaces joined by a veth pair,
# each with its own loopback and nothing else. Sourced by the two-host test
# and the remote benchmark; needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN).
#   netns_up TAG   makes them; sets SERVER_NS, CLIENT_NS, SERVER_IP,
#                  CLIENT_IP, CLIENT_IFACE
#   netns_down     removes them (and the veth pair with them)
netns_up() {
  SERVER_NS="asd-$1-srv-$$"
  CLIENT_NS="asd-$1-cli-$$"
  SERVER_IP=10.231.0.1
  CLIENT_IP=10.231.0.2
  CLIENT_IFACE=asdc$$
  local server_iface=asds$$
  ip netns add "$SERVER_NS"
  ip netns add "$CLIENT_NS"
  ip link add "$server_iface" type veth peer name "$CLIENT_IFACE"
  ip link set "$server_iface" netns "$SERVER_NS"
  ip link set "$CLIENT_IFACE" netns "$CLIENT_NS"
  ip -n "$SERVER_NS" addr add "$SERVER_IP/24" dev "$server_iface"
  ip -n "$CLIENT_NS" addr add "$CLIENT_IP/24" dev "$CLIENT_IFACE"
  for ns in "$SERVER_NS" "$CLIENT_NS"; do ip -n "$ns" link set lo up; done
  ip -n "$SERVER_NS" link set "$server_iface" up
  ip -n "$CLIENT_NS" link set "$CLIENT_IFACE" up
}

netns_down() {
  [ -n "${SERVER_NS:-}" ] && ip netns del "$SERVER_NS" 2>/dev/null
  [ -n "${CLIENT_NS:-}" ] && ip netns del "$CLIENT_NS" 2>/dev/null
  return 0
}

# Why two hosts cannot be made here, or nothing when they can.
netns_unavailable() {
  if [ "$(id -u)" -ne 0 ]; then echo "needs root to make network namespaces"; return; fi
  if ! command -v ip >/dev/null; then echo "needs ip (iproute2)"; return; fi
  local probe="asd-probe-$$"
  if ! ip netns add "$probe" 2>/dev/null; then
    echo "cannot make a network namespace here"
    return
  fi
  ip netns del "$probe"
}
