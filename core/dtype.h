// The twelve torch dtypes that asarrayd supports, and what is known about each:
// its name as torch spells it, item size, category and DLPack type code.
// Everything here is constant data; all functions are thread-safe.
#ifndef ASARRAY_CORE_DTYPE_H_
#define ASARRAY_CORE_DTYPE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "dlpack/dlpack.h"

namespace asarray {

// Order matches nothing external; never persist the numeric values.
enum class DType : uint8_t {
  kBool,
  kUInt8,
  kInt8,
  kInt16,
  kInt32,
  kInt64,
  kFloat16,
  kBFloat16,
  kFloat32,
  kFloat64,
  kComplex64,
  kComplex128,
};

inline constexpr int kNumDTypes = 12;

enum class DTypeCategory : uint8_t { kBool, kUnsigned, kSigned, kFloat, kComplex };

// All dtypes, in enum order, for tests and tables.
const DType* AllDTypes();

// "float32", "bfloat16", ... as torch prints them without the "torch." prefix.
absl::string_view DTypeName(DType dtype);

// torch's ScalarType name ("Float", "BFloat16", "ComplexDouble"), used in
// messages so that they read like torch's own.
absl::string_view DTypeScalarTypeName(DType dtype);

size_t ItemSize(DType dtype);
DTypeCategory Category(DType dtype);

inline bool IsFloatingPoint(DType d) { return Category(d) == DTypeCategory::kFloat; }
inline bool IsComplex(DType d) { return Category(d) == DTypeCategory::kComplex; }
// bool and the integer dtypes.
inline bool IsIntegral(DType d) { return !IsFloatingPoint(d) && !IsComplex(d); }
// Whether a tensor of this dtype may require gradients (torch: floating or complex).
inline bool CanRequireGrad(DType d) { return IsFloatingPoint(d) || IsComplex(d); }

// Accepts the canonical names above, torch's aliases ("float", "double",
// "half", "long", "int", "short", "cfloat", "cdouble", "uint8", ...) and an
// optional "torch." prefix. INVALID_ARGUMENT names the unknown string.
absl::StatusOr<DType> ParseDType(absl::string_view name);

// DLPack codes. Bool uses kDLBool (code 6) from DLPack 0.8; older headers do
// not name it.
inline constexpr uint8_t kDLBoolCode = 6;
DLDataType ToDLDataType(DType dtype);
absl::StatusOr<DType> FromDLDataType(DLDataType type);

}  // namespace asarray

#endif  // ASARRAY_CORE_DTYPE_H_
