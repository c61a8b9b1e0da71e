#!/usr/bin/env bash
# Builds abseil and gRPC with ThreadSanitizer, from the Debian source
# packages of exactly the versions installed, for scripts/sanitize.sh tsan.
# Debian's own builds are not instrumented: TSan then cannot see the
# synchronization inside gRPC (its mutexes, atomics and queues), and every
# object gRPC hands from one of its threads to another looks like a race.
#
#   scripts/sanitize/tsan_deps.sh CACHE
#
# Builds into CACHE/KEY, where KEY is a digest of what goes into the build:
# the installed versions of gRPC, abseil and clang, the flags, and the
# recipe's revision below. A finished CACHE/KEY is reused, by any clone on
# the machine; another KEY is built beside it (about 12 minutes on two cores).
# Concurrent runs wait for each other on CACHE/KEY.lock. Prints CACHE/KEY,
# the only line on standard output.
#
# CACHE/KEY/prefix gets abseil (shared libraries and its CMake package),
# CACHE/KEY/grpc gRPC's build tree, and CACHE/KEY/cmake a gRPCConfig.cmake with
# the targets the project links (gRPC::grpc++, gRPC::grpc++_reflection, and
# Debian's gRPC::grpc_cpp_plugin, the same version). Nothing is installed
# system-wide.
set -euo pipefail
# Bump when the recipe below changes what it builds.
revision=1
cache="$1"
jobs="${JOBS:-$(nproc)}"
exec 3>&1 1>&2  # the build's output goes to stderr; the folder alone to stdout
grpc_version="$(dpkg-query -W -f='${source:Version}' libgrpc++-dev)"
absl_version="$(dpkg-query -W -f='${source:Version}' libabsl-dev)"
clang_version="$(dpkg-query -W -f='${Version}' clang-14)"
flags="-fsanitize=thread -fno-omit-frame-pointer -g -O1"
stamp="grpc=$grpc_version abseil=$absl_version clang=$clang_version flags=$flags revision=$revision"
key="$(printf '%s' "$stamp" | sha256sum | cut -c1-16)"
out="$cache/$key"
mkdir -p "$cache"
exec 9>"$out.lock"
flock 9
if [[ -f $out/done && "$(cat "$out/done")" == "$stamp" ]]; then
  echo "tsan deps: reusing $out ($stamp)"
  echo "$out" >&3
  exit 0
fi
rm -rf "$out"
mkdir -p "$out/apt/lists/partial" "$out/apt/parts" "$out/src"

# The source packages, through a private sources list: the system's apt
# configuration is left as it is.
echo "deb-src http://deb.debian.org/debian bookworm main" >"$out/apt/sources.list"
apt_opts=(-o "Dir::Etc::sourcelist=$out/apt/sources.list" -o "Dir::Etc::sourceparts=$out/apt/parts"
          -o "Dir::State::Lists=$out/apt/lists")
apt-get "${apt_opts[@]}" update -qq
(cd "$out/src" && apt-get "${apt_opts[@]}" source --download-only -qq \
  "grpc=$grpc_version" "abseil=$absl_version")
dpkg-source -x "$out"/src/abseil_*.dsc "$out/src/abseil" >/dev/null
dpkg-source -x "$out"/src/grpc_*.dsc "$out/src/grpc" >/dev/null

common=(-G "Unix Makefiles" -DCMAKE_BUILD_TYPE=RelWithDebInfo
        -DCMAKE_C_COMPILER=clang-14 -DCMAKE_CXX_COMPILER=clang++-14
        -DCMAKE_C_FLAGS="$flags" -DCMAKE_CXX_FLAGS="$flags" -DCMAKE_CXX_STANDARD=17
        -DCMAKE_SHARED_LINKER_FLAGS=-fsanitize=thread -DCMAKE_EXE_LINKER_FLAGS=-fsanitize=thread
        -DBUILD_SHARED_LIBS=ON)

