// What every fuzz target asserts besides the sanitizers: a failure is a
// status that says something, and an invariant that does not hold aborts
// with what broke (the fuzzer then keeps the input).
#ifndef ASARRAY_FUZZ_FUZZ_CHECK_H_
#define ASARRAY_FUZZ_FUZZ_CHECK_H_

#include <cstddef>
#include <cstdio>
#include <cstdlib>

#include "absl/status/status.h"

namespace asarray::fuzz {

inline void Require(bool holds, const char* what) {
  if (!holds) {
    std::fprintf(stderr, "invariant broken: %s\n", what);
    std::abort();
  }
}

// A failed status must carry a message that says what is wrong.
inline void RequireExplained(const absl::Status& status) {
  Require(status.ok() || !status.message().empty(), "an error without a message");
}

// A status message quotes at most 128 bytes of any request value (C-escaped,
// so up to 4 characters a byte), and names a few of them: it stays well
// under this. gRPC carries it in trailing metadata, which clients cap.
inline constexpr size_t kMaxStatusMessageBytes = 1024;

// What a request may fail with, as asarray.proto's "Errors" comment lists
// the codes: explained, short, never INTERNAL (a request cannot be the
// server's fault) nor a code that list does not have. UNAVAILABLE and
// CANCELLED are left out: nothing in a fuzzer drains the server or goes away.
inline void RequireRequestStatus(const absl::Status& status) {
  if (status.ok()) return;
  const auto report = [&](const char* what) {
    std::fprintf(stderr, "invariant broken: %s: code %d, message (%zu bytes) %.*s\n", what,
                 static_cast<int>(status.code()), status.message().size(),
                 static_cast<int>(status.message().size() > 2048 ? 2048 : status.message().size()),
                 status.message().data());
    std::abort();
  };
  if (status.message().empty()) report("an error without a message");
  if (status.message().size() > kMaxStatusMessageBytes) report("an error message past 1 KiB");
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kNotFound:
    case absl::StatusCode::kPermissionDenied:
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kResourceExhausted:
      return;
    case absl::StatusCode::kInternal:
      report("INTERNAL for a request");
      return;
    default:
      report("an error code asarray.proto does not list for a request");
  }
}

}  // namespace asarray::fuzz

#endif  // ASARRAY_FUZZ_FUZZ_CHECK_H_
