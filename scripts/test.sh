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
ctest --output-on-failure -j "$(nproc)" | tee ctest.out || status=$?
# Each conformance runner ends with "conformance: N passed, M failed".
echo "conformance runs (shared cases, torch edge cases, fresh torch cases; core, shm, inline):"
grep -h '^conformance:' Testing/Temporary/LastTest.log || true
# ctest's own summary closes the run.
grep -E 'tests passed, [0-9]+ tests failed out of' ctest.out || true
exit $status
