#!/usr/bin/env bash
# Builds with clang 14 under sanitizers and runs the tests:
#   asan  (the default) the whole suite under AddressSanitizer +
#         UndefinedBehaviorSanitizer (build-asan/): every ctest test, the
#         Python client's included, and each fuzz target on its seeds. A
#         clean build and run take about half an hour on two cores.
#   tsan  the server's concurrency tests (service, upload decoding, faults,
#         segment pool, bad input, metrics, a short load run) under ThreadSanitizer
#         (build-tsan/). Debian's gRPC and abseil are not built with TSan, and
#         TSan cannot see the synchronization inside an uninstrumented
#         library: every object gRPC hands between its threads would look
#         like a race. So scripts/sanitize/tsan_deps.sh first builds both,
#         with TSan, from Debian's source packages of the installed versions,
#         and the tests link those. That build (about 12 minutes on two
#         cores) is kept in the cache outside the clone (scripts/cache.sh:
#         tsan-deps/, keyed by the package versions and the flags), so only
#         the first run on a machine pays for it.
# The CUDA backend is left out (nvcc does not build with these flags, and its
# tests need a GPU); everything else is instrumented.
# Any sanitizer report fails the test that triggered it; the script exits
# non-zero when a test failed. Extra arguments go to ctest (e.g. -R Faults).
# The build directories may be set with ASAN_BUILD_DIR, TSAN_BUILD_DIR and
# TSAN_DEPS_DIR (the folder that holds the keyed builds of the dependencies).
# Compiles go through ccache when it is installed (scripts/cache.sh).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/deps.sh" sanitize
mode="${1:-asan}"
[[ $# -gt 0 ]] && shift
if [[ $mode != asan && $mode != tsan ]]; then
  echo "usage: scripts/sanitize.sh [asan|tsan] [ctest arguments]" >&2
  exit 2
fi
jobs="${JOBS:-$(nproc)}"

source "$root/scripts/cache.sh"
mapfile -t cached < <(asarray_ccache_args "$root")

configure() {  # build-dir, sanitizer flags, extra cmake arguments
  local flags="-fsanitize=$2 -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
  cmake -S "$root" -B "$1" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${cached[@]}" \
    -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 \
    -DASARRAY_WERROR=ON -DASARRAY_BUILD_BENCHMARKS=OFF -DASARRAY_CUDA=OFF \
    -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
    -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=$2" -DCMAKE_SHARED_LINKER_FLAGS="-fsanitize=$2" "${@:3}"
}

status=0

if [[ $mode == asan ]]; then
  build="${ASAN_BUILD_DIR:-$root/build-asan}"
  # With the fuzz targets, which replay their seeds as tests (fuzz/CMakeLists.txt).
  configure "$build" address,undefined -DASARRAY_BUILD_FUZZERS=ON
  cmake --build "$build" -j "$jobs"
  # gRPC, protobuf and abseil come uninstrumented from Debian; their
  # process-lifetime singletons are not leaks.
  export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:strict_string_checks=1:detect_stack_use_after_return=1"
  export LSAN_OPTIONS="suppressions=$root/scripts/sanitize/lsan.supp:print_suppressions=0"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  (cd "$build" && ctest --output-on-failure -j "$jobs" --timeout 1800 "$@") || status=1
fi

if [[ $mode == tsan ]]; then
  build="${TSAN_BUILD_DIR:-$root/build-tsan}"
  cache=$(asarray_cache_dir)
  deps="${TSAN_DEPS_DIR:-${cache:+$cache/tsan-deps}}"
  deps="${deps:-$root/build-tsan-deps}"  # no cache: beside the build
  deps=$(JOBS="$jobs" "$root/scripts/sanitize/tsan_deps.sh" "$deps")
  configure "$build" thread -DgRPC_DIR="$deps/cmake" -Dabsl_DIR="$deps/prefix/lib/cmake/absl"
  targets=(service_test upload_message_test fault_test segment_pool_test bad_input_test load_test
           metrics_test)
  cmake --build "$build" -j "$jobs" --target "${targets[@]}"
  export TSAN_OPTIONS="halt_on_error=1:second_deadlock_stack=1:suppressions=$root/scripts/sanitize/tsan.supp"
  # The load test briefly (heap flatness is not judged under 10 s: TSan's
  # shadow memory grows with every byte touched).
  for t in "${targets[@]}"; do
    echo "tsan: $t"
    ASARRAY_LOAD_SECONDS=10 ASARRAY_LOAD_CLIENTS=16 "$build/tests/server/$t" || status=1
  done
  [[ $status -eq 0 ]] && echo "tsan: ${#targets[@]} test programs passed, no reports"
fi

exit $status
