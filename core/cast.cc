#include "core/cast.h"

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <type_traits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/dtype_dispatch.h"
#include "core/element_convert.h"
#include "core/parallel.h"
#include "core/status_macros.h"

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>
#endif

namespace asarray {
namespace {

// Below this many elements a copy runs on the calling thread.
constexpr int64_t kParallelGrain = int64_t{1} << 18;
// Edge of the square tiles a transposing copy works in.
constexpr int64_t kTile = 32;

}  // namespace

std::vector<LoopDim> MakeCopyLoop(const Layout& src, const Layout& dst) {
  std::vector<LoopDim> dims;
  for (size_t i = 0; i < src.shape.size(); ++i) {
    if (src.shape[i] != 1) dims.push_back({src.shape[i], src.strides[i], dst.strides[i]});
  }
  std::stable_sort(dims.begin(), dims.end(),
                   [](const LoopDim& a, const LoopDim& b) { return a.dst > b.dst; });
  std::vector<LoopDim> merged;
  for (const LoopDim& d : dims) {
    if (!merged.empty()) {
      LoopDim& outer = merged.back();
      if (outer.src == d.src * d.size && outer.dst == d.dst * d.size) {
        outer = {outer.size * d.size, d.src, d.dst};
        continue;
      }
    }
    merged.push_back(d);
  }
  return merged;
}

namespace {

#if defined(__x86_64__)
// float32 -> float16 eight at a time with the F16C instruction, rounding to
// nearest even as Convert<Half> does. The instruction keeps a NaN's payload;
// Convert<Half> gives every NaN the one quiet NaN with its sign (as torch's
// scalar path does), so NaN lanes are replaced by that. Returns how many
// leading elements it converted (a multiple of 8); the caller does the rest.
__attribute__((target("avx,f16c,sse4.1"))) int64_t FloatToHalfF16C(const float* src, Half* dst,
                                                                   int64_t n) {
  const __m128i quiet_nan = _mm_set1_epi16(0x7E00);
  const __m256 sign_bit = _mm256_set1_ps(-0.0f);
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 x = _mm256_loadu_ps(src + i);
    const __m128i h = _mm256_cvtps_ph(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    const __m256i nan32 = _mm256_castps_si256(_mm256_cmp_ps(x, x, _CMP_UNORD_Q));
    const __m256i sign32 = _mm256_castps_si256(_mm256_and_ps(x, sign_bit));
    // Each 32-bit lane to 16 bits: the masks saturate to 0 or -1, and a sign
    // shifted down to bit 15 fits unsigned.
    const __m128i nan16 =
        _mm_packs_epi32(_mm256_castsi256_si128(nan32), _mm256_extractf128_si256(nan32, 1));
    const __m128i sign16 =
        _mm_packus_epi32(_mm_srli_epi32(_mm256_castsi256_si128(sign32), 16),
                         _mm_srli_epi32(_mm256_extractf128_si256(sign32, 1), 16));
    const __m128i fixed = _mm_blendv_epi8(h, _mm_or_si128(sign16, quiet_nan), nan16);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + i), fixed);
  }
  return i;
}

// Whether the CPU has F16C, AVX and SSE4.1, and the OS saves the AVX
// registers (XCR0's SSE and AVX state bits).
bool HasF16C() {
  static const bool has = [] {
    unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
    if (__get_cpuid(1, &eax, &ebx, &ecx, &edx) == 0) return false;
    const unsigned needed = bit_F16C | bit_AVX | bit_SSE4_1 | bit_OSXSAVE;
    if ((ecx & needed) != needed) return false;
    unsigned xcr0_low = 0, xcr0_high = 0;
    __asm__("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
    return (xcr0_low & 6u) == 6u;
  }();
  return has;
}
#endif

template <typename S, typename D>
void ConvertRun(const S* __restrict src, int64_t src_stride, D* __restrict dst, int64_t dst_stride,
                int64_t n) {
  if (src_stride == 1 && dst_stride == 1) {
    int64_t i = 0;
#if defined(__x86_64__)
    if constexpr (std::is_same<S, float>::value && std::is_same<D, Half>::value) {
      if (HasF16C()) i = FloatToHalfF16C(src, dst, n);
    }
#endif
    for (; i < n; ++i) dst[i] = Convert<D>(src[i]);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i * dst_stride] = Convert<D>(src[i * src_stride]);
  }
}

