// The one per-element conversion between the twelve dtypes, bit-exact with
// torch's CPU casts. Header-only and free of library calls so that the CPU
// loops (core/cast.cc) and the CUDA kernels compile the very same code.
//
// Rules (torch's where torch defines them, ours where it does not):
// - Into float16/bfloat16: round to nearest, ties to even. float64 and int64
//   sources go through float32 first, rounding twice, exactly as torch does.
// - Into an integer from an integer or bool: two's-complement wrap.
// - Into an integer from a floating or complex value (real part): exactly
//   what torch computes on x86, for every input. The value is truncated
//   toward zero into an intermediate and then wrapped to the target width.
//   The intermediate is int64 for int64 and uint8 targets (torch routes
//   unsigned targets through int64 on purpose) and int32 for int8, int16 and
//   int32 (the compiler's 32-bit conversion): 300.7 into uint8 gives 44, -5.0
//   gives 251. NaN, infinities and values whose truncation does not fit the
//   intermediate become its minimum (x86's "integer indefinite"), so inf into
//   int16 is 0.
// - Into bool: != 0. NaN is true; a complex value is true when either part is
//   non-zero (torch 2.x).
// - Complex into real keeps the real part (the caller reports the warning).
// - A bool source byte other than 0 or 1 reads as true.
#ifndef ASARRAY_CORE_ELEMENT_CONVERT_H_
#define ASARRAY_CORE_ELEMENT_CONVERT_H_

#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>

#if defined(__CUDACC__)
#define ASARRAY_HD __host__ __device__ __forceinline__
#else
#define ASARRAY_HD inline __attribute__((always_inline))
#endif

