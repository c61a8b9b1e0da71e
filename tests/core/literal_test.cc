#include "core/literal.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <string>
#include <vector>

#include "core/element_convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asarray {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

Literal L(std::vector<Literal> items) { return Literal::List(std::move(items)); }
Literal I(int64_t v) { return Literal::Int(v); }
Literal F(double v) { return Literal::Float(v); }
Literal B(bool v) { return Literal::Bool(v); }
Literal C(double re, double im) { return Literal::Complex(re, im); }

// `depth` nested lists around a single 1.
Literal Nested(int depth) {
  Literal l = I(1);
  for (int i = 0; i < depth; ++i) l = L({std::move(l)});
  return l;
}

// Stores `literal` as `dtype` and returns the elements, or the status.
template <typename T>
absl::StatusOr<std::vector<T>> Store(const Literal& literal, DType dtype) {
  absl::StatusOr<LiteralInfo> info = AnalyzeLiteral(literal, dtype);
  if (!info.ok()) return info.status();
  std::vector<T> out(NumElements(info->shape).value());
  absl::Status s = StoreLiteral(literal, *info, out.data());
  if (!s.ok()) return s;
  return out;
}

// Validation alone (dst null) must agree with a real store.
absl::Status Validate(const Literal& literal, DType dtype) {
  absl::StatusOr<LiteralInfo> info = AnalyzeLiteral(literal, dtype);
  if (!info.ok()) return info.status();
  return StoreLiteral(literal, *info, nullptr);
}

TEST(LiteralTest, Accessors) {
  EXPECT_EQ(B(true).kind(), Literal::Kind::kBool);
  EXPECT_TRUE(B(true).bool_value());
  EXPECT_EQ(I(-7).int_value(), -7);
  EXPECT_EQ(F(2.5).float_value(), 2.5);
  EXPECT_EQ(C(1, 2).float_value(), 1);
  EXPECT_EQ(C(1, 2).imag_value(), 2);
  EXPECT_EQ(L({I(1), I(2)}).items().size(), 2u);
  EXPECT_EQ(Literal::Invalid("null").invalid_description(), "null");
  EXPECT_EQ(Literal::Invalid("null").kind(), Literal::Kind::kInvalid);
}

struct InferCase {
  const char* name;
  Literal literal;
  DType dtype;
  Dims shape;
};

TEST(AnalyzeLiteralTest, InfersDTypeAndShapeLikeTorch) {
  const InferCase kCases[] = {
      {"scalar bool", B(true), DType::kBool, {}},
      {"scalar int", I(3), DType::kInt64, {}},
      {"scalar float", F(3), DType::kFloat32, {}},
      {"scalar complex", C(0, 1), DType::kComplex64, {}},
      {"all bool", L({B(true), B(false)}), DType::kBool, {2}},
      {"int and bool", L({B(true), I(2)}), DType::kInt64, {2}},
      {"float among ints", L({L({I(1), I(2)}), L({I(3), F(4)})}), DType::kFloat32, {2, 2}},
      {"bool and float", L({B(true), F(2)}), DType::kFloat32, {2}},
      {"complex among floats", L({F(1), C(2, 0), I(3)}), DType::kComplex64, {3}},
      {"complex first", L({C(2, 0), F(1)}), DType::kComplex64, {2}},
      {"empty", L({}), DType::kFloat32, {0}},
      {"two empties", L({L({}), L({})}), DType::kFloat32, {2, 0}},
      {"deep", Nested(5), DType::kInt64, {1, 1, 1, 1, 1}},
  };
  for (const InferCase& c : kCases) {
    SCOPED_TRACE(c.name);
    absl::StatusOr<LiteralInfo> info = AnalyzeLiteral(c.literal, std::nullopt);
    ASSERT_TRUE(info.ok()) << info.status();
    EXPECT_EQ(info->dtype, c.dtype);
    EXPECT_EQ(info->shape, c.shape);
  }
}

TEST(AnalyzeLiteralTest, RequestedDTypeWins) {
  absl::StatusOr<LiteralInfo> info = AnalyzeLiteral(L({F(1.5), F(2)}), DType::kInt16);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->dtype, DType::kInt16);
  EXPECT_EQ(info->shape, Dims{2});
}

