// Maps a runtime DType to its storage type (core/element_convert.h) and
// dispatches a generic lambda on it. Header-only; usable from .cu files.
#ifndef ASARRAY_CORE_DTYPE_DISPATCH_H_
#define ASARRAY_CORE_DTYPE_DISPATCH_H_

#include <cstdint>

#include "core/dtype.h"
#include "core/element_convert.h"

namespace asarray {

template <typename T>
struct TypeTag {
  using type = T;
};

// Calls f(TypeTag<T>{}) with T the storage type of `dtype`.
template <typename F>
decltype(auto) DispatchDType(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kBool:
      return f(TypeTag<Bool8>{});
    case DType::kUInt8:
      return f(TypeTag<uint8_t>{});
    case DType::kInt8:
      return f(TypeTag<int8_t>{});
    case DType::kInt16:
      return f(TypeTag<int16_t>{});
    case DType::kInt32:
      return f(TypeTag<int32_t>{});
    case DType::kInt64:
      return f(TypeTag<int64_t>{});
    case DType::kFloat16:
      return f(TypeTag<Half>{});
    case DType::kBFloat16:
      return f(TypeTag<BFloat16>{});
    case DType::kFloat32:
      return f(TypeTag<float>{});
    case DType::kFloat64:
      return f(TypeTag<double>{});
    case DType::kComplex64:
      return f(TypeTag<Complex64>{});
    case DType::kComplex128:
      break;
  }
  return f(TypeTag<Complex128>{});
}

}  // namespace asarray

#endif  // ASARRAY_CORE_DTYPE_DISPATCH_H_
