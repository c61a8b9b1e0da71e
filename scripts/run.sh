#!/usr/bin/env bash
# Installs what is missing, builds, and starts asarrayd in the foreground on
# its embedded defaults (the default Unix socket, no config). Extra arguments
# go to asarrayd (see asarrayd --help). Ctrl-C or SIGTERM stop it cleanly.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
"$root/scripts/deps.sh" build
BUILD_DIR="$build" "$root/scripts/build.sh" -DASARRAY_BUILD_TESTS=OFF -DASARRAY_BUILD_BENCHMARKS=OFF >/dev/null
exec "$build/server/asarrayd" "$@"
