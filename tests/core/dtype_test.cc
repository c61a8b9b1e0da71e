#include "core/dtype.h"

#include <set>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asarray {
namespace {

using ::testing::HasSubstr;

struct DTypeRow {
  DType dtype;
  const char* name;
  const char* scalar_type_name;
  size_t item_size;
  DTypeCategory category;
  uint8_t dl_code;
};

constexpr DTypeRow kRows[] = {
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

TEST(DTypeTest, AllDTypesListsEachDTypeOnceInEnumOrder) {
  std::set<DType> seen;
  for (int i = 0; i < kNumDTypes; ++i) {
    EXPECT_EQ(AllDTypes()[i], kRows[i].dtype);
    seen.insert(AllDTypes()[i]);
  }
  EXPECT_EQ(seen.size(), static_cast<size_t>(kNumDTypes));
}

TEST(DTypeTest, NamesSizesAndCategories) {
  for (const DTypeRow& row : kRows) {
    SCOPED_TRACE(row.name);
    EXPECT_EQ(DTypeName(row.dtype), row.name);
    EXPECT_EQ(DTypeScalarTypeName(row.dtype), row.scalar_type_name);
    EXPECT_EQ(ItemSize(row.dtype), row.item_size);
    EXPECT_EQ(Category(row.dtype), row.category);
    const bool is_float = row.category == DTypeCategory::kFloat;
    const bool is_complex = row.category == DTypeCategory::kComplex;
    EXPECT_EQ(IsFloatingPoint(row.dtype), is_float);
    EXPECT_EQ(IsComplex(row.dtype), is_complex);
    EXPECT_EQ(IsIntegral(row.dtype), !is_float && !is_complex);
    EXPECT_EQ(CanRequireGrad(row.dtype), is_float || is_complex);
  }
}

TEST(DTypeTest, ParsesCanonicalNamesWithAndWithoutTorchPrefix) {
  for (const DTypeRow& row : kRows) {
    SCOPED_TRACE(row.name);
    EXPECT_EQ(ParseDType(row.name).value(), row.dtype);
    EXPECT_EQ(ParseDType(std::string("torch.") + row.name).value(), row.dtype);
  }
}

TEST(DTypeTest, ParsesTorchAliases) {
  const struct {
    const char* name;
    DType dtype;
  } kAliases[] = {
      {"float", DType::kFloat32},
      {"double", DType::kFloat64},
      {"half", DType::kFloat16},
      {"long", DType::kInt64},
      {"int", DType::kInt32},
      {"short", DType::kInt16},
      {"cfloat", DType::kComplex64},
      {"cdouble", DType::kComplex128},
      {"torch.float", DType::kFloat32},
      {"torch.long", DType::kInt64},
      {"torch.cdouble", DType::kComplex128},
  };
  for (const auto& alias : kAliases) {
    SCOPED_TRACE(alias.name);
    EXPECT_EQ(ParseDType(alias.name).value(), alias.dtype);
  }
}

TEST(DTypeTest, RejectsUnknownNamesNamingThem) {
  for (const char* name :
       {"float128", "Float", "torch.", "", "torch.torch.float", " int8", "quint8", "cfloat32"}) {
    SCOPED_TRACE(name);
    absl::StatusOr<DType> parsed = ParseDType(name);
    ASSERT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr(std::string("'") + name + "'"));
  }
}

TEST(DTypeTest, DLPackCodesAndBits) {
  for (const DTypeRow& row : kRows) {
    SCOPED_TRACE(row.name);
    const DLDataType dl = ToDLDataType(row.dtype);
    EXPECT_EQ(dl.code, row.dl_code);
    EXPECT_EQ(dl.bits, row.item_size * 8);
    EXPECT_EQ(dl.lanes, 1);
  }
}

TEST(DTypeTest, DLPackRoundTripsEveryDType) {
  for (const DTypeRow& row : kRows) {
    SCOPED_TRACE(row.name);
    EXPECT_EQ(FromDLDataType(ToDLDataType(row.dtype)).value(), row.dtype);
  }
}

TEST(DTypeTest, DLPackRejectsVectorLanes) {
  for (const DTypeRow& row : kRows) {
    SCOPED_TRACE(row.name);
    DLDataType dl = ToDLDataType(row.dtype);
    for (uint16_t lanes : {0, 2, 4}) {
      dl.lanes = lanes;
      EXPECT_EQ(FromDLDataType(dl).status().code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(DTypeTest, DLPackRejectsUnknownCodesAndWidths) {
  const DLDataType kUnsupported[] = {
      {kDLFloat, 8, 1},         {kDLFloat, 128, 1}, {kDLUInt, 16, 1},    {kDLUInt, 64, 1},
      {kDLInt, 128, 1},         {kDLBfloat, 32, 1}, {kDLComplex, 32, 1}, {kDLBoolCode, 16, 1},
      {kDLOpaqueHandle, 64, 1}, {99, 32, 1},
  };
  for (const DLDataType& dl : kUnsupported) {
    SCOPED_TRACE(testing::Message() << "code " << int{dl.code} << " bits " << int{dl.bits});
    absl::StatusOr<DType> parsed = FromDLDataType(dl);
    ASSERT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr("has no torch dtype"));
  }
}

}  // namespace
}  // namespace asarray