TEST(AnalyzeLiteralTest, RejectsNonNumbersWhenInferring) {
  for (const char* what : {"the string \"a\"", "null", "an object"}) {
    SCOPED_TRACE(what);
    const Literal literal = L({L({I(1), I(2)}), L({I(3), Literal::Invalid(what)})});
    absl::StatusOr<LiteralInfo> info = AnalyzeLiteral(literal, std::nullopt);
    ASSERT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(info.status().message(), HasSubstr(what));
    EXPECT_THAT(info.status().message(), HasSubstr("at index [1, 1]"));
  }
  EXPECT_EQ(AnalyzeLiteral(Literal::Invalid("null"), std::nullopt).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(AnalyzeLiteralTest, DepthLimit) {
  absl::StatusOr<LiteralInfo> at_limit = AnalyzeLiteral(Nested(kMaxRank), std::nullopt);
  ASSERT_TRUE(at_limit.ok()) << at_limit.status();
  EXPECT_EQ(at_limit->shape.size(), static_cast<size_t>(kMaxRank));
  for (std::optional<DType> requested : {std::optional<DType>(), std::optional(DType::kInt8)}) {
    absl::StatusOr<LiteralInfo> too_deep = AnalyzeLiteral(Nested(kMaxRank + 1), requested);
    ASSERT_EQ(too_deep.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(too_deep.status().message(), HasSubstr("deeper than the maximum rank"));
  }
}

TEST(AnalyzeLiteralTest, DepthLimitAppliesToEveryElement) {
  // The shape follows the first element only; inference visits them all.
  absl::StatusOr<LiteralInfo> info = AnalyzeLiteral(L({I(1), Nested(kMaxRank)}), std::nullopt);
  ASSERT_EQ(info.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(info.status().message(), HasSubstr("deeper than the maximum rank"));
}

TEST(StoreLiteralTest, WritesRowMajor) {
  EXPECT_THAT(
      Store<int64_t>(L({L({I(1), I(2), I(3)}), L({I(4), I(5), B(true)})}), DType::kInt64).value(),
      ElementsAre(1, 2, 3, 4, 5, 1));
  EXPECT_THAT(Store<float>(L({I(1), F(2.5), B(false)}), DType::kFloat32).value(),
              ElementsAre(1.0f, 2.5f, 0.0f));
  EXPECT_THAT(Store<double>(I(-4), DType::kFloat64).value(), ElementsAre(-4.0));
  EXPECT_TRUE(Store<float>(L({L({}), L({})}), DType::kFloat32).value().empty());
}

TEST(StoreLiteralTest, RaggedAtDimOne) {
  absl::Status s = Validate(L({L({I(1), I(2)}), L({I(3)})}), DType::kInt64);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("expected a list of length 2 at dim 1"));
  EXPECT_THAT(s.message(), HasSubstr("at index [1] has length 1"));
}

TEST(StoreLiteralTest, RaggedAtDimTwo) {
  const Literal literal =
      L({L({L({I(1), I(2)}), L({I(3), I(4)})}), L({L({I(5), I(6)}), L({I(7)})})});
  absl::Status s = Validate(literal, DType::kInt64);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("expected a list of length 2 at dim 2"));
  EXPECT_THAT(s.message(), HasSubstr("at index [1, 1] has length 1"));
  EXPECT_EQ(Store<int64_t>(literal, DType::kInt64).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(StoreLiteralTest, ListWhereANumberBelongs) {
  absl::Status s = Validate(L({I(1), L({I(2)})}), DType::kInt64);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("a list at index [1] where a number belongs"));
}

TEST(StoreLiteralTest, NumberWhereAListBelongs) {
  absl::Status s = Validate(L({L({I(1)}), I(2)}), DType::kInt64);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("a number at index [1] where a list of length 1 belongs"));
}

TEST(StoreLiteralTest, RejectsNonNumbersWithRequestedDType) {
  for (const char* what : {"the string \"a\"", "null", "an object"}) {
    SCOPED_TRACE(what);
    for (const Literal& literal :
         {L({I(1), Literal::Invalid(what)}), L({L({I(1)}), Literal::Invalid(what)})}) {
      absl::Status s = Validate(literal, DType::kFloat32);
      ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
      EXPECT_THAT(s.message(), HasSubstr(what));
      EXPECT_THAT(s.message(), HasSubstr("at index [1]"));
    }
  }
}

struct OverflowCase {
  const char* name;
  Literal value;
  DType dtype;
};

TEST(StoreLiteralTest, RejectsValuesTheDTypeCannotHold) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  const OverflowCase kCases[] = {
      {"300 into int8", I(300), DType::kInt8},
      {"-129 into int8", I(-129), DType::kInt8},
      {"256 into uint8", I(256), DType::kUInt8},
      {"-256 into uint8", I(-256), DType::kUInt8},
      {"40000 into int16", I(40000), DType::kInt16},
      {"2^31 into int32", I(int64_t{1} << 31), DType::kInt32},
      {"-0.5 into uint8", F(-0.5), DType::kUInt8},
      {"255.9 into uint8", F(255.9), DType::kUInt8},
      {"-128.5 into int8", F(-128.5), DType::kInt8},
      {"2^31 as float into int32", F(2147483648.0), DType::kInt32},
      {"2^63 as float into int64", F(9223372036854775808.0), DType::kInt64},
      {"-1e19 into int64", F(-1e19), DType::kInt64},
  };
  for (const OverflowCase& c : kCases) {
    SCOPED_TRACE(c.name);
    absl::Status s = Validate(L({I(0), c.value}), c.dtype);
    ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("at index [1]"));
    EXPECT_THAT(s.message(), HasSubstr("without overflow"));
  }
  for (DType dtype : {DType::kUInt8, DType::kInt8, DType::kInt16, DType::kInt32, DType::kInt64}) {
    for (double v : {nan, inf, -inf}) {
      SCOPED_TRACE(testing::Message() << v << " into " << DTypeName(dtype));
      EXPECT_EQ(Validate(F(v), dtype).code(), absl::StatusCode::kInvalidArgument);
    }
  }
}

