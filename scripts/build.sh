#!/usr/bin/env bash
# Configures and builds asarrayd into build/ (or $BUILD_DIR), compiling
# through ccache when it is installed (scripts/cache.sh). Extra arguments go
# to cmake's configure step.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
source "$root/scripts/cache.sh"
mapfile -t cached < <(asarray_ccache_args "$root")
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=Release "${cached[@]}" "$@"
cmake --build "$build" -j "$(nproc)"
