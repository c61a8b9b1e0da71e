#!/usr/bin/env bash
# Builds the libFuzzer targets with clang 14 under AddressSanitizer and
# UndefinedBehaviorSanitizer (build-fuzz/, or $FUZZ_BUILD_DIR) and runs each
# for $FUZZ_SECONDS (default 600) from its committed seeds in fuzz/corpus/.
#   scripts/fuzz.sh [layout|request|upload_message|literal|npy ...]   (default: all five)
# Inputs the fuzzer finds go to build-fuzz/corpus/<target>/ (the committed
# seeds are never written); a crash is saved to build-fuzz/crashes/<target>/
# and fails the script. Each target's line of executions and crashes is
# printed at the end. Targets run one after another unless FUZZ_PARALLEL=1.
# Every target runs with -use_value_profile=1, and with -dict=fuzz/<target>.dict
# when that file exists. The request target drives the whole service (Convert,
# ConvertToData, Read, Renew, Release, uploads and the local transport, with
# descriptors attached) with a short
# program of calls per input; see fuzz/request_fuzzer.cc for its format.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/deps.sh" sanitize
build="${FUZZ_BUILD_DIR:-$root/build-fuzz}"
seconds="${FUZZ_SECONDS:-600}"
targets=("$@")
[[ ${#targets[@]} -eq 0 ]] && targets=(layout request upload_message literal npy)

flags="-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -g"
cmake -S "$root" -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14 -DASARRAY_WERROR=ON \
  -DASARRAY_BUILD_TESTS=OFF -DASARRAY_BUILD_BENCHMARKS=OFF -DASARRAY_BUILD_FUZZERS=ON -DASARRAY_CUDA=OFF \
  -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_C_FLAGS="$flags" \
  -DCMAKE_EXE_LINKER_FLAGS="-fsanitize=address,undefined"
cmake --build "$build" -j "${JOBS:-$(nproc)}" --target "${targets[@]/%/_fuzzer}"

export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
run() {  # target
  local t=$1
  mkdir -p "$build/corpus/$t" "$build/crashes/$t"
  local dict=()
  [[ -f "$root/fuzz/$t.dict" ]] && dict=(-dict="$root/fuzz/$t.dict")
  "$build/fuzz/${t}_fuzzer" -max_total_time="$seconds" -print_final_stats=1 -rss_limit_mb=2048 \
    -use_value_profile=1 "${dict[@]}" \
    -artifact_prefix="$build/crashes/$t/" "$build/corpus/$t" "$root/fuzz/corpus/$t" \
    >"$build/$t.log" 2>&1
}
status=0
pids=()
for t in "${targets[@]}"; do
  if [[ ${FUZZ_PARALLEL:-0} == 1 ]]; then run "$t" & pids+=($!); else run "$t" || status=1; fi
done
for p in "${pids[@]}"; do wait "$p" || status=1; done
# The request target's segments live under this prefix; none may outlive it.
rm -f /dev/shm/asarrayd-fuzz-* 2>/dev/null || true

for t in "${targets[@]}"; do
  execs=$(grep -ho 'stat::number_of_executed_units: *[0-9]*' "$build/$t.log" | grep -o '[0-9]*$' || echo "?")
  rate=$(grep -ho 'stat::average_exec_per_sec: *[0-9]*' "$build/$t.log" | grep -o '[0-9]*$' || echo "?")
  crashes=$(find "$build/crashes/$t" -type f | wc -l)
  echo "fuzz $t: ${execs} executions in ${seconds} s (${rate}/s), ${crashes} crashes, corpus $(ls "$build/corpus/$t" | wc -l) new inputs"
  [[ $crashes -eq 0 ]] || status=1
done
exit $status
