#!/usr/bin/env bash
# Builds the asarrayd image and proves a zero-copy handoff across containers:
#
# 1. Socket only (compose.yaml, the Kubernetes DaemonSet): a server container
#    and client containers share one directory of the host, the socket's, and
#    nothing else: each has its own default 64 MiB /dev/shm and IPC
#    namespace. Client A converts a 256 MiB .npy file (more than its
#    /dev/shm holds) from a memfd of its own (--via fd) with copy=false and
#    exits; client B, another container, takes that tensor by id with
#    copy=false: its handle must share memory (shares_memory: true), the
#    descriptor the server sent, and the bytes B saves must match A's file. A
#    cast makes the server create a memfd of its own. Nothing may appear in
#    any /dev/shm, and once the handles are released the server holds no
#    tensor and no byte; it then stops cleanly on SIGTERM.
# 2. Named memory, for gRPC-only clients: the server runs with
#    --ipc=shareable and the client joins its IPC namespace
#    (--ipc=container:NAME, compose's ipc: "service:asarrayd"); a copy=false
#    conversion of a named region must alias, and the cast's named segment
#    is gone after SIGTERM.
#
# Uses docker when an engine answers (docker info), else podman with the flags
# these machines need (runc, cgroupfs, lowered ulimits, a chroot build),
# installing podman, runc and debootstrap first where they are missing. Run as
# root, the containers keep the image's non-root user and the shared
# directories are given to it; otherwise they run as the caller's uid.
#   docker/test.sh [IMAGE]      (default asarrayd:test)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
image="${1:-asarrayd:test}"
name="asarrayd-test-$$"

# Installs the Debian packages named that are missing, as scripts/deps.sh
# does for the build (as root, or through sudo).
install_missing() {
  local missing=() p sudo=""
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" ||
      missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "test.sh: installing ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >/dev/null
}

if docker info >/dev/null 2>&1; then
  engine=(docker)
  build=(docker build)
  run_flags=()
else
  # No docker engine: podman, with runc (the runtime these flags need) and
  # debootstrap (for the base image, below).
  install_missing podman runc debootstrap
  engine=(podman --runtime runc --cgroup-manager=cgroupfs)
  # --format docker keeps the HEALTHCHECK, which the OCI image format lacks.
  build=(podman build --isolation=chroot --network=host --pull=never --format docker --jobs 1)
  run_flags=(--ulimit nofile=1024:1024 --ulimit nproc=1000:1000)
fi

