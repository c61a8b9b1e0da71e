#!/usr/bin/env bash
# Generates a fresh conformance file with real torch and runs a conformance
# runner on it.   run_torch_cases.sh MODE RUNNER [ARGS...]
# MODE is "random" (seed from $ASARRAY_CASES_SEED, else a new one each run,
# printed so that a failure can be replayed) or "edges".
set -euo pipefail
mode="$1"
shift
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
here="$(dirname "$0")"
if [ "$mode" = edges ]; then
  "${ASARRAY_TORCH_PYTHON:-/usr/bin/python3}" "$here/generate_cases.py" --edges --out "$dir/cases.jsonl"
else
  seed="${ASARRAY_CASES_SEED:-$(od -An -N4 -tu4 /dev/urandom | tr -d ' ')}"
  echo "generating cases with seed $seed (set ASARRAY_CASES_SEED=$seed to replay)"
  "${ASARRAY_TORCH_PYTHON:-/usr/bin/python3}" "$here/generate_cases.py" --seed "$seed" --out "$dir/cases.jsonl"
fi
ASARRAY_CONFORMANCE_CASES="$dir/cases.jsonl" "$@"
