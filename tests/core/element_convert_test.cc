#include "core/element_convert.h"

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <sstream>
#include <string>
#include <type_traits>

#include "core/dtype.h"
#include "core/dtype_dispatch.h"
#include "gtest/gtest.h"

namespace asarray {
namespace {

constexpr int32_t kI32Min = std::numeric_limits<int32_t>::min();
constexpr int64_t kI64Min = std::numeric_limits<int64_t>::min();
constexpr int64_t kI64Max = std::numeric_limits<int64_t>::max();

uint32_t Bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}
float FloatOfBits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}
bool IsHalfNaN(uint16_t bits) { return (bits & 0x7FFFu) > 0x7C00u; }
bool IsBFloat16NaN(uint16_t bits) { return (bits & 0x7FFFu) > 0x7F80u; }

std::string Hex(uint64_t v) {
  std::ostringstream out;
  out << "0x" << std::hex << std::uppercase << v;
  return out.str();
}

// Every integer result of one source value, in the order uint8, int8, int16,
// int32, int64, and whether it reads as true.
struct IntegerResults {
  uint8_t u8;
  int8_t i8;
  int16_t i16;
  int32_t i32;
  int64_t i64;
  bool as_bool;
};

template <typename From>
void ExpectIntegerResults(From v, const IntegerResults& want) {
  EXPECT_EQ(int{Convert<uint8_t>(v)}, int{want.u8});
  EXPECT_EQ(int{Convert<int8_t>(v)}, int{want.i8});
  EXPECT_EQ(Convert<int16_t>(v), want.i16);
  EXPECT_EQ(Convert<int32_t>(v), want.i32);
  EXPECT_EQ(Convert<int64_t>(v), want.i64);
  EXPECT_EQ(Convert<Bool8>(v).v, want.as_bool ? 1 : 0);
}

// Expected values below all came from torch 1.13 (CPU, x86-64), e.g.
// torch.tensor([v], dtype=torch.float32).to(torch.float16).view(torch.int16),
// and .to(torch.uint8) etc. for the integers.
struct Float32Case {
  uint32_t bits;
  uint16_t half;
  uint16_t bf16;
  IntegerResults ints;
};

const Float32Case kFloat32Cases[] = {
    {0x00000000, 0x0000, 0x0000, {0, 0, 0, 0, 0, false}},         // 0
    {0x80000000, 0x8000, 0x8000, {0, 0, 0, 0, 0, false}},         // -0
    {0x00000001, 0x0000, 0x0000, {0, 0, 0, 0, 0, true}},          // smallest float subnormal
    {0x33800000, 0x0001, 0x3380, {0, 0, 0, 0, 0, true}},          // 2^-24, smallest half subnormal
    {0xB3800000, 0x8001, 0xB380, {0, 0, 0, 0, 0, true}},          // -2^-24
    {0x33000000, 0x0000, 0x3300, {0, 0, 0, 0, 0, true}},          // 2^-25: half tie to even 0
    {0x33000001, 0x0001, 0x3300, {0, 0, 0, 0, 0, true}},          // just above that tie
    {0x33C00000, 0x0002, 0x33C0, {0, 0, 0, 0, 0, true}},          // 3 * 2^-25: tie up to even 2
    {0x3F800000, 0x3C00, 0x3F80, {1, 1, 1, 1, 1, true}},          // 1
    {0x3F801000, 0x3C00, 0x3F80, {1, 1, 1, 1, 1, true}},          // 1 + 2^-11: half tie down
    {0x3F803000, 0x3C02, 0x3F80, {1, 1, 1, 1, 1, true}},          // 1 + 3 * 2^-11: half tie up
    {0x3F808000, 0x3C04, 0x3F80, {1, 1, 1, 1, 1, true}},          // 1 + 2^-8: bfloat16 tie down
    {0x3F818000, 0x3C0C, 0x3F82, {1, 1, 1, 1, 1, true}},          // 1 + 3 * 2^-8: bfloat16 tie up
    {0xC0200000, 0xC100, 0xC020, {254, -2, -2, -2, -2, true}},    // -2.5
    {0xC0A00000, 0xC500, 0xC0A0, {251, -5, -5, -5, -5, true}},    // -5
    {0x4396599A, 0x5CB3, 0x4396, {44, 44, 300, 300, 300, true}},  // 300.7
    {0x477FE000, 0x7BFF, 0x4780, {224, -32, -32, 65504, 65504, true}},   // 65504, half max
    {0x477FEFFD, 0x7BFF, 0x4780, {239, -17, -17, 65519, 65519, true}},   // 65519.99
    {0x477FF000, 0x7C00, 0x4780, {240, -16, -16, 65520, 65520, true}},   // 65520: tie to inf
    {0x4F32D05E, 0x7C00, 0x4F33, {0, 0, 0, kI32Min, 3000000000, true}},  // 3e9
    {0xE0AD78EC, 0xFC00, 0xE0AD, {0, 0, 0, kI32Min, kI64Min, true}},     // -1e20
    {0x7F7FFFFF, 0x7C00, 0x7F80, {0, 0, 0, kI32Min, kI64Min, true}},     // float max
    {0x7F800000, 0x7C00, 0x7F80, {0, 0, 0, kI32Min, kI64Min, true}},     // inf
    {0xFF800000, 0xFC00, 0xFF80, {0, 0, 0, kI32Min, kI64Min, true}},     // -inf
    // NaN: bfloat16 0x7FC0 is torch's scalar and strided result
    // (torch.tensor(nan).to(torch.bfloat16)); its AVX2 kernel for contiguous
    // float32 writes 0xFFFF instead.
    {0x7FC00000, 0x7E00, 0x7FC0, {0, 0, 0, kI32Min, kI64Min, true}},
};

