// Small POSIX helpers shared by the server and the client: errno as an
// absl::Status with the matching canonical code, and unguessable names.
// Thread-safe.
#ifndef ASARRAY_WIRE_POSIX_UTIL_H_
#define ASARRAY_WIRE_POSIX_UTIL_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace asarray {

// "<what>: <strerror(err)>" for a failed operation of the server's own (on
// its segments, sockets, files): NOT_FOUND, ALREADY_EXISTS,
// PERMISSION_DENIED, RESOURCE_EXHAUSTED where the errno says so, else
// INTERNAL, since the fault is the server's.
absl::Status ErrnoStatus(int err, absl::string_view what);

// The same for an operation on something a caller named or sent (a client
// segment, its descriptor): every errno maps to a code of the caller's
// class (INVALID_ARGUMENT, NOT_FOUND, PERMISSION_DENIED,
// FAILED_PRECONDITION) or, for the server's own limits, RESOURCE_EXHAUSTED.
// Never INTERNAL: a bad name is the caller's fault, not the server's.
absl::Status CallerErrnoStatus(int err, absl::string_view what);

// This process's open file descriptors (counted in /proc/self/fd) and its
// RLIMIT_NOFILE soft limit.
struct FdCounts {
  uint64_t open = 0;
  uint64_t limit = 0;
};
FdCounts CountOpenFds();

// Raises the RLIMIT_NOFILE soft limit to the hard one; returns the new soft
// limit. Every connection, client memfd and result memfd costs one.
uint64_t RaiseFdLimit();

// 128 random bits from getrandom(2), as 32 hex digits.
std::string RandomHex128();
// `count` of them, from one draw of the kernel's generator.
std::vector<std::string> RandomHex128s(size_t count);

// The whole of a small text file (a PEM certificate, say); INVALID_ARGUMENT
// naming `what` and the path when it cannot be read or is empty.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path, absl::string_view what);

}  // namespace asarray

#endif  // ASARRAY_WIRE_POSIX_UTIL_H_
