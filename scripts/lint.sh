#!/usr/bin/env bash
# Checks the C++ sources: clang-format (.clang-format, Google style) must
# leave every file as it is, and clang-tidy (.clang-tidy, a short list of
# checks) must find nothing. Needs a build folder with compile_commands.json
# (scripts/test.sh makes one).
#   scripts/lint.sh [BUILD_DIR]      default build/
#   scripts/lint.sh --fix            reformats the files in place instead
# clang-tidy's verdicts are cached (scripts/cache.sh: clang-tidy/), keyed by
# the file, every header of the project, the proto, the compile command, the
# configuration and the tools' and libraries' versions, so a repeated run
# checks only what changed.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
mapfile -t sources < <(git ls-files '*.cc' '*.h' '*.cu' '*.cuh')
if [[ ${1:-} == --fix ]]; then
  clang-format-14 -i "${sources[@]}"
  exit 0
fi
build="${1:-$root/build}"
status=0

unformatted=()
for f in "${sources[@]}"; do
  clang-format-14 --dry-run --Werror "$f" >/dev/null 2>&1 || unformatted+=("$f")
done
if [[ ${#unformatted[@]} -gt 0 ]]; then
  echo "lint: clang-format would change ${#unformatted[@]} files (scripts/lint.sh --fix):"
  printf '  %s\n' "${unformatted[@]}"
  status=1
fi

if [[ ! -f $build/compile_commands.json ]]; then
  echo "lint: $build/compile_commands.json is missing (configure with" \
       "-DCMAKE_EXPORT_COMPILE_COMMANDS=ON)" >&2
  exit 2
fi
source "$root/scripts/cache.sh"
cache=$(asarray_cache_dir)
verdicts="${cache:+$cache/clang-tidy}"
[[ -n $verdicts ]] && mkdir -p "$verdicts"
# What every file's verdict depends on besides itself.
common=$( {
  clang-tidy-14 --version
  dpkg-query -W -f='${Package}=${Version}\n' libgrpc++-dev libabsl-dev libprotobuf-dev libgtest-dev
  cat .clang-tidy proto/asarray/v1/*.proto
  git ls-files -z '*.h' '*.cuh' | xargs -0 cat
} | sha256sum | cut -c1-64)
# The project's .cc files that the build compiles (not the generated ones).
mapfile -t units < <(/usr/bin/python3 - "$build/compile_commands.json" "$root" <<'PY'
import json, os, sys
root = sys.argv[2] + "/"
for entry in json.load(open(sys.argv[1])):
    path = os.path.normpath(os.path.join(entry["directory"], entry["file"]))
    if path.startswith(root) and path.endswith(".cc") and "/build" not in path[len(root) - 1:]:
        print(path[len(root):])
PY
)
export build common verdicts root
check() {  # FILE: prints clang-tidy's findings; fails when there are any
  local f="$1" key
  key=$( { echo "$common"; cat "$f"
           /usr/bin/python3 -c 'import json,sys
for e in json.load(open(sys.argv[1])):
    if e["file"].endswith("/" + sys.argv[2]): print(e.get("command", e.get("arguments")))' \
             "$build/compile_commands.json" "$f"; } | sha256sum | cut -c1-64)
  [[ -n $verdicts && -f $verdicts/$key ]] && return 0
  local out
  if out=$(clang-tidy-14 -p "$build" --quiet \
             --header-filter="^$root/(core|server|client|wire|tests|bench|fuzz)/" "$f" 2>&1); then
    [[ -n $verdicts ]] && : >"$verdicts/$key"
    return 0
  fi
  echo "$out" | grep -E -A3 'warning:|error:' | grep -v '^[0-9]* warnings generated'
  return 1
}
export -f check
if ! printf '%s\n' "${units[@]}" | xargs -P "$(nproc)" -I{} bash -c 'check {}'; then
  echo "lint: clang-tidy found problems (above)"
  status=1
fi
[[ $status -eq 0 ]] && echo "lint: ${#sources[@]} files formatted, ${#units[@]} files clean under clang-tidy"
exit $status