// Converts the elements with linear (row-major over `dims`) indices
// [begin, end), a row of the innermost dim at a time. Destination offsets are
// taken relative to `dst_origin` (the offset `dst` points at).
template <typename S, typename D>
void ConvertRange(const S* src, D* dst, const std::vector<LoopDim>& dims, int64_t begin,
                  int64_t end, int64_t dst_origin = 0) {
  const size_t rank = dims.size();
  const LoopDim& inner = dims.back();
  std::vector<int64_t> index(rank);
  int64_t rest = begin, src_off = 0, dst_off = 0;
  for (size_t k = rank; k-- > 0;) {
    index[k] = rest % dims[k].size;
    rest /= dims[k].size;
    src_off += index[k] * dims[k].src;
    dst_off += index[k] * dims[k].dst;
  }
  int64_t pos = begin;
  while (pos < end) {
    const int64_t n = std::min(inner.size - index[rank - 1], end - pos);
    ConvertRun(src + src_off, inner.src, dst + (dst_off - dst_origin), inner.dst, n);
    pos += n;
    src_off += n * inner.src;
    dst_off += n * inner.dst;
    index[rank - 1] += n;
    // Carry into the outer dims.
    for (size_t k = rank - 1; k > 0 && index[k] == dims[k].size; --k) {
      src_off -= dims[k].size * dims[k].src;
      dst_off -= dims[k].size * dims[k].dst;
      index[k] = 0;
      ++index[k - 1];
      src_off += dims[k - 1].src;
      dst_off += dims[k - 1].dst;
    }
  }
}

// A copy whose innermost destination dim is strided in the source while the
// next dim is contiguous there (a transpose) reads and writes whole cache lines
// by working in kTile x kTile blocks. Work items are rows of tiles.
template <typename S, typename D>
void ConvertTransposed(const S* src, D* dst, const std::vector<LoopDim>& dims) {
  const size_t rank = dims.size();
  const LoopDim& rows = dims[rank - 2];  // contiguous in the source
  const LoopDim& cols = dims[rank - 1];  // contiguous in the destination
  std::vector<LoopDim> outer(dims.begin(), dims.end() - 2);
  int64_t outer_count = 1;
  for (const LoopDim& d : outer) outer_count *= d.size;
  const int64_t tile_rows = (rows.size + kTile - 1) / kTile;
  const int64_t grain =
      std::max<int64_t>(1, kParallelGrain / (kTile * std::max<int64_t>(1, cols.size)));
  ParallelFor(outer_count * tile_rows, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      int64_t rest = item / tile_rows, src_off = 0, dst_off = 0;
      for (size_t k = outer.size(); k-- > 0;) {
        const int64_t i = rest % outer[k].size;
        rest /= outer[k].size;
        src_off += i * outer[k].src;
        dst_off += i * outer[k].dst;
      }
      const int64_t r0 = (item % tile_rows) * kTile;
      const int64_t r1 = std::min(rows.size, r0 + kTile);
      for (int64_t c0 = 0; c0 < cols.size; c0 += kTile) {
        const int64_t c1 = std::min(cols.size, c0 + kTile);
        for (int64_t r = r0; r < r1; ++r) {
          ConvertRun(src + src_off + r * rows.src + c0 * cols.src, cols.src,
                     dst + dst_off + r * rows.dst + c0 * cols.dst, cols.dst, c1 - c0);
        }
      }
    }
  });
}

