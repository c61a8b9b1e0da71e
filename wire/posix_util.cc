#include "wire/posix_util.h"

#include <dirent.h>
#include <errno.h>
#include <sys/random.h>
#include <sys/resource.h>

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"

namespace asarray {

FdCounts CountOpenFds() {
  FdCounts counts;
  if (DIR* dir = opendir("/proc/self/fd"); dir != nullptr) {
    while (const dirent* e = readdir(dir)) {
      if (e->d_name[0] != '.') ++counts.open;
    }
    closedir(dir);
    --counts.open;  // the directory's own descriptor
  }
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) == 0) counts.limit = limit.rlim_cur;
  return counts;
}

uint64_t RaiseFdLimit() {
  rlimit limit{};
  if (getrlimit(RLIMIT_NOFILE, &limit) != 0) return 0;
  if (limit.rlim_cur < limit.rlim_max) {
    rlimit raised = limit;
    raised.rlim_cur = limit.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) limit = raised;
  }
  return limit.rlim_cur;
}

absl::Status ErrnoStatus(int err, absl::string_view what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EEXIST:
      return absl::AlreadyExistsError(message);
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(message);
    case ENOSPC:
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case EFBIG:
      return absl::ResourceExhaustedError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status CallerErrnoStatus(int err, absl::string_view what) {
  const std::string message = absl::StrCat(what, ": ", std::strerror(err));
  switch (err) {
    case ENOENT:
      return absl::NotFoundError(message);
    case EACCES:
    case EPERM:
    case EROFS:
      return absl::PermissionDeniedError(message);
    case ENOMEM:
    case EMFILE:
    case ENFILE:
    case ENOSPC:
    case EOVERFLOW:
    case EFBIG:
      return absl::ResourceExhaustedError(message);
    // What the name or descriptor is, not what it is in use for: a symlink,
    // a directory, a socket or device, a name too long or not a path.
    case ELOOP:
    case EISDIR:
    case ENOTDIR:
    case ENXIO:
    case ENODEV:
    case ENAMETOOLONG:
    case EINVAL:
    case EBADF:
    case ESPIPE:
    case ENOTSOCK:
    case EOPNOTSUPP:
    case EFAULT:
      return absl::InvalidArgumentError(message);
    // Anything else (EBUSY, ETXTBSY, EAGAIN, EIO, ...) is the state the
    // caller's object is in.
    default:
      return absl::FailedPreconditionError(message);
  }
}

std::vector<std::string> RandomHex128s(size_t count) {
  std::vector<unsigned char> bytes(16 * count);
  size_t got = 0;
  while (got < bytes.size()) {
    const ssize_t n = getrandom(bytes.data() + got, bytes.size() - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  static const char kHex[] = "0123456789abcdef";
  std::vector<std::string> out(count, std::string(32, '0'));
  for (size_t k = 0; k < count; ++k) {
    for (size_t i = 0; i < 16; ++i) {
      const unsigned char b = bytes[16 * k + i];
      out[k][2 * i] = kHex[b >> 4];
      out[k][2 * i + 1] = kHex[b & 15];
    }
  }
  return out;
}

std::string RandomHex128() { return std::move(RandomHex128s(1).front()); }

absl::StatusOr<std::string> ReadSmallFile(const std::string& path, absl::string_view what) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  if (!(text << in.rdbuf()) || text.str().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("cannot read the ", what, " file '", path, "'"));
  }
  return text.str();
}

}  // namespace asarray
