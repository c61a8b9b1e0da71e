#!/usr/bin/env bash
# Installs what is missing, builds with warnings as errors, and runs the whole
# test suite, then the same suite under ASan+UBSan. Exits non-zero on any failure.
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
summary=$(grep -E 'tests passed, [0-9]+ tests failed out of' ctest.out || true)
# Then the whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer
# (clang 14; about 10 minutes on two cores). ASARRAY_SANITIZE=0 skips it.
sanitized=skipped
if [ "${ASARRAY_SANITIZE:-1}" != 0 ]; then
  if ASAN_BUILD_DIR="$build-asan" "$root/scripts/sanitize.sh" asan >"$build/sanitize.out" 2>&1; then
    sanitized=$(grep -E 'tests passed, [0-9]+ tests failed out of' "$build/sanitize.out" || true)
  else
    status=1
    tail -60 "$build/sanitize.out"
    sanitized="FAILED (the log is $build/sanitize.out)"
  fi
fi
echo "under ASan+UBSan: $sanitized"
# ctest's own summary closes the run.
echo "$summary"
exit $status