TEST(Float32ConversionTest, MatchesTorch) {
  for (const Float32Case& c : kFloat32Cases) {
    const float f = FloatOfBits(c.bits);
    SCOPED_TRACE(Hex(c.bits));
    EXPECT_EQ(HalfFromFloat(f).bits, c.half);
    EXPECT_EQ(Convert<Half>(f).bits, c.half);
    EXPECT_EQ(BFloat16FromFloat(f).bits, c.bf16);
    EXPECT_EQ(Convert<BFloat16>(f).bits, c.bf16);
    ExpectIntegerResults(f, c.ints);
    EXPECT_EQ(Bits(Convert<float>(f)), c.bits);
    const Complex64 z = Convert<Complex64>(f);
    EXPECT_EQ(Bits(z.re), c.bits);
    EXPECT_EQ(z.im, 0.0f);
  }
}

struct Float64Case {
  double value;
  uint32_t f32;
  uint16_t half;
  uint16_t bf16;
  IntegerResults ints;
};

const Float64Case kFloat64Cases[] = {
    {0.1, 0x3DCCCCCD, 0x2E66, 0x3DCD, {0, 0, 0, 0, 0, true}},
    {300.7, 0x4396599A, 0x5CB3, 0x4396, {44, 44, 300, 300, 300, true}},
    {-5.0, 0xC0A00000, 0xC500, 0xC0A0, {251, -5, -5, -5, -5, true}},
    {3e9, 0x4F32D05E, 0x7C00, 0x4F33, {0, 0, 0, kI32Min, 3000000000, true}},
    {2147483647.5, 0x4F000000, 0x7C00, 0x4F00, {255, -1, -1, 2147483647, 2147483647, true}},
    {-2147483648.9, 0xCF000000, 0xFC00, 0xCF00, {0, 0, 0, kI32Min, -2147483648, true}},
    {2147483648.0, 0x4F000000, 0x7C00, 0x4F00, {0, 0, 0, kI32Min, 2147483648, true}},
    {9223372036854775808.0, 0x5F000000, 0x7C00, 0x5F00, {0, 0, 0, kI32Min, kI64Min, true}},
    {1e19, 0x5F0AC723, 0x7C00, 0x5F0B, {0, 0, 0, kI32Min, kI64Min, true}},
    {-1e20, 0xE0AD78EC, 0xFC00, 0xE0AD, {0, 0, 0, kI32Min, kI64Min, true}},
    {1e300, 0x7F800000, 0x7C00, 0x7F80, {0, 0, 0, kI32Min, kI64Min, true}},
    {1e-300, 0x00000000, 0x0000, 0x0000, {0, 0, 0, 0, 0, true}},
    // Rounded to float32 first: a tie there, which then rounds to even. A
    // single rounding would give half 0x3C01 and bfloat16 0x3F81.
    {1.0 + 0x1p-11 + 0x1p-40, 0x3F801000, 0x3C00, 0x3F80, {1, 1, 1, 1, 1, true}},
    {1.0 + 0x1p-8 + 0x1p-40, 0x3F808000, 0x3C04, 0x3F80, {1, 1, 1, 1, 1, true}},
};