TEST(StoreLiteralTest, IntegersAtTheLimitsFit) {
  EXPECT_THAT(Store<int8_t>(L({I(127), I(-128), F(-128.0), F(126.9)}), DType::kInt8).value(),
              ElementsAre(127, -128, -128, 126));
  EXPECT_THAT(Store<int64_t>(L({I(std::numeric_limits<int64_t>::min()),
                                I(std::numeric_limits<int64_t>::max()), F(-9223372036854775808.0)}),
                             DType::kInt64)
                  .value(),
              ElementsAre(std::numeric_limits<int64_t>::min(), std::numeric_limits<int64_t>::max(),
                          std::numeric_limits<int64_t>::min()));
}

TEST(StoreLiteralTest, NegativeIntsWrapIntoUInt8DownToMinus255) {
  // torch: torch.tensor([-1, -255, 255], dtype=torch.uint8) is [255, 1, 255].
  EXPECT_THAT(Store<uint8_t>(L({I(-1), I(-255), I(255)}), DType::kUInt8).value(),
              ElementsAre(255, 1, 255));
}

TEST(StoreLiteralTest, FloatsTruncateIntoIntegers) {
  EXPECT_THAT(Store<uint8_t>(L({F(0.5), F(-0.0), F(255.0), F(254.99)}), DType::kUInt8).value(),
              ElementsAre(0, 0, 255, 254));
  EXPECT_THAT(Store<int32_t>(L({F(-2.9), F(2.9)}), DType::kInt32).value(), ElementsAre(-2, 2));
}

TEST(StoreLiteralTest, BoolTarget) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  absl::StatusOr<std::vector<Bool8>> out = Store<Bool8>(
      L({I(0), I(-1), F(0.0), F(1.5), F(nan), B(true), C(0, 1), C(0, 0), C(2, 0)}), DType::kBool);
  ASSERT_TRUE(out.ok()) << out.status();
  std::vector<int> bytes;
  for (Bool8 b : *out) bytes.push_back(b.v);
  EXPECT_THAT(bytes, ElementsAre(0, 1, 0, 1, 1, 1, 1, 0, 1));
}

