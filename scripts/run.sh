#!/usr/bin/env bash
# Installs what is missing, builds, and runs the core demo on a literal.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
"$root/scripts/deps.sh"
"$root/scripts/build.sh" >/dev/null
"${BUILD_DIR:-$root/build}/core/asarray_demo" "${@:-[[1, 2.5], [3, 4]]}"