TEST(Float64ConversionTest, MatchesTorch) {
  for (const Float64Case& c : kFloat64Cases) {
    SCOPED_TRACE(c.value);
    EXPECT_EQ(Bits(Convert<float>(c.value)), c.f32);
    EXPECT_EQ(Convert<Half>(c.value).bits, c.half);
    EXPECT_EQ(Convert<BFloat16>(c.value).bits, c.bf16);
    ExpectIntegerResults(c.value, c.ints);
    const Complex128 z = Convert<Complex128>(c.value);
    EXPECT_EQ(z.re, c.value);
    EXPECT_EQ(z.im, 0.0);
  }
}

// torch casts every floating value into uint8 through int64
// (c10::static_cast_with_inter_type<uint8_t, T>), so float64 values beyond
// int32 keep their low byte.
TEST(Float64ConversionTest, IntoUInt8GoesThroughInt64LikeTorch) {
  EXPECT_EQ(int{Convert<uint8_t>(-2147483649.0)}, 255);
  EXPECT_EQ(int{Convert<uint8_t>(4294967297.0)}, 1);
  EXPECT_EQ(int{Convert<uint8_t>(Complex128{-2147483649.0, 1.0})}, 255);
  // The narrower signed targets do go through int32 in torch.
  EXPECT_EQ(int{Convert<int8_t>(4294967297.0)}, 0);
  EXPECT_EQ(Convert<int16_t>(-2147483649.0), 0);
}

TEST(Float64ConversionTest, NaNAndInfinities) {
  const double nan = std::numeric_limits<double>::quiet_NaN();
  const double inf = std::numeric_limits<double>::infinity();
  for (double v : {nan, inf, -inf}) {
    SCOPED_TRACE(v);
    ExpectIntegerResults(v, {0, 0, 0, kI32Min, kI64Min, true});
  }
  EXPECT_TRUE(std::isnan(Convert<float>(nan)));
  EXPECT_EQ(Convert<Half>(nan).bits, 0x7E00);
  EXPECT_EQ(Convert<Half>(-inf).bits, 0xFC00);
  EXPECT_EQ(Convert<BFloat16>(nan).bits, 0x7FC0);
}

struct HalfCase {
  uint16_t bits;
  uint32_t f32;
  IntegerResults ints;
};

const HalfCase kHalfCases[] = {
    {0x0001, 0x33800000, {0, 0, 0, 0, 0, true}},
    {0x8001, 0xB3800000, {0, 0, 0, 0, 0, true}},
    {0x03FF, 0x387FC000, {0, 0, 0, 0, 0, true}},  // largest subnormal
    {0x0400, 0x38800000, {0, 0, 0, 0, 0, true}},  // smallest normal
    {0x8000, 0x80000000, {0, 0, 0, 0, 0, false}},
    {0x3555, 0x3EAAA000, {0, 0, 0, 0, 0, true}},
    {0x5CB3, 0x43966000, {44, 44, 300, 300, 300, true}},
    {0x7BFF, 0x477FE000, {224, -32, -32, 65504, 65504, true}},
    {0xFBFF, 0xC77FE000, {32, 32, 32, -65504, -65504, true}},
    {0x7C00, 0x7F800000, {0, 0, 0, kI32Min, kI64Min, true}},
    {0xFC00, 0xFF800000, {0, 0, 0, kI32Min, kI64Min, true}},
    {0x7E00, 0x7FC00000, {0, 0, 0, kI32Min, kI64Min, true}},
};

