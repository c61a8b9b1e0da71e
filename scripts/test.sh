#!/usr/bin/env bash
# Installs what is missing, builds with warnings as errors, and runs the whole
# test suite. Exits non-zero on any failure.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
"$root/scripts/deps.sh"
BUILD_DIR="$build" "$root/scripts/build.sh" -DASARRAY_WERROR=ON
cd "$build"
status=0
ctest --output-on-failure -j "$(nproc)" || status=$?
# Each conformance runner ends with "conformance: N passed, M failed".
grep -h -B1 '^conformance:' Testing/Temporary/LastTest.log | grep -E '^(cases|conformance):' || true
exit $status