cmake -S "$out/src/abseil" -B "$out/build-abseil" "${common[@]}" \
  -DABSL_PROPAGATE_CXX_STD=ON -DBUILD_TESTING=OFF -DCMAKE_INSTALL_PREFIX="$out/prefix"
cmake --build "$out/build-abseil" -j "$jobs"
cmake --install "$out/build-abseil" >/dev/null

# Only the libraries the project links; everything else comes from Debian.
cmake -S "$out/src/grpc" -B "$out/grpc" "${common[@]}" \
  -Dabsl_DIR="$out/prefix/lib/cmake/absl" -DgRPC_ABSL_PROVIDER=package \
  -DgRPC_CARES_PROVIDER=package -DgRPC_PROTOBUF_PROVIDER=package -DgRPC_RE2_PROVIDER=package \
  -DgRPC_SSL_PROVIDER=package -DgRPC_ZLIB_PROVIDER=package -DgRPC_BUILD_TESTS=OFF \
  -DgRPC_BUILD_CSHARP_EXT=OFF -DgRPC_BUILD_GRPC_CSHARP_PLUGIN=OFF -DgRPC_BUILD_GRPC_NODE_PLUGIN=OFF \
  -DgRPC_BUILD_GRPC_OBJECTIVE_C_PLUGIN=OFF -DgRPC_BUILD_GRPC_PHP_PLUGIN=OFF \
  -DgRPC_BUILD_GRPC_PYTHON_PLUGIN=OFF -DgRPC_BUILD_GRPC_RUBY_PLUGIN=OFF
cmake --build "$out/grpc" -j "$jobs" --target grpc++ grpc++_reflection

mkdir -p "$out/cmake"
cat >"$out/cmake/gRPCConfig.cmake" <<EOF
# gRPC $grpc_version built with ThreadSanitizer (scripts/sanitize/tsan_deps.sh).
find_package(absl CONFIG REQUIRED PATHS "$out/prefix/lib/cmake/absl" NO_DEFAULT_PATH)
find_package(Protobuf REQUIRED)
set(_grpc_include "$out/src/grpc/include")
add_library(gRPC::gpr SHARED IMPORTED)
set_target_properties(gRPC::gpr PROPERTIES IMPORTED_LOCATION "$out/grpc/libgpr.so"
  INTERFACE_INCLUDE_DIRECTORIES "\${_grpc_include}")
add_library(gRPC::grpc SHARED IMPORTED)
set_target_properties(gRPC::grpc PROPERTIES IMPORTED_LOCATION "$out/grpc/libgrpc.so"
  INTERFACE_INCLUDE_DIRECTORIES "\${_grpc_include}"
  INTERFACE_LINK_LIBRARIES "gRPC::gpr;absl::synchronization;absl::status;absl::statusor")
add_library(gRPC::grpc++ SHARED IMPORTED)
set_target_properties(gRPC::grpc++ PROPERTIES IMPORTED_LOCATION "$out/grpc/libgrpc++.so"
  INTERFACE_INCLUDE_DIRECTORIES "\${_grpc_include}"
  INTERFACE_LINK_LIBRARIES "gRPC::grpc;protobuf::libprotobuf")
add_library(gRPC::grpc++_reflection SHARED IMPORTED)
set_target_properties(gRPC::grpc++_reflection PROPERTIES
  IMPORTED_LOCATION "$out/grpc/libgrpc++_reflection.so"
  INTERFACE_LINK_LIBRARIES "gRPC::grpc++")
add_executable(gRPC::grpc_cpp_plugin IMPORTED)
set_target_properties(gRPC::grpc_cpp_plugin PROPERTIES IMPORTED_LOCATION /usr/bin/grpc_cpp_plugin)
EOF
echo "$stamp" >"$out/done"
echo "tsan deps: built in $out ($stamp)"
echo "$out" >&3