TEST(HalfConversionTest, MatchesTorch) {
  for (const HalfCase& c : kHalfCases) {
    SCOPED_TRACE(Hex(c.bits));
    EXPECT_EQ(Bits(FloatFromHalf(Half{c.bits})), c.f32);
    EXPECT_EQ(Bits(Convert<float>(Half{c.bits})), c.f32);
    ExpectIntegerResults(Half{c.bits}, c.ints);
  }
}

struct BFloat16Case {
  uint16_t bits;
  uint32_t f32;
  IntegerResults ints;
};

const BFloat16Case kBFloat16Cases[] = {
    {0x0001, 0x00010000, {0, 0, 0, 0, 0, true}},
    {0x8001, 0x80010000, {0, 0, 0, 0, 0, true}},
    {0x4396, 0x43960000, {44, 44, 300, 300, 300, true}},
    {0x4F80, 0x4F800000, {0, 0, 0, kI32Min, 4294967296, true}},
    {0xCF00, 0xCF000000, {0, 0, 0, kI32Min, -2147483648, true}},
    {0x7F7F, 0x7F7F0000, {0, 0, 0, kI32Min, kI64Min, true}},
    {0x7F80, 0x7F800000, {0, 0, 0, kI32Min, kI64Min, true}},
    {0xFF80, 0xFF800000, {0, 0, 0, kI32Min, kI64Min, true}},
    {0x7FC0, 0x7FC00000, {0, 0, 0, kI32Min, kI64Min, true}},
};

TEST(BFloat16ConversionTest, MatchesTorch) {
  for (const BFloat16Case& c : kBFloat16Cases) {
    SCOPED_TRACE(Hex(c.bits));
    EXPECT_EQ(Bits(FloatFromBFloat16(BFloat16{c.bits})), c.f32);
    EXPECT_EQ(Bits(Convert<float>(BFloat16{c.bits})), c.f32);
    ExpectIntegerResults(BFloat16{c.bits}, c.ints);
  }
}

TEST(HalfBFloat16Test, ConvertEachOtherThroughFloat32) {
  EXPECT_EQ(Convert<BFloat16>(Half{0x5CB3}).bits, 0x4396);  // 300.75
  EXPECT_EQ(Convert<Half>(BFloat16{0x4396}).bits, 0x5CB0);  // 300
  EXPECT_EQ(Convert<Half>(BFloat16{0x7F7F}).bits, 0x7C00);
  EXPECT_EQ(Convert<double>(Half{0x3555}), 0.333251953125);
}

struct Int64Case {
  int64_t value;
  float f32;
  double f64;
  uint16_t half;
  uint16_t bf16;
  IntegerResults ints;
};

const Int64Case kInt64Cases[] = {
    {-1, -1.0f, -1.0, 0xBC00, 0xBF80, {255, -1, -1, -1, -1, true}},
    {300, 300.0f, 300.0, 0x5CB0, 0x4396, {44, 44, 300, 300, 300, true}},
    {2049, 2049.0f, 2049.0, 0x6800, 0x4500, {1, 1, 2049, 2049, 2049, true}},
    {2051, 2051.0f, 2051.0, 0x6802, 0x4500, {3, 3, 2051, 2051, 2051, true}},
    {65519, 65519.0f, 65519.0, 0x7BFF, 0x4780, {239, -17, -17, 65519, 65519, true}},
    {65520, 65520.0f, 65520.0, 0x7C00, 0x4780, {240, -16, -16, 65520, 65520, true}},
    {70000, 70000.0f, 70000.0, 0x7C00, 0x4789, {112, 112, 4464, 70000, 70000, true}},
    {-70000, -70000.0f, -70000.0, 0xFC00, 0xC789, {144, -112, -4464, -70000, -70000, true}},
    {16777217, 16777216.0f, 16777217.0, 0x7C00, 0x4B80, {1, 1, 1, 16777217, 16777217, true}},
    // Rounds to float32 2^24 + 2^16 first, a bfloat16 tie; one rounding
    // would give 0x4B81.
    {16842753, 16842752.0f, 16842753.0, 0x7C00, 0x4B80, {1, 1, 1, 16842753, 16842753, true}},
    {9007199254740993,
     9007199254740992.0f,
     9007199254740992.0,
     0x7C00,
     0x5A00,
     {1, 1, 1, 1, 9007199254740993, true}},
    {kI64Max,
     9223372036854775808.0f,
     9223372036854775808.0,
     0x7C00,
     0x5F00,
     {255, -1, -1, -1, kI64Max, true}},
    {kI64Min,
     -9223372036854775808.0f,
     -9223372036854775808.0,
     0xFC00,
     0xDF00,
     {0, 0, 0, 0, kI64Min, true}},
    {0, 0.0f, 0.0, 0x0000, 0x0000, {0, 0, 0, 0, 0, false}},
};

