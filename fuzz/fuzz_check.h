// What every fuzz target asserts besides the sanitizers: a failure is a
// status that says something, and an invariant that does not hold aborts
// with what broke (the fuzzer then keeps the input).
#ifndef ASARRAY_FUZZ_FUZZ_CHECK_H_
#define ASARRAY_FUZZ_FUZZ_CHECK_H_

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

}  // namespace asarray::fuzz

#endif  // ASARRAY_FUZZ_FUZZ_CHECK_H_
