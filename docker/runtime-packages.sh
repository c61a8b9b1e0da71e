#!/usr/bin/env bash
# Prints, one a line, the installed packages that provide the shared libraries
# BINARY... load, so that the runtime stage installs exactly those and their
# names need not be written down per distribution (Debian and Ubuntu differ).
# The CUDA driver library comes from the host at run time and is left out.
# Fails when a library belongs to no package.
set -euo pipefail
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }

owner() {  # the package owning a library, under either half of a merged /usr
  local lib="$1" real path
  real="$(readlink -f "$lib")"
  for path in "$lib" "/usr${lib#/usr}" "${lib#/usr}" "$real" "/usr${real#/usr}" "${real#/usr}"; do
    if dpkg-query -S "$path" 2>/dev/null | head -n1 | cut -d: -f1; then return 0; fi
  done
  echo "runtime-packages: no package provides $lib" >&2
  return 1
}

ldd "$@" | awk '$2 == "=>" && $3 ~ /^\// { print $3 }' | sort -u | {
  status=0
  while read -r lib; do
    case "$(basename "$lib")" in libcuda.so* | libnvidia-*) continue ;; esac
    owner "$lib" || status=1
  done
  exit "$status"
} | sort -u