TEST(Int64ConversionTest, MatchesTorch) {
  for (const Int64Case& c : kInt64Cases) {
    SCOPED_TRACE(c.value);
    EXPECT_EQ(Convert<float>(c.value), c.f32);
    EXPECT_EQ(Convert<double>(c.value), c.f64);
    EXPECT_EQ(Convert<Half>(c.value).bits, c.half);
    EXPECT_EQ(Convert<BFloat16>(c.value).bits, c.bf16);
    ExpectIntegerResults(c.value, c.ints);
  }
}

TEST(IntegerConversionTest, WrapsAndExtendsLikeTwosComplement) {
  EXPECT_EQ(int{Convert<uint8_t>(int8_t{-1})}, 255);
  EXPECT_EQ(int{Convert<int8_t>(uint8_t{200})}, -56);
  EXPECT_EQ(Convert<int64_t>(uint8_t{200}), 200);
  EXPECT_EQ(Convert<int64_t>(int8_t{-1}), -1);
  EXPECT_EQ(int{Convert<uint8_t>(int16_t{-32768})}, 0);
  EXPECT_EQ(Convert<int16_t>(int32_t{70000}), 4464);
  EXPECT_EQ(Convert<int32_t>(int64_t{0x1'0000'0005}), 5);
  // torch: torch.tensor([-70000], dtype=torch.int32).half() is -inf.
  EXPECT_EQ(Convert<Half>(int32_t{-70000}).bits, 0xFC00);
  EXPECT_EQ(Convert<float>(int32_t{2147483647}), 2147483648.0f);
}

struct ComplexCase {
  double re, im;
  IntegerResults ints;  // as_bool: torch 2.x, true when either part is non-zero
  uint16_t half;
  uint32_t f32;
};

const ComplexCase kComplexCases[] = {
    {300.7, 5.0, {44, 44, 300, 300, 300, true}, 0x5CB3, 0x4396599A},
    {-5.0, 7.0, {251, -5, -5, -5, -5, true}, 0xC500, 0xC0A00000},
    // torch 1.13 reads 1j as False; torch 2.x, and this library, as True.
    {0.0, 1.0, {0, 0, 0, 0, 0, true}, 0x0000, 0x00000000},
    {-0.0, 0.0, {0, 0, 0, 0, 0, false}, 0x8000, 0x80000000},
    {std::nan(""), 0.0, {0, 0, 0, kI32Min, kI64Min, true}, 0x7E00, 0x7FC00000},
    {1e300, 1e-300, {0, 0, 0, kI32Min, kI64Min, true}, 0x7C00, 0x7F800000},
};

TEST(ComplexConversionTest, RealTargetsKeepTheRealPart) {
  for (const ComplexCase& c : kComplexCases) {
    SCOPED_TRACE(testing::Message() << c.re << "+" << c.im << "j");
    const Complex128 z128{c.re, c.im};
    const Complex64 z64{static_cast<float>(c.re), static_cast<float>(c.im)};
    ExpectIntegerResults(z128, c.ints);
    ExpectIntegerResults(z64, c.ints);
    EXPECT_EQ(Convert<Half>(z128).bits, c.half);
    EXPECT_EQ(Convert<Half>(z64).bits, c.half);
    EXPECT_EQ(Bits(Convert<float>(z128)), c.f32);
    EXPECT_EQ(Bits(Convert<float>(z64)), c.f32);
  }
}