template <typename S, typename D>
void CastTyped(const S* src, D* dst, const std::vector<LoopDim>& dims, int64_t numel) {
  if (dims.empty()) {
    *dst = Convert<D>(*src);
    return;
  }
  const LoopDim& inner = dims.back();
  if (dims.size() >= 2 && inner.src != 1 && dims[dims.size() - 2].src == 1 && inner.size >= kTile &&
      dims[dims.size() - 2].size >= kTile) {
    ConvertTransposed(src, dst, dims);
    return;
  }
  ParallelFor(numel, kParallelGrain,
              [&](int64_t begin, int64_t end) { ConvertRange(src, dst, dims, begin, end); });
}

// Sufficient test that no two indices of `layout` share a destination slot:
// with dims sorted by stride, each stride exceeds the reach of all smaller ones.
bool HasNoInternalOverlap(const Layout& layout) {
  std::vector<std::pair<int64_t, int64_t>> dims;  // (stride, size)
  for (size_t i = 0; i < layout.shape.size(); ++i) {
    if (layout.shape[i] == 0) return true;
    if (layout.shape[i] > 1) dims.push_back({layout.strides[i], layout.shape[i]});
  }
  std::sort(dims.begin(), dims.end());
  int64_t reach = 0;  // largest offset the smaller dims reach
  for (const auto& [stride, size] : dims) {
    if (stride <= reach) return false;
    reach += (size - 1) * stride;  // bounded: the layout was validated
  }
  return true;
}

}  // namespace

absl::Status CheckCastViews(const Layout& src, const Layout& dst) {
  if (src.shape != dst.shape) {
    return absl::InvalidArgumentError(absl::StrCat("cannot copy shape ", DimsToString(src.shape),
                                                   " into shape ", DimsToString(dst.shape)));
  }
  if (!HasNoInternalOverlap(dst)) {
    return absl::InvalidArgumentError(
        absl::StrCat("destination strides ", DimsToString(dst.strides), " make elements overlap"));
  }
  return absl::OkStatus();
}

absl::Status CastCopy(const ConstStridedView& src, const StridedView& dst) {
  if (absl::Status s = CheckCastViews(src.layout, dst.layout); !s.ok()) return s;
  ASARRAY_ASSIGN_OR_RETURN(const int64_t numel, NumElements(src.layout.shape));
  if (numel == 0) return absl::OkStatus();
  const std::vector<LoopDim> dims = MakeCopyLoop(src.layout, dst.layout);
  DispatchDType(src.dtype, [&](auto src_tag) {
    using S = typename decltype(src_tag)::type;
    DispatchDType(dst.dtype, [&](auto dst_tag) {
      using D = typename decltype(dst_tag)::type;
      CastTyped(static_cast<const S*>(src.base) + src.layout.offset,
                static_cast<D*>(dst.base) + dst.layout.offset, dims, numel);
    });
  });
  return absl::OkStatus();
}

absl::Status CopyRowMajorRange(const ConstStridedView& src, int64_t begin, int64_t count,
                               void* dst) {
  ASARRAY_ASSIGN_OR_RETURN(const int64_t numel, NumElements(src.layout.shape));
  if (begin < 0 || count < 0 || begin > numel || count > numel - begin) {
    return absl::InvalidArgumentError(absl::StrCat("element range [", begin, ", ", begin, " + ",
                                                   count, ") is outside [0, ", numel, ")"));
  }
  if (count == 0) return absl::OkStatus();
  // With a contiguous destination the loop's linear index is the row-major
  // index, so the range maps straight onto ConvertRange.
  const std::vector<LoopDim> dims =
      MakeCopyLoop(src.layout, Layout{src.layout.shape, ContiguousStrides(src.layout.shape), 0});
  DispatchDType(src.dtype, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* base = static_cast<const T*>(src.base) + src.layout.offset;
    T* out = static_cast<T*>(dst);
    if (dims.empty()) {
      *out = *base;
    } else {
      ConvertRange(base, out, dims, begin, begin + count, /*dst_origin=*/begin);
    }
  });
  return absl::OkStatus();
}

bool CastDiscardsImaginary(DType from, DType to) {
  return IsComplex(from) && !IsComplex(to) && to != DType::kBool;
}

}  // namespace asarray
