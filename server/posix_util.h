// Small POSIX helpers shared by the server and the client: errno as an
// absl::Status with the matching canonical code, and unguessable names.
// Thread-safe.
#ifndef ASARRAY_SERVER_POSIX_UTIL_H_
#define ASARRAY_SERVER_POSIX_UTIL_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace asarray {

// "<what>: <strerror(err)>" with the code a caller can act on: NOT_FOUND,
// ALREADY_EXISTS, PERMISSION_DENIED, RESOURCE_EXHAUSTED, else INTERNAL.
absl::Status ErrnoStatus(int err, absl::string_view what);

// 128 random bits from getrandom(2), as 32 hex digits.
std::string RandomHex128();

}  // namespace asarray

#endif  // ASARRAY_SERVER_POSIX_UTIL_H_