TEST(ComplexConversionTest, BoolIsTrueWhenEitherPartIsNonZero) {
  EXPECT_EQ(Convert<Bool8>(Complex64{0.0f, 0.0f}).v, 0);
  EXPECT_EQ(Convert<Bool8>(Complex64{-0.0f, -0.0f}).v, 0);
  EXPECT_EQ(Convert<Bool8>(Complex64{0.0f, 1.0f}).v, 1);
  EXPECT_EQ(Convert<Bool8>(Complex64{2.0f, 0.0f}).v, 1);
  EXPECT_EQ(Convert<Bool8>(Complex128{0.0, -1e-300}).v, 1);
  EXPECT_EQ(Convert<Bool8>(Complex128{0.0, std::nan("")}).v, 1);
}

TEST(ComplexConversionTest, BetweenComplexTypes) {
  const Complex64 narrowed = Convert<Complex64>(Complex128{1e300, 1e-300});
  EXPECT_TRUE(std::isinf(narrowed.re));
  EXPECT_EQ(narrowed.im, 0.0f);
  const Complex128 widened = Convert<Complex128>(Complex64{0.1f, -2.5f});
  EXPECT_EQ(widened.re, static_cast<double>(0.1f));
  EXPECT_EQ(widened.im, -2.5);
  const Complex64 from_real = Convert<Complex64>(Half{0x3C00});
  EXPECT_EQ(from_real.re, 1.0f);
  EXPECT_EQ(from_real.im, 0.0f);
}

// Reads `v` as a double, whatever its storage type (complex: the real part).
template <typename T>
double AsDouble(T v) {
  if constexpr (std::is_same<T, Bool8>::value) {
    return v.v;
  } else if constexpr (std::is_same<T, Half>::value) {
    return FloatFromHalf(v);
  } else if constexpr (std::is_same<T, BFloat16>::value) {
    return FloatFromBFloat16(v);
  } else if constexpr (std::is_same<T, Complex64>::value || std::is_same<T, Complex128>::value) {
    return v.re;
  } else {
    return static_cast<double>(v);
  }
}

template <typename T>
double ImagOf(T v) {
  if constexpr (std::is_same<T, Complex64>::value || std::is_same<T, Complex128>::value) {
    return v.im;
  } else {
    return 0.0;
  }
}

// A value every dtype holds exactly; complex values get imaginary part `im`.
template <typename T>
T Make(double v, double im) {
  if constexpr (std::is_same<T, Bool8>::value) {
    return Bool8{static_cast<uint8_t>(v != 0 ? 1 : 0)};
  } else if constexpr (std::is_same<T, Half>::value) {
    return HalfFromFloat(static_cast<float>(v));
  } else if constexpr (std::is_same<T, BFloat16>::value) {
    return BFloat16FromFloat(static_cast<float>(v));
  } else if constexpr (std::is_same<T, Complex64>::value) {
    return Complex64{static_cast<float>(v), static_cast<float>(im)};
  } else if constexpr (std::is_same<T, Complex128>::value) {
    return Complex128{v, im};
  } else {
    return static_cast<T>(v);
  }
}

TEST(ConvertTest, EveryPairOfDTypesCarriesExactValues) {
  int pairs = 0;
  for (int f = 0; f < kNumDTypes; ++f) {
    for (int t = 0; t < kNumDTypes; ++t) {
      const DType from = AllDTypes()[f], to = AllDTypes()[t];
      SCOPED_TRACE(testing::Message() << DTypeName(from) << " -> " << DTypeName(to));
      DispatchDType(from, [&](auto from_tag) {
        using From = typename decltype(from_tag)::type;
        DispatchDType(to, [&](auto to_tag) {
          using To = typename decltype(to_tag)::type;
          for (double v : {0.0, 1.0, 2.0, 5.0, 100.0, 127.0}) {
            const From src = Make<From>(v, 3.0);
            const double held = AsDouble(src);
            const To got = Convert<To>(src);
            const bool true_in = held != 0 || ImagOf(src) != 0;
            if (to == DType::kBool) {
              EXPECT_EQ(AsDouble(got), true_in ? 1.0 : 0.0) << v;
            } else {
              EXPECT_EQ(AsDouble(got), held) << v;
            }
            if (IsComplex(to)) {
              EXPECT_EQ(ImagOf(got), IsComplex(from) ? 3.0 : 0.0) << v;
            }
          }
        });
      });
      ++pairs;
    }
  }
  EXPECT_EQ(pairs, 144);
}

