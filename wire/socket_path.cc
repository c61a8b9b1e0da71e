#include "wire/socket_path.h"

#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "asarray/v1/asarray.pb.h"

namespace asarray {

// The paths are the proto's options, which clients read from their stubs too.
std::string DefaultSocketPath() {
  const google::protobuf::FileOptions& options = v1::DType_descriptor()->file()->options();
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  if (runtime != nullptr && runtime[0] == '/') {
    return absl::StrCat(runtime, "/", options.GetExtension(v1::default_socket_in_runtime_dir));
  }
  return absl::StrReplaceAll(options.GetExtension(v1::default_socket_otherwise),
                             {{"{uid}", absl::StrCat(geteuid())}});
}

std::string DefaultAddress() { return absl::StrCat("unix:", DefaultSocketPath()); }

}  // namespace asarray