namespace asarray {

// Storage types: exactly the bytes of one element, trivially copyable.
struct Bool8 {
  uint8_t v;
};
struct Half {
  uint16_t bits;
};
struct BFloat16 {
  uint16_t bits;
};
struct Complex64 {
  float re, im;
};
struct Complex128 {
  double re, im;
};

namespace convert_internal {

ASARRAY_HD uint32_t FloatBits(float f) {
  uint32_t u;
  memcpy(&u, &f, sizeof u);
  return u;
}
ASARRAY_HD float BitsFloat(uint32_t u) {
  float f;
  memcpy(&f, &u, sizeof f);
  return f;
}

template <typename T>
struct IsFloatLike
    : std::integral_constant<bool,
                             std::is_same<T, float>::value || std::is_same<T, double>::value ||
                                 std::is_same<T, Half>::value || std::is_same<T, BFloat16>::value> {
};
template <typename T>
struct IsComplexT : std::integral_constant<bool, std::is_same<T, Complex64>::value ||
                                                     std::is_same<T, Complex128>::value> {};
template <typename T>
struct IsIntT : std::integral_constant<bool, std::is_integral<T>::value> {};

}  // namespace convert_internal

// IEEE binary16, round to nearest even, NaN kept quiet with its sign.
ASARRAY_HD Half HalfFromFloat(float f) {
  using convert_internal::FloatBits;
  const uint32_t x = FloatBits(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000u);
  const uint32_t ax = x & 0x7FFFFFFFu;
  if (ax > 0x7F800000u) return Half{static_cast<uint16_t>(sign | 0x7E00u)};
  // 65520 is halfway between the largest half (65504) and 2^16; the tie goes
  // to the even neighbour, which is infinity.
  if (ax >= 0x477FF000u) return Half{static_cast<uint16_t>(sign | 0x7C00u)};
  if (ax >= 0x38800000u) {  // a normal half: rebias the exponent, round 13 bits
    const uint32_t r = ax - 0x38000000u;
    uint32_t q = r >> 13;
    const uint32_t rem = r & 0x1FFFu;
    q += (rem > 0x1000u || (rem == 0x1000u && (q & 1u))) ? 1u : 0u;
    return Half{static_cast<uint16_t>(sign | q)};
  }
  if (ax <= 0x33000000u) return Half{sign};  // at most 2^-25: ties to zero
  // A subnormal half counts units of 2^-24.
  const uint32_t exp = ax >> 23;
  const uint32_t mant = (ax & 0x7FFFFFu) | 0x800000u;
  const uint32_t shift = 126u - exp;
  uint32_t q = mant >> shift;
  const uint32_t rem = mant & ((1u << shift) - 1u);
  const uint32_t halfway = 1u << (shift - 1u);
  q += (rem > halfway || (rem == halfway && (q & 1u))) ? 1u : 0u;
  return Half{static_cast<uint16_t>(sign | q)};
}

ASARRAY_HD float FloatFromHalf(Half h) {
  using convert_internal::BitsFloat;
  const uint32_t sign = static_cast<uint32_t>(h.bits & 0x8000u) << 16;
  const uint32_t exp = (h.bits >> 10) & 0x1Fu;
  const uint32_t mant = h.bits & 0x3FFu;
  if (exp == 0x1Fu) return BitsFloat(sign | 0x7F800000u | (mant << 13));
  if (exp != 0) return BitsFloat(sign | ((exp + 112u) << 23) | (mant << 13));
  const float magnitude = static_cast<float>(mant) * 5.9604644775390625e-08f;  // 2^-24
  return sign ? -magnitude : magnitude;
}

// Round to nearest even on the top 16 bits; every NaN becomes 0x7FC0.
ASARRAY_HD BFloat16 BFloat16FromFloat(float f) {
  const uint32_t x = convert_internal::FloatBits(f);
  if ((x & 0x7FFFFFFFu) > 0x7F800000u) return BFloat16{0x7FC0u};
  return BFloat16{static_cast<uint16_t>((x + 0x7FFFu + ((x >> 16) & 1u)) >> 16)};
}

ASARRAY_HD float FloatFromBFloat16(BFloat16 b) {
  return convert_internal::BitsFloat(static_cast<uint32_t>(b.bits) << 16);
}

// Truncation toward zero into the intermediate described above, with x86's
// answer (the intermediate's minimum) for NaN and out-of-range values, then
// the two's-complement wrap to To.
template <typename To>
ASARRAY_HD To TruncateToInteger(double x) {
  if constexpr (sizeof(To) == 8 || std::is_unsigned<To>::value) {
    const bool fits = x >= -9223372036854775808.0 && x < 9223372036854775808.0;
    return static_cast<To>(fits ? static_cast<int64_t>(x) : INT64_MIN);
  } else {
    const bool fits = x > -2147483649.0 && x < 2147483648.0;
    return static_cast<To>(fits ? static_cast<int32_t>(x) : INT32_MIN);
  }
}

// The value of any element as float32, as torch computes it on the way into
// float32, float16 and bfloat16 (complex: the real part).
template <typename From>
ASARRAY_HD float ToFloat32(From v) {
  if constexpr (std::is_same<From, Bool8>::value) {
    return v.v != 0 ? 1.0f : 0.0f;
  } else if constexpr (std::is_same<From, Half>::value) {
    return FloatFromHalf(v);
  } else if constexpr (std::is_same<From, BFloat16>::value) {
    return FloatFromBFloat16(v);
  } else if constexpr (convert_internal::IsComplexT<From>::value) {
    return static_cast<float>(v.re);
  } else {
    return static_cast<float>(v);
  }
}

template <typename From>
ASARRAY_HD double ToFloat64(From v) {
  if constexpr (std::is_same<From, Bool8>::value) {
    return v.v != 0 ? 1.0 : 0.0;
  } else if constexpr (std::is_same<From, Half>::value || std::is_same<From, BFloat16>::value) {
    return static_cast<double>(ToFloat32(v));
  } else if constexpr (convert_internal::IsComplexT<From>::value) {
    return static_cast<double>(v.re);
  } else {
    return static_cast<double>(v);
  }
}

template <typename From>
ASARRAY_HD bool IsNonZero(From v) {
  if constexpr (std::is_same<From, Bool8>::value) {
    return v.v != 0;
  } else if constexpr (std::is_same<From, Half>::value) {
    return (v.bits & 0x7FFFu) != 0;
  } else if constexpr (std::is_same<From, BFloat16>::value) {
    return (v.bits & 0x7FFFu) != 0;
  } else if constexpr (convert_internal::IsComplexT<From>::value) {
    return v.re != 0 || v.im != 0;
  } else {
    return v != 0;
  }
}

// Convert<To>(from): the element `from` as a `To`.
template <typename To, typename From>
ASARRAY_HD To Convert(From v) {
  using convert_internal::IsIntT;
  if constexpr (std::is_same<To, From>::value) {
    return v;
  } else if constexpr (std::is_same<To, Bool8>::value) {
    return Bool8{static_cast<uint8_t>(IsNonZero(v) ? 1 : 0)};
  } else if constexpr (IsIntT<To>::value) {
    if constexpr (std::is_same<From, Bool8>::value) {
      return static_cast<To>(v.v != 0 ? 1 : 0);
    } else if constexpr (IsIntT<From>::value) {
      return static_cast<To>(v);  // modular, as two's complement defines it
    } else if constexpr (std::is_same<From, double>::value ||
                         std::is_same<From, Complex128>::value) {
      return TruncateToInteger<To>(ToFloat64(v));
    } else {
      return TruncateToInteger<To>(static_cast<double>(ToFloat32(v)));
    }
  } else if constexpr (std::is_same<To, float>::value) {
    return ToFloat32(v);
  } else if constexpr (std::is_same<To, double>::value) {
    return ToFloat64(v);
  } else if constexpr (std::is_same<To, Half>::value) {
    return HalfFromFloat(ToFloat32(v));
  } else if constexpr (std::is_same<To, BFloat16>::value) {
    return BFloat16FromFloat(ToFloat32(v));
  } else if constexpr (std::is_same<To, Complex64>::value) {
    if constexpr (std::is_same<From, Complex128>::value) {
      return Complex64{static_cast<float>(v.re), static_cast<float>(v.im)};
    } else {
      return Complex64{ToFloat32(v), 0.0f};
    }
  } else {
    static_assert(std::is_same<To, Complex128>::value, "unknown destination type");
    if constexpr (std::is_same<From, Complex64>::value) {
      return Complex128{static_cast<double>(v.re), static_cast<double>(v.im)};
    } else {
      return Complex128{ToFloat64(v), 0.0};
    }
  }
}

}  // namespace asarray

#endif  // ASARRAY_CORE_ELEMENT_CONVERT_H_
