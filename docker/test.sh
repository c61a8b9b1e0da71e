#!/usr/bin/env bash
# Builds the asarrayd image and proves a zero-copy handoff across containers:
#
# 1. Node arrangement (docker run with host directories; the Kubernetes
#    DaemonSet): a server container and a client container share a socket
#    directory and a /dev/shm, both directories of the host (the latter a fresh
#    one inside the host's /dev/shm). The client converts a .npy file with
#    copy=false, so the handle must alias the client's own region
#    (shares_memory: true), and saves the result: the bytes must match. A
#    cast makes the server create a segment of its own; once the server is
#    stopped (SIGTERM), nothing may be left in that /dev/shm.
# 2. Compose arrangement: the server runs with --ipc=shareable and the client
#    joins its IPC namespace (--ipc=container:NAME, compose's
#    ipc: "service:asarrayd"); the same copy=false conversion must alias.
#
# Uses docker when an engine answers (docker info), else podman with the flags
# these machines need (runc, cgroupfs, lowered ulimits, a chroot build). Run as
# root, the containers keep the image's non-root user and the shared
# directories are given to it; otherwise they run as the caller's uid.
#   docker/test.sh [IMAGE]      (default asarrayd:test)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
image="${1:-asarrayd:test}"
name="asarrayd-test-$$"

if docker info >/dev/null 2>&1; then
  engine=(docker)
  build=(docker build)
  run_flags=()
else
  command -v podman >/dev/null || { echo "test.sh: neither a docker engine nor podman" >&2; exit 1; }
  engine=(podman --runtime runc --cgroup-manager=cgroupfs)
  # --format docker keeps the HEALTHCHECK, which the OCI image format lacks.
  build=(podman build --isolation=chroot --network=host --pull=never --format docker --jobs 1)
  run_flags=(--ulimit nofile=1024:1024 --ulimit nproc=1000:1000)
fi

tmp="$(mktemp -d)"
shm=""
cleanup() {
  "${engine[@]}" rm -f "$name" "$name-ipc" >/dev/null 2>&1 || true
  rm -rf "$tmp" ${shm:+"$shm"}
}
trap cleanup EXIT
shm="$(mktemp -d /dev/shm/deploy-test.XXXXXX)"

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
    "$sock" "$data" "$shm"
else
  [ "${engine[0]}" = docker ] || user_flags=(--userns=keep-id)
  user_flags+=(--user "$(id -u):$(id -g)")
fi
mounts=(-v "$sock:/run/asarrayd" -v "$shm:/dev/shm")

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

# A 512x512 float32 .npy file of random bytes, written without numpy.
npy="$data/x.npy"
dict="{'descr': '<f4', 'fortran_order': False, 'shape': (512, 512), }"
payload=$((512 * 512 * 4))
hlen=$(((10 + ${#dict} + 1 + 63) / 64 * 64 - 10))
{
  printf '\x93NUMPY\x01\x00'
  printf "\\x$(printf %02x $((hlen & 255)))\\x$(printf %02x $((hlen >> 8)))"
  printf '%-*s\n' $((hlen - 1)) "$dict"
  head -c "$payload" /dev/urandom
} >"$npy"

# 1. Node arrangement.
start_server "$name" "${mounts[@]}"
uid="$("${engine[@]}" exec "$name" id -u)"
[ "$(id -u)" -ne 0 ] || [ "$uid" -ne 0 ] || fail "the server runs as root"
out="$(client "${mounts[@]}" -- convert /data/x.npy --copy false --save /data/y.npy)" ||
  fail "zero-copy convert: $out"
grep -q '"shares_memory":true' <<<"$out" || fail "no shares_memory: true in $out"
[ "$(stat -c %s "$data/y.npy")" = "$(stat -c %s "$npy")" ] &&
  cmp -s <(tail -c "$payload" "$npy") <(tail -c "$payload" "$data/y.npy") ||
  fail "the saved bytes differ from the source"
client "${mounts[@]}" -- convert /data/x.npy --dtype float64 >/dev/null || fail "cast convert"
segments="$(find "$shm" -mindepth 1 -name 'asarrayd-*' | wc -l)"
[ "$segments" -ge 1 ] || fail "the server's segment is not in the shared /dev/shm"
"${engine[@]}" stop -t 20 "$name" >/dev/null 2>"$tmp/stop.log" || fail "stop: $(cat "$tmp/stop.log")"
status="$("${engine[@]}" inspect --format '{{.State.ExitCode}}' "$name")"
[ "$status" = 0 ] || fail "asarrayd exited with $status after SIGTERM"
"${engine[@]}" logs "$name" 2>&1 | grep -q 'asarrayd: stopped' || fail "no clean shutdown"
left="$(find "$shm" -mindepth 1 | wc -l)"
[ "$left" = 0 ] || fail "left in /dev/shm: $(ls -A "$shm")"

# 2. Compose arrangement: the client joins the server's IPC namespace and so
#    its private /dev/shm; only the socket directory comes from the host.
start_server "$name-ipc" --ipc=shareable -v "$sock:/run/asarrayd"
out2="$(client --ipc="container:$name-ipc" -v "$sock:/run/asarrayd" -- \
  convert /data/x.npy --copy false)" || fail "zero-copy convert in the server's IPC namespace: $out2"
grep -q '"shares_memory":true' <<<"$out2" || fail "no shares_memory: true in $out2"
"${engine[@]}" stop -t 20 "$name-ipc" >/dev/null 2>"$tmp/stop.log" || fail "stop: $(cat "$tmp/stop.log")"

echo "test.sh: results"
echo "  engine:          ${engine[0]}"
echo "  image size:      $size bytes ($((size / 1000000)) MB) for $image"
echo "  server:          uid $uid; HEALTHCHECK (asarrayctl health) passed"
echo "  node shm:        shares_memory: true; bytes match ($payload bytes of a 512x512 float32)"
echo "  compose ipc:     shares_memory: true (--ipc=container:, as ipc: service:asarrayd)"
echo "  /dev/shm clean:  $segments server segment(s) while running, $left left after SIGTERM"
echo "test.sh: PASS"