TEST(StoreLiteralTest, ComplexIntoRealFails) {
  for (DType dtype :
       {DType::kUInt8, DType::kInt64, DType::kFloat16, DType::kFloat32, DType::kFloat64}) {
    SCOPED_TRACE(DTypeName(dtype));
    absl::Status s = Validate(L({F(1), C(1, 0)}), dtype);
    ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("complex value at index [1]"));
  }
}

TEST(StoreLiteralTest, ComplexTargets) {
  absl::StatusOr<std::vector<Complex128>> out =
      Store<Complex128>(L({C(1, -2), I(3), F(0.5), B(true)}), DType::kComplex128);
  ASSERT_TRUE(out.ok()) << out.status();
  const double want[][2] = {{1, -2}, {3, 0}, {0.5, 0}, {1, 0}};
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ((*out)[i].re, want[i][0]) << i;
    EXPECT_EQ((*out)[i].im, want[i][1]) << i;
  }
  absl::StatusOr<std::vector<Complex64>> narrow =
      Store<Complex64>(C(0.1, 1e300), DType::kComplex64);
  ASSERT_TRUE(narrow.ok());
  EXPECT_EQ((*narrow)[0].re, 0.1f);
  EXPECT_TRUE(std::isinf((*narrow)[0].im));
}

TEST(StoreLiteralTest, IntsIntoHalfRoundLikeTorch) {
  // torch.tensor([2049, 2051, 65519, 65520], dtype=torch.float16)
  //   .view(torch.int16) is [26624, 26626, 31743, 31744].
  absl::StatusOr<std::vector<Half>> half =
      Store<Half>(L({I(2049), I(2051), I(65519), I(65520)}), DType::kFloat16);
  ASSERT_TRUE(half.ok());
  EXPECT_EQ((*half)[0].bits, 0x6800);
  EXPECT_EQ((*half)[1].bits, 0x6802);
  EXPECT_EQ((*half)[2].bits, 0x7BFF);
  EXPECT_EQ((*half)[3].bits, 0x7C00);
  // torch.tensor([16842753], dtype=torch.bfloat16).view(torch.int16) is
  // 19328 (0x4B80): the int becomes float32 2^24 + 2^16 first, a tie.
  absl::StatusOr<std::vector<BFloat16>> bf16 = Store<BFloat16>(I(16842753), DType::kBFloat16);
  ASSERT_TRUE(bf16.ok());
  EXPECT_EQ((*bf16)[0].bits, 0x4B80);
  // torch.tensor([2**53 + 1], dtype=torch.float32) is 2^53.
  EXPECT_THAT(Store<float>(I((int64_t{1} << 53) + 1), DType::kFloat32).value(),
              ElementsAre(9007199254740992.0f));
}

TEST(StoreLiteralTest, FloatsIntoFloatDTypes) {
  absl::StatusOr<std::vector<Half>> half = Store<Half>(L({F(300.7), F(65520.0)}), DType::kFloat16);
  ASSERT_TRUE(half.ok());
  EXPECT_EQ((*half)[0].bits, 0x5CB3);
  EXPECT_EQ((*half)[1].bits, 0x7C00);
  EXPECT_THAT(Store<double>(F(0.1), DType::kFloat64).value(), ElementsAre(0.1));
  EXPECT_THAT(Store<float>(F(1e300), DType::kFloat32).value(),
              ElementsAre(std::numeric_limits<float>::infinity()));
}

TEST(StoreLiteralTest, ValidationWithoutDestinationMatchesStore) {
  const Literal kLiterals[] = {L({I(1), I(300)}), L({I(1), I(2)}), L({L({I(1)}), I(2)}),
                               L({F(0.5), F(-0.5)})};
  for (const Literal& literal : kLiterals) {
    EXPECT_EQ(Validate(literal, DType::kUInt8).code(),
              Store<uint8_t>(literal, DType::kUInt8).status().code());
  }
}

}  // namespace
}  // namespace asarray
