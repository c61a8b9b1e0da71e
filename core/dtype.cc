#include "core/dtype.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/quote.h"

namespace asarray {
namespace {

struct DTypeInfo {
  DType dtype;
  absl::string_view name;
  absl::string_view scalar_type_name;
  size_t item_size;
  DTypeCategory category;
  uint8_t dl_code;
};

constexpr DTypeInfo kInfos[kNumDTypes] = {
    {DType::kBool, "bool", "Bool", 1, DTypeCategory::kBool, kDLBoolCode},
    {DType::kUInt8, "uint8", "Byte", 1, DTypeCategory::kUnsigned, kDLUInt},
    {DType::kInt8, "int8", "Char", 1, DTypeCategory::kSigned, kDLInt},
    {DType::kInt16, "int16", "Short", 2, DTypeCategory::kSigned, kDLInt},
    {DType::kInt32, "int32", "Int", 4, DTypeCategory::kSigned, kDLInt},
    {DType::kInt64, "int64", "Long", 8, DTypeCategory::kSigned, kDLInt},
    {DType::kFloat16, "float16", "Half", 2, DTypeCategory::kFloat, kDLFloat},
    {DType::kBFloat16, "bfloat16", "BFloat16", 2, DTypeCategory::kFloat, kDLBfloat},
    {DType::kFloat32, "float32", "Float", 4, DTypeCategory::kFloat, kDLFloat},
    {DType::kFloat64, "float64", "Double", 8, DTypeCategory::kFloat, kDLFloat},
    {DType::kComplex64, "complex64", "ComplexFloat", 8, DTypeCategory::kComplex, kDLComplex},
    {DType::kComplex128, "complex128", "ComplexDouble", 16, DTypeCategory::kComplex, kDLComplex},
};

constexpr DType kAll[kNumDTypes] = {
    DType::kBool,    DType::kUInt8,   DType::kInt8,      DType::kInt16,
    DType::kInt32,   DType::kInt64,   DType::kFloat16,   DType::kBFloat16,
    DType::kFloat32, DType::kFloat64, DType::kComplex64, DType::kComplex128,
};

const DTypeInfo& Info(DType dtype) { return kInfos[static_cast<int>(dtype)]; }

struct Alias {
  absl::string_view name;
  DType dtype;
};
constexpr Alias kAliases[] = {
    {"float", DType::kFloat32},    {"double", DType::kFloat64},     {"half", DType::kFloat16},
    {"long", DType::kInt64},       {"int", DType::kInt32},          {"short", DType::kInt16},
    {"cfloat", DType::kComplex64}, {"cdouble", DType::kComplex128},
};

}  // namespace

const DType* AllDTypes() { return kAll; }
absl::string_view DTypeName(DType dtype) { return Info(dtype).name; }
absl::string_view DTypeScalarTypeName(DType dtype) { return Info(dtype).scalar_type_name; }
size_t ItemSize(DType dtype) { return Info(dtype).item_size; }
DTypeCategory Category(DType dtype) { return Info(dtype).category; }

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  absl::string_view bare = name;
  absl::ConsumePrefix(&bare, "torch.");
  for (const DTypeInfo& info : kInfos) {
    if (bare == info.name) return info.dtype;
  }
  for (const Alias& alias : kAliases) {
    if (bare == alias.name) return alias.dtype;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype ", Quote(name),
                   "; expected one of bool, uint8, int8, int16, int32, int64, float16, "
                   "bfloat16, float32, float64, complex64, complex128"));
}

DLDataType ToDLDataType(DType dtype) {
  const DTypeInfo& info = Info(dtype);
  DLDataType out;
  out.code = info.dl_code;
  out.bits = static_cast<uint8_t>(info.item_size * 8);
  out.lanes = 1;
  return out;
}

absl::StatusOr<DType> FromDLDataType(DLDataType type) {
  if (type.lanes == 1) {
    for (const DTypeInfo& info : kInfos) {
      if (info.dl_code == type.code && info.item_size * 8 == type.bits) {
        return info.dtype;
      }
    }
  }
  return absl::InvalidArgumentError(absl::StrCat("DLPack type (code ", type.code, ", bits ",
                                                 type.bits, ", lanes ", type.lanes,
                                                 ") has no torch dtype"));
}

}  // namespace asarray
