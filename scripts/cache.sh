# Sourced by the build scripts: a cache that the builds on one machine share,
# outside any clone, so that a second run (a fresh clone included) does not
# redo work whose inputs have not changed.
#   ASARRAY_CACHE_DIR  where it lives; by default /var/cache/asarrayd when that
#                      can be written, else ${XDG_CACHE_HOME:-~/.cache}/asarrayd
#   ASARRAY_CACHE=0    no cache: every build starts from nothing
# It holds ccache's objects (ccache/, when ccache is installed) and the
# sanitizer builds of gRPC and abseil (tsan-deps/, scripts/sanitize/tsan_deps.sh).
# Both are keyed by what went into them, so a stale entry is never used:
# ccache hashes each compiler invocation, and tsan-deps/ is keyed by the
# installed package versions and the build flags. Removing the folder is
# always safe.

# Prints the cache folder, creating it; prints nothing when caching is off
# or no folder can be written.
asarray_cache_dir() {
  [[ ${ASARRAY_CACHE:-1} == 0 ]] && return 0
  local dir
  for dir in "${ASARRAY_CACHE_DIR:-}" /var/cache/asarrayd "${XDG_CACHE_HOME:-$HOME/.cache}/asarrayd"; do
    [[ -n $dir ]] || continue
    if mkdir -p "$dir" 2>/dev/null && [[ -w $dir ]]; then
      echo "$dir"
      return 0
    fi
    [[ -n ${ASARRAY_CACHE_DIR:-} ]] && break  # a folder asked for is not replaced by another
  done
  echo "cache: no writable folder (set ASARRAY_CACHE_DIR); building without one" >&2
}

# Prints cmake arguments that compile through ccache into the cache, one per
# line; without ccache or a cache, arguments that drop any launcher. The settings travel in the
# launcher command itself, so a later `cmake --build` by hand uses the same
# cache. Paths under the source tree are hashed relative to it, so a clone
# elsewhere hits the same entries (the debug info of such an object then
# names the files of the clone that compiled it first).
asarray_ccache_args() {  # source-root
  local cache launcher="" lang
  cache=$(asarray_cache_dir)
  if [[ -n $cache ]] && command -v ccache >/dev/null; then
    launcher="env;CCACHE_DIR=$cache/ccache;CCACHE_BASEDIR=$1;CCACHE_NOHASHDIR=true;ccache"
  fi
  for lang in C CXX CUDA; do
    if [[ -n $launcher ]]; then
      echo "-DCMAKE_${lang}_COMPILER_LAUNCHER=$launcher"
    else
      echo "-UCMAKE_${lang}_COMPILER_LAUNCHER"  # a build folder that had one forgets it
    fi
  done
}
