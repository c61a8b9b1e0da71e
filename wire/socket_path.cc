#include "wire/socket_path.h"

#include <unistd.h>

#include <cstdlib>

#include "absl/strings/str_cat.h"

namespace asarray {

std::string DefaultSocketPath() {
  const char* runtime = std::getenv("XDG_RUNTIME_DIR");
  if (runtime != nullptr && runtime[0] == '/') {
    return absl::StrCat(runtime, "/asarrayd/asarrayd.sock");
  }
  return absl::StrCat("/tmp/asarrayd-", geteuid(), "/asarrayd.sock");
}

std::string DefaultAddress() { return absl::StrCat("unix:", DefaultSocketPath()); }

}  // namespace asarray
