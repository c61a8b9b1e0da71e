// Status propagation helpers. Abseil 20220623 ships no public status macros,
// so the project keeps this small pair, prefixed so that they never clash with
// another library's RETURN_IF_ERROR. Both evaluate their argument exactly once.
#ifndef ASARRAY_CORE_STATUS_MACROS_H_
#define ASARRAY_CORE_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define ASARRAY_CONCAT_INNER_(a, b) a##b
#define ASARRAY_CONCAT_(a, b) ASARRAY_CONCAT_INNER_(a, b)

#define ASARRAY_RETURN_IF_ERROR(expr)                  \
  do {                                                 \
    ::absl::Status asarray_status_ = (expr);           \
    if (!asarray_status_.ok()) return asarray_status_; \
  } while (0)

#define ASARRAY_ASSIGN_OR_RETURN(lhs, expr) \
  ASARRAY_ASSIGN_OR_RETURN_IMPL_(ASARRAY_CONCAT_(asarray_statusor_, __LINE__), lhs, expr)

#define ASARRAY_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                                   \
  if (!statusor.ok()) return statusor.status();             \
  lhs = std::move(statusor).value()

#endif  // ASARRAY_CORE_STATUS_MACROS_H_