TEST(ConvertTest, BoolByteTwoReadsAsTrue) {
  const Bool8 two{2};
  EXPECT_EQ(int{Convert<uint8_t>(two)}, 1);
  EXPECT_EQ(int{Convert<int8_t>(two)}, 1);
  EXPECT_EQ(Convert<int16_t>(two), 1);
  EXPECT_EQ(Convert<int32_t>(two), 1);
  EXPECT_EQ(Convert<int64_t>(two), 1);
  EXPECT_EQ(Convert<Half>(two).bits, 0x3C00);
  EXPECT_EQ(Convert<BFloat16>(two).bits, 0x3F80);
  EXPECT_EQ(Convert<float>(two), 1.0f);
  EXPECT_EQ(Convert<double>(two), 1.0);
  EXPECT_EQ(Convert<Complex64>(two).re, 1.0f);
  EXPECT_EQ(Convert<Complex128>(two).re, 1.0);
  EXPECT_NE(Convert<Bool8>(two).v, 0);
}

// Counts disagreements and remembers the first, so that a broken conversion
// reports one line instead of a million.
class Mismatches {
 public:
  void Check(uint32_t input, uint32_t got, uint32_t want) {
    if (got == want) return;
    if (count_++ == 0) first_ = "input " + Hex(input) + ": got " + Hex(got) + ", want " + Hex(want);
  }
  int count() const { return count_; }
  const std::string& first() const { return first_; }

 private:
  int count_ = 0;
  std::string first_;
};

TEST(HalfRoundTripTest, EveryHalfBitPattern) {
  Mismatches mismatches;
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    const float f = FloatFromHalf(Half{static_cast<uint16_t>(h)});
    const bool nan = IsHalfNaN(static_cast<uint16_t>(h));
    mismatches.Check(h, std::isnan(f), nan);
    // A NaN comes back as the quiet NaN of the same sign.
    mismatches.Check(h, HalfFromFloat(f).bits, nan ? (h & 0x8000u) | 0x7E00u : h);
  }
  EXPECT_EQ(mismatches.count(), 0) << mismatches.first();
}

TEST(BFloat16RoundTripTest, EveryBFloat16BitPattern) {
  Mismatches mismatches;
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    const float f = FloatFromBFloat16(BFloat16{static_cast<uint16_t>(b)});
    mismatches.Check(b, Bits(f), b << 16);
    const uint16_t back = BFloat16FromFloat(f).bits;
    mismatches.Check(b, back, IsBFloat16NaN(static_cast<uint16_t>(b)) ? 0x7FC0 : b);
  }
  EXPECT_EQ(mismatches.count(), 0) << mismatches.first();
}

// Float bit patterns spread over the whole range, about a million of them.
constexpr uint64_t kSampleStride = 4093;  // prime

#ifdef __FLT16_MAX__
uint16_t ReferenceHalfBits(float f) {
  const _Float16 h = static_cast<_Float16>(f);  // correctly rounded, ties to even
  uint16_t bits;
  std::memcpy(&bits, &h, sizeof bits);
  return bits;
}

void CheckHalfAgainstReference(uint32_t input, Mismatches& mismatches) {
  const float f = FloatOfBits(input);
  const uint16_t got = HalfFromFloat(f).bits;
  if (std::isnan(f)) {
    mismatches.Check(input, got, static_cast<uint16_t>(((input >> 16) & 0x8000u) | 0x7E00u));
  } else {
    mismatches.Check(input, got, ReferenceHalfBits(f));
  }
}
#endif

TEST(HalfFromFloatTest, AgreesWithCompilerFloat16OnSampledFloats) {
#ifdef __FLT16_MAX__
  Mismatches mismatches;
  for (uint64_t u = 0; u <= 0xFFFFFFFFu; u += kSampleStride) {
    CheckHalfAgainstReference(static_cast<uint32_t>(u), mismatches);
  }
  EXPECT_EQ(mismatches.count(), 0) << mismatches.first();
#else
  GTEST_SKIP() << "the compiler has no _Float16";
#endif
}