tmp="$(mktemp -d)"
cleanup() {
  "${engine[@]}" rm -f "$name" "$name-ipc" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT

fail() {
  echo "test.sh: FAIL: $*" >&2
  for c in "$name" "$name-ipc"; do
    "${engine[@]}" inspect "$c" >/dev/null 2>&1 || continue
    "${engine[@]}" logs "$c" 2>&1 | sed "s/^/  $c: /" >&2
  done
  exit 1
}

# podman stands in where no docker engine runs, and builds with --pull=never
# since no image registry may be reachable: make debian:bookworm-slim from
# Debian's own packages when it is missing, trimmed as the published image is
# (no package caches or lists, no documentation, manuals or locales).
bootstrap_base() {
  local rootfs="$tmp/rootfs" mirror
  mirror="$(awk '/^URIs:/ { print $2; exit }' /etc/apt/sources.list.d/debian.sources)"
  echo "test.sh: no debian:bookworm-slim image; bootstrapping one from $mirror"
  debootstrap --variant=minbase bookworm "$rootfs" "$mirror" >"$tmp/debootstrap.log"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
         "$rootfs"/var/lib/apt/lists/*
  printf 'path-exclude /usr/share/%s/*\n' doc man info locale lintian \
    >"$rootfs/etc/dpkg/dpkg.cfg.d/slim"
  echo 'path-include /usr/share/doc/*/copyright' >>"$rootfs/etc/dpkg/dpkg.cfg.d/slim"
  find "$rootfs/usr/share/doc" -mindepth 1 ! -name copyright ! -type d -delete
  rm -rf "$rootfs"/usr/share/{man,info,locale,lintian}/*
  tar -C "$rootfs" -c . | podman import - docker.io/library/debian:bookworm-slim >/dev/null
  rm -rf "$rootfs"
}
if [ "${engine[0]}" = podman ] && ! podman image exists docker.io/library/debian:bookworm-slim; then
  bootstrap_base
fi

echo "test.sh: building $image with ${engine[0]}"
"${build[@]}" -t "$image" -f "$root/docker/Dockerfile" "$root"
size="$("${engine[@]}" image inspect --format '{{.Size}}' "$image")"

# Who the containers run as, and who owns the directories they share.
sock="$tmp/sock" data="$tmp/data"
mkdir -m 0700 "$sock" "$data"
user_flags=()
if [ "$(id -u)" -eq 0 ]; then
  chown "$("${engine[@]}" image inspect --format '{{.Config.User}}' "$image")" \
    "$sock" "$data"
else
  [ "${engine[0]}" = docker ] || user_flags=(--userns=keep-id)
  user_flags+=(--user "$(id -u):$(id -g)")
fi
mounts=(-v "$sock:/run/asarrayd")

# Starts a server container NAME with extra run flags; returns once the
# image's HEALTHCHECK (asarrayctl health) passes in it.
start_server() {
  local server="$1"; shift
  # Without systemd, podman logs that it cannot time the health check; this
  # function runs it instead.
  "${engine[@]}" run -d --name "$server" --network none "${run_flags[@]}" "${user_flags[@]}" \
    "$@" "$image" >/dev/null 2>"$tmp/run.log" || fail "run $server: $(cat "$tmp/run.log")"
  for _ in $(seq 150); do
    [ "$("${engine[@]}" inspect --format '{{.State.Running}}' "$server")" = true ] ||
      fail "$server exited before it was healthy"
    if [ "${engine[0]}" = podman ]; then
      "${engine[@]}" healthcheck run "$server" >/dev/null 2>&1 && return 0
    else
      [ "$(docker inspect --format '{{.State.Health.Status}}' "$server")" = healthy ] && return 0
    fi
    sleep 0.2
  done
  fail "$server not healthy"
}

# asarrayctl ARGS... in a fresh client container, with extra run flags before "--".
client() {
  local flags=()
  while [ "$1" != -- ]; do flags+=("$1"); shift; done
  shift
  "${engine[@]}" run --rm --network none --no-healthcheck "${run_flags[@]}" "${user_flags[@]}" \
    "${flags[@]}" -v "$data:/data" --entrypoint asarrayctl "$image" "$@"
}

# A float32 .npy file of ROWS x 1024 random values, written without numpy.
make_npy() {  # FILE ROWS
  local dict="{'descr': '<f4', 'fortran_order': False, 'shape': ($2, 1024), }"
  local hlen=$(((10 + ${#dict} + 1 + 63) / 64 * 64 - 10))
  {
    printf '\x93NUMPY\x01\x00'
    printf "\\x$(printf %02x $((hlen & 255)))\\x$(printf %02x $((hlen >> 8)))"
    printf '%-*s\n' $((hlen - 1)) "$dict"
    head -c $(($2 * 4096)) /dev/urandom
  } >"$1"
}
same_payload() {  # A.npy B.npy BYTES
  [ "$(stat -c %s "$1")" = "$(stat -c %s "$2")" ] && cmp -s <(tail -c "$3" "$1") <(tail -c "$3" "$2")
}
field() {  # JSON NAME: a top-level string field of one line of JSON
  sed -n 's/.*"'"$2"'":"\([^"]*\)".*/\1/p' <<<"$1"
}
shm_entries() {  # entries of the host's /dev/shm that asarrayd could have made
  find /dev/shm -mindepth 1 -maxdepth 1 \( -name 'asarrayd-*' -o -name 'asarray-client-*' \) | wc -l
}
big="$data/big.npy"
big_payload=$((256 << 20))
make_npy "$big" 65536
host_shm_before="$(shm_entries)"

# 1. Socket only.
start_server "$name" "${mounts[@]}"
uid="$("${engine[@]}" exec "$name" id -u)"
[ "$(id -u)" -ne 0 ] || [ "$uid" -ne 0 ] || fail "the server runs as root"
server_shm="$("${engine[@]}" exec "$name" df -k --output=size /dev/shm | tail -1 | tr -d ' ')"
[ "$server_shm" -le 65536 ] || fail "the server's /dev/shm is ${server_shm} KiB, not the default"
out="$(client "${mounts[@]}" -- convert /data/big.npy --via fd --copy false)" ||
  fail "A: zero-copy convert of 256 MiB from a memfd: $out"
grep -q '"shares_memory":true' <<<"$out" || fail "A: no shares_memory: true in $out"
grep -q '"kind":"fd"' <<<"$out" || fail "A: the handle's memory is no descriptor: $out"
id_a="$(field "$out" id)"
out_b="$(client "${mounts[@]}" -- take "$id_a" --copy false --save /data/big_out.npy)" ||
  fail "B: take by id: $out_b"
grep -q '"shares_memory":true' <<<"$out_b" || fail "B: no shares_memory: true in $out_b"
grep -q '"request_fd":false' <<<"$out_b" || fail "B: the memory did not come as a descriptor: $out_b"
same_payload "$big" "$data/big_out.npy" $big_payload || fail "B saw other bytes than A sent"
out_cast="$(client "${mounts[@]}" -- take "$id_a" --dtype float64)" || fail "cast: $out_cast"
grep -q '"kind":"fd"' <<<"$out_cast" || fail "the cast's memory is no descriptor: $out_cast"
inside_shm="$("${engine[@]}" exec "$name" find /dev/shm -mindepth 1 | wc -l)"
[ "$inside_shm" = 0 ] || fail "the server's /dev/shm holds $inside_shm entries"
[ "$(shm_entries)" = "$host_shm_before" ] || fail "the host's /dev/shm gained entries"
for id in "$id_a" "$(field "$out_b" id)" "$(field "$out_cast" id)"; do
  client "${mounts[@]}" -- release "$id" || fail "release $id"
done
stats="$(client "${mounts[@]}" -- stats)" || fail "stats: $stats"
grep -q '"tensors":0,' <<<"$stats" && grep -q '"bytes_in_use":0,' <<<"$stats" &&
  grep -q '"client_regions":0,' <<<"$stats" || fail "the server still holds memory: $stats"
"${engine[@]}" stop -t 20 "$name" >/dev/null 2>"$tmp/stop.log" || fail "stop: $(cat "$tmp/stop.log")"
status="$("${engine[@]}" inspect --format '{{.State.ExitCode}}' "$name")"
[ "$status" = 0 ] || fail "asarrayd exited with $status after SIGTERM"
"${engine[@]}" logs "$name" 2>&1 | grep -q 'asarrayd: stopped' || fail "no clean shutdown"
[ "$(shm_entries)" = "$host_shm_before" ] || fail "the host's /dev/shm gained entries"
rm -f "$big" "$data/big_out.npy"

# 2. Named memory: the client joins the server's IPC namespace and so its
#    private /dev/shm; only the socket directory comes from the host.
npy="$data/x.npy"
payload=$((512 * 4096))
make_npy "$npy" 512
start_server "$name-ipc" --ipc=shareable "${mounts[@]}"
out2="$(client --ipc="container:$name-ipc" "${mounts[@]}" -- \
  convert /data/x.npy --copy false --save /data/y.npy)" ||
  fail "zero-copy convert in the server's IPC namespace: $out2"
grep -q '"shares_memory":true' <<<"$out2" || fail "no shares_memory: true in $out2"
grep -q '"kind":"shm"' <<<"$out2" || fail "the handle names no segment: $out2"
same_payload "$npy" "$data/y.npy" $payload || fail "the saved bytes differ from the source"
client --ipc="container:$name-ipc" "${mounts[@]}" -- convert /data/x.npy --dtype float64 \
  >/dev/null || fail "cast convert"
segments="$("${engine[@]}" exec "$name-ipc" find /dev/shm -mindepth 1 -name 'asarrayd-*' | wc -l)"
[ "$segments" -ge 1 ] || fail "the server's segment is not in its /dev/shm"
"${engine[@]}" stop -t 20 "$name-ipc" >/dev/null 2>"$tmp/stop.log" ||
  fail "stop: $(cat "$tmp/stop.log")"
"${engine[@]}" logs "$name-ipc" 2>&1 | grep -q 'asarrayd: stopped' || fail "no clean shutdown"

echo "test.sh: results"
echo "  engine:          ${engine[0]}"
echo "  image size:      $size bytes ($((size / 1000000)) MB) for $image"
echo "  server:          uid $uid; HEALTHCHECK (asarrayctl health) passed; /dev/shm ${server_shm} KiB"
echo "  socket only:     256 MiB from A's memfd, taken by B: shares_memory: true, bytes match;"
echo "                   0 entries in any /dev/shm; 0 tensors and 0 bytes held after release"
echo "  named memory:    shares_memory: true (--ipc=container:, as ipc: service:asarrayd);"
echo "                   $segments server segment(s) while running, unlinked at SIGTERM"
echo "test.sh: PASS"
