#!/usr/bin/env bash
# Installs what is missing, builds with warnings as errors, and runs the whole
# test suite, then the same suite under ASan+UBSan, then the server's
# concurrency tests under TSan. Exits non-zero on any failure.
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
# Runs a sanitizer stage into $build/LOG; prints the line of it that matches
# PATTERN, or the log's end and FAILED.
sanitized() {  # LOG PATTERN command...
  local log="$build/$1" pattern="$2"
  shift 2
  if "$@" >"$log" 2>&1; then
    grep -E "$pattern" "$log" || true
  else
    tail -80 "$log" >&2
    echo "FAILED (the log is $log)"
    return 1
  fi
}
# Then the whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer
# (clang 14; about 10 minutes on two cores), and the server's concurrency tests
# under ThreadSanitizer, against abseil and gRPC built with TSan from Debian's
# sources (about 15 minutes on two cores, most of it building gRPC once).
# ASARRAY_SANITIZE=0 skips both; ASARRAY_TSAN=0 skips the second.
asan=skipped
tsan=skipped
if [ "${ASARRAY_SANITIZE:-1}" != 0 ]; then
  asan=$(sanitized sanitize.out 'tests passed, [0-9]+ tests failed out of' \
         env ASAN_BUILD_DIR="$build-asan" "$root/scripts/sanitize.sh" asan) || status=1
  if [ "${ASARRAY_TSAN:-1}" != 0 ]; then
    tsan=$(sanitized tsan.out '^tsan: [0-9]+ test programs passed' \
           env TSAN_BUILD_DIR="$build-tsan" TSAN_DEPS_DIR="$build-tsan-deps" \
           "$root/scripts/sanitize.sh" tsan) || status=1
  fi
fi
echo "under ASan+UBSan: $asan"
echo "under TSan: $tsan"
# ctest's own summary closes the run.
echo "$summary"
exit $status