TEST(HalfFromFloatTest, AgreesWithCompilerFloat16AroundEveryHalfBoundary) {
#ifdef __FLT16_MAX__
  Mismatches mismatches;
  for (uint32_t h = 0; h < 0x7C00; ++h) {
    const double lo = FloatFromHalf(Half{static_cast<uint16_t>(h)});
    const double hi = h == 0x7BFF ? 65536.0 : FloatFromHalf(Half{static_cast<uint16_t>(h + 1)});
    for (float center : {static_cast<float>(lo), static_cast<float>((lo + hi) / 2)}) {
      const uint32_t bits = Bits(center);
      for (uint32_t u : {bits - 1, bits, bits + 1}) {
        CheckHalfAgainstReference(u, mismatches);
        CheckHalfAgainstReference(u | 0x80000000u, mismatches);
      }
    }
  }
  EXPECT_EQ(mismatches.count(), 0) << mismatches.first();
#else
  GTEST_SKIP() << "the compiler has no _Float16";
#endif
}

TEST(FloatFromHalfTest, AgreesWithCompilerFloat16ForEveryHalf) {
#ifdef __FLT16_MAX__
  Mismatches mismatches;
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    if (IsHalfNaN(static_cast<uint16_t>(h))) continue;
    const uint16_t bits = static_cast<uint16_t>(h);
    _Float16 ref;
    std::memcpy(&ref, &bits, sizeof ref);
    mismatches.Check(h, Bits(FloatFromHalf(Half{bits})), Bits(static_cast<float>(ref)));
  }
  EXPECT_EQ(mismatches.count(), 0) << mismatches.first();
#else
  GTEST_SKIP() << "the compiler has no _Float16";
#endif
}

// bfloat16 rounding computed another way: pick the nearer of the two
// bfloat16 neighbours, measured in double, ties to the even one.
uint16_t ReferenceBFloat16Bits(uint32_t input) {
  if ((input & 0x7FFFFFFFu) > 0x7F800000u) return 0x7FC0;
  if ((input & 0x7FFFFFFFu) == 0x7F800000u) return static_cast<uint16_t>(input >> 16);
  const uint32_t toward_zero = input & 0xFFFF0000u;
  const uint32_t away = toward_zero + 0x10000u;
  const double x = std::fabs(static_cast<double>(FloatOfBits(input)));
  const double lo = std::fabs(static_cast<double>(FloatOfBits(toward_zero)));
  // The neighbour past the largest bfloat16 is 2^128, which rounds to infinity.
  const double hi = (away & 0x7FFFFFFFu) == 0x7F800000u
                        ? std::ldexp(1.0, 128)
                        : std::fabs(static_cast<double>(FloatOfBits(away)));
  const double below = x - lo, above = hi - x;
  const bool up = above < below || (above == below && ((toward_zero >> 16) & 1u));
  return static_cast<uint16_t>((up ? away : toward_zero) >> 16);
}

TEST(BFloat16FromFloatTest, AgreesWithReferenceOnSampledFloats) {
  Mismatches mismatches;
  for (uint64_t u = 0; u <= 0xFFFFFFFFu; u += kSampleStride) {
    const uint32_t input = static_cast<uint32_t>(u);
    mismatches.Check(input, BFloat16FromFloat(FloatOfBits(input)).bits,
                     ReferenceBFloat16Bits(input));
  }
  EXPECT_EQ(mismatches.count(), 0) << mismatches.first();
}

TEST(BFloat16FromFloatTest, AgreesWithReferenceAroundEveryBoundary) {
  Mismatches mismatches;
  for (uint32_t b = 0; b < 0x7F80; ++b) {
    for (uint32_t center : {b << 16, (b << 16) | 0x8000u}) {
      for (uint32_t u : {center - 1, center, center + 1}) {
        for (uint32_t input : {u, u | 0x80000000u}) {
          mismatches.Check(input, BFloat16FromFloat(FloatOfBits(input)).bits,
                           ReferenceBFloat16Bits(input));
        }
      }
    }
  }
  EXPECT_EQ(mismatches.count(), 0) << mismatches.first();
}

}  // namespace
}  // namespace asarray
