#!/usr/bin/env bash
# Installs the Debian 12 packages asarrayd needs, skipping those already
# installed. Safe to run again.
#   deps.sh          everything: build, tests and benchmarks
#   deps.sh test     what building and running the tests needs (no benchmark plots)
#   deps.sh build    only what building and running the server needs, and
#                    numpy for the README's Quick start (scripts/run.sh)
#   deps.sh sanitize everything, and clang 14 with its sanitizer and libFuzzer
#                    runtimes (scripts/sanitize.sh, scripts/fuzz.sh)
set -euo pipefail

packages=(
  cmake g++ make pkg-config
  libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
  libabsl-dev libgtest-dev libgmock-dev libbenchmark-dev nlohmann-json3-dev libdlpack-dev
  libzip-dev libcli11-dev libcpp-httplib-dev
  python3-numpy
)
if [ "${1:-all}" != build ]; then
  # Real torch (and numpy, above): the reference for generated conformance cases and
  # the baselines of the benchmarks. Called as /usr/bin/python3.
  # PyYAML: the deployment manifests' structural test.
  # setuptools to mypy: the Python client installed into a venv and built as a
  # wheel, offline (scripts/test.sh), and its type check.
  # curl and prometheus (promtool): the /metrics test scrapes and checks.
  # ccache: repeated test builds compile only what changed (scripts/cache.sh).
  # clang-format and clang-tidy: the C++ checks of scripts/lint.sh.
  packages+=(ccache clang-format-14 clang-tidy-14 python3 python3-torch python3-grpcio python3-protobuf python3-pytest
             python3-yaml openssl iproute2
             python3-setuptools python3-wheel python3-pip python3-venv python3-build python3-mypy
             curl prometheus)
fi
if [ "${1:-all}" = all ] || [ "${1:-all}" = sanitize ]; then
  packages+=(python3-matplotlib)
fi
if [ "${1:-all}" = sanitize ]; then
  packages+=(clang-14 libclang-rt-14-dev dpkg-dev libprotoc-dev)
fi

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "deps: all ${#packages[@]} packages present"
  exit 0
fi

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "deps: installing ${missing[*]}"
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
