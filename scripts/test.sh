#!/usr/bin/env bash
# Installs what is missing, builds with warnings as errors, checks the C++
# sources' format and clang-tidy's checks (scripts/lint.sh), and runs the whole
# test suite, then the Python tests against the client installed in a venv,
# then the same suite under ASan+UBSan, then the server's concurrency tests
# under TSan. Exits non-zero on any failure.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
build="${BUILD_DIR:-$root/build}"
"$root/scripts/deps.sh"
BUILD_DIR="$build" "$root/scripts/build.sh" -DASARRAY_WERROR=ON -DCMAKE_EXPORT_COMPILE_COMMANDS=ON
cd "$build"
status=0
# clang-format and clang-tidy over the C++ sources (scripts/lint.sh).
lint_status=0
"$root/scripts/lint.sh" "$build" >lint.out 2>&1 || lint_status=$?
lint=$(tail -1 lint.out)
if [ $lint_status -ne 0 ]; then
  cat lint.out >&2
  status=1
fi
ctest --output-on-failure -j "$(nproc)" | tee ctest.out || status=$?
# Each conformance runner ends with "conformance: N passed, M failed".
echo "conformance runs (shared cases, torch edge cases, fresh torch cases; core, shm, inline):"
grep -h '^conformance:' Testing/Temporary/LastTest.log || true
summary=$(grep -E 'tests passed, [0-9]+ tests failed out of' ctest.out || true)
# Runs a stage into $build/LOG; prints the line of it that matches PATTERN,
# or the log's end and FAILED.
stage() {  # LOG PATTERN command...
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
# The Python tests again, against the client as a user installs it:
# `pip install ./client/python` into a fresh venv that sees Debian's grpcio,
# protobuf, numpy and torch (offline: --no-build-isolation). Before that, a
# wheel from `python3 -m build`, so that packaging regressions fail here.
# tests/python/test_package.py checks that the venv's copy is the one
# imported; PYTHONPATH holds only tests/python, whose classes the tests'
# child processes unpickle.
installed_client() {
  local venv="$build/python-venv" wheels rc=0
  local conformance
  conformance=$(sed -n 's/^ASARRAY_CONFORMANCE_DIR:PATH=//p' "$build/CMakeCache.txt")
  wheels=$(mktemp -d)
  rm -rf "$venv"
  /usr/bin/python3 -m build --no-isolation --wheel --outdir "$wheels" "$root/client/python" &&
    /usr/bin/python3 -m zipfile -l "$wheels"/asarray_client-*.whl |
      grep -c -e asarray_client/py.typed -e asarray/v1/asarray_pb2_grpc.py | grep -qx 2 &&
    /usr/bin/python3 -m venv --system-site-packages "$venv" &&
    "$venv/bin/python" -m pip install --no-build-isolation "$root/client/python" &&
    (cd "$root" && PYTHONPATH="$root/tests/python" ASARRAYD="$build/server/asarrayd" \
       ASARRAY_CONFORMANCE_DIR="$conformance" ASARRAY_CLIENT_UNDER="$venv" \
       "$venv/bin/python" -m pytest -q -p no:cacheprovider tests/python) || rc=1
  rm -rf "$wheels"
  return $rc
}
installed=$(stage python-venv.out '^[0-9]+ passed' installed_client) || status=1
# Then the whole suite again under AddressSanitizer + UndefinedBehaviorSanitizer
# (clang 14; about 10 minutes on two cores), and the server's concurrency tests
# under ThreadSanitizer, against abseil and gRPC built with TSan from Debian's
# sources (about 12 minutes on two cores to build them, once a machine: the
# build is cached outside the clone, see scripts/cache.sh). Compiles go
# through ccache, so a repeated run compiles only what changed.
# ASARRAY_SANITIZE=0 skips both; ASARRAY_TSAN=0 skips the second.
asan=skipped
tsan=skipped
if [ "${ASARRAY_SANITIZE:-1}" != 0 ]; then
  asan=$(stage sanitize.out 'tests passed, [0-9]+ tests failed out of' \
         env ASAN_BUILD_DIR="$build-asan" "$root/scripts/sanitize.sh" asan) || status=1
  if [ "${ASARRAY_TSAN:-1}" != 0 ]; then
    tsan=$(stage tsan.out '^tsan: [0-9]+ test programs passed' \
           env TSAN_BUILD_DIR="$build-tsan" \
           "$root/scripts/sanitize.sh" tsan) || status=1
  fi
fi
echo "lint: $lint"
echo "python client, installed in a venv: $installed"
echo "under ASan+UBSan: $asan"
echo "under TSan: $tsan"
# ctest's own summary closes the run.
echo "$summary"
exit $status
