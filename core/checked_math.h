// Overflow-checked int64 arithmetic. Each returns false, leaving *out
// unspecified, when the exact result does not fit.
#ifndef ASARRAY_CORE_CHECKED_MATH_H_
#define ASARRAY_CORE_CHECKED_MATH_H_

#include <cstdint>

namespace asarray {

inline bool CheckedAdd(int64_t a, int64_t b, int64_t* out) {
  return !__builtin_add_overflow(a, b, out);
}

inline bool CheckedMul(int64_t a, int64_t b, int64_t* out) {
  return !__builtin_mul_overflow(a, b, out);
}

}  // namespace asarray

#endif  // ASARRAY_CORE_CHECKED_MATH_H_
