#include "core/cast.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include "core/element_convert.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asarray {
namespace {

using ::testing::ElementsAre;
using ::testing::ElementsAreArray;
using ::testing::HasSubstr;

// Element offsets of `layout` (offset included), in row-major index order.
std::vector<int64_t> ElementOffsets(const Layout& layout) {
  const int64_t numel = NumElements(layout.shape).value();
  std::vector<int64_t> offsets;
  offsets.reserve(numel);
  std::vector<int64_t> index(layout.shape.size(), 0);
  for (int64_t n = 0; n < numel; ++n) {
    int64_t off = layout.offset;
    for (size_t d = 0; d < index.size(); ++d) off += index[d] * layout.strides[d];
    offsets.push_back(off);
    for (size_t d = index.size(); d-- > 0;) {
      if (++index[d] < layout.shape[d]) break;
      index[d] = 0;
    }
  }
  return offsets;
}

// Storage holding 0, 1, 2, ... as S, with room for `layout`.
template <typename S>
std::vector<S> Iota(int64_t size) {
  std::vector<S> storage(size);
  for (int64_t i = 0; i < size; ++i) storage[i] = static_cast<S>(i);
  return storage;
}

// Casts `src` (int32 storage) into a float64 destination of `dst_layout`
// filled with -1, then checks every element against Convert and that no
// other slot changed.
void CheckCast(const Layout& src_layout, const std::vector<int32_t>& src, const Layout& dst_layout,
               int64_t dst_size) {
  std::vector<double> dst(dst_size, -1.0);
  ASSERT_TRUE(
      CastCopy({src.data(), DType::kInt32, src_layout}, {dst.data(), DType::kFloat64, dst_layout})
          .ok());
  const std::vector<int64_t> from = ElementOffsets(src_layout);
  const std::vector<int64_t> to = ElementOffsets(dst_layout);
  std::vector<bool> written(dst_size, false);
  int bad = 0;
  for (size_t i = 0; i < from.size(); ++i) {
    written[to[i]] = true;
    if (dst[to[i]] != Convert<double>(src[from[i]]) && bad++ < 5) {
      ADD_FAILURE() << "element " << i << ": got " << dst[to[i]] << ", want " << src[from[i]];
    }
  }
  for (int64_t i = 0; i < dst_size; ++i) {
    if (!written[i] && dst[i] != -1.0 && bad++ < 5) ADD_FAILURE() << "slot " << i << " changed";
  }
}

TEST(CastCopyTest, Contiguous) {
  const std::vector<int32_t> src = Iota<int32_t>(6);
  std::vector<double> dst(6);
  ASSERT_TRUE(CastCopy({src.data(), DType::kInt32, {{2, 3}, {3, 1}, 0}},
                       {dst.data(), DType::kFloat64, {{2, 3}, {3, 1}, 0}})
                  .ok());
  EXPECT_THAT(dst, ElementsAre(0, 1, 2, 3, 4, 5));
}

TEST(CastCopyTest, ConvertsEachElement) {
  const float src[] = {300.7f, -5.0f, 0.5f, 65520.0f};
  uint8_t bytes[4];
  ASSERT_TRUE(
      CastCopy({src, DType::kFloat32, {{4}, {1}, 0}}, {bytes, DType::kUInt8, {{4}, {1}, 0}}).ok());
  EXPECT_THAT(bytes, ElementsAre(44, 251, 0, 240));
  Half halves[4];
  ASSERT_TRUE(
      CastCopy({src, DType::kFloat32, {{4}, {1}, 0}}, {halves, DType::kFloat16, {{4}, {1}, 0}})
          .ok());
  EXPECT_EQ(halves[0].bits, 0x5CB3);
  EXPECT_EQ(halves[3].bits, 0x7C00);
}

TEST(CastCopyTest, SmallTranspose) {
  // The 4x3 matrix 0..11, read transposed as 3x4.
  const std::vector<int32_t> src = Iota<int32_t>(12);
  std::vector<double> dst(12);
  ASSERT_TRUE(CastCopy({src.data(), DType::kInt32, {{3, 4}, {1, 3}, 0}},
                       {dst.data(), DType::kFloat64, {{3, 4}, {4, 1}, 0}})
                  .ok());
  EXPECT_THAT(dst, ElementsAre(0, 3, 6, 9, 1, 4, 7, 10, 2, 5, 8, 11));
}

TEST(CastCopyTest, TiledTranspose) {
  // Both inner dims at least 32 and neither a multiple of the tile.
  const Layout src_layout{{33, 70}, {1, 33}, 0};
  CheckCast(src_layout, Iota<int32_t>(33 * 70), {{33, 70}, {70, 1}, 0}, 33 * 70);
}

TEST(CastCopyTest, TiledTransposeWithOuterDimAndOffsets) {
  const Layout src_layout{{3, 40, 65}, {40 * 65, 1, 40}, 7};
  CheckCast(src_layout, Iota<int32_t>(7 + 3 * 40 * 65), {{3, 40, 65}, {40 * 65, 65, 1}, 5},
            5 + 3 * 40 * 65);
}

TEST(CastCopyTest, TiledTransposeLargeEnoughToSplit) {
  const Layout src_layout{{600, 500}, {1, 600}, 0};
  CheckCast(src_layout, Iota<int32_t>(600 * 500), {{600, 500}, {500, 1}, 0}, 600 * 500);
}

TEST(CastCopyTest, TiledTransposeWithNegativeAndZeroStrides) {
  // Columns reversed.
  CheckCast({{40, 50}, {1, -40}, 49 * 40}, Iota<int32_t>(40 * 50), {{40, 50}, {50, 1}, 0}, 40 * 50);
  // A column broadcast along rows.
  CheckCast({{40, 50}, {1, 0}, 0}, Iota<int32_t>(40), {{40, 50}, {50, 1}, 0}, 40 * 50);
}

TEST(CastCopyTest, TransposedDestination) {
  CheckCast({{5, 6}, {6, 1}, 0}, Iota<int32_t>(30), {{5, 6}, {1, 5}, 0}, 30);
  CheckCast({{40, 33}, {33, 1}, 0}, Iota<int32_t>(40 * 33), {{40, 33}, {1, 40}, 0}, 40 * 33);
}

TEST(CastCopyTest, BroadcastSource) {
  const std::vector<int32_t> src = {10, 20, 30, 40};
  std::vector<double> dst(12);
  ASSERT_TRUE(CastCopy({src.data(), DType::kInt32, {{3, 4}, {0, 1}, 0}},
                       {dst.data(), DType::kFloat64, {{3, 4}, {4, 1}, 0}})
                  .ok());
  EXPECT_THAT(dst, ElementsAre(10, 20, 30, 40, 10, 20, 30, 40, 10, 20, 30, 40));
  ASSERT_TRUE(CastCopy({src.data(), DType::kInt32, {{3, 4}, {1, 0}, 1}},
                       {dst.data(), DType::kFloat64, {{3, 4}, {4, 1}, 0}})
                  .ok());
  EXPECT_THAT(dst, ElementsAre(20, 20, 20, 20, 30, 30, 30, 30, 40, 40, 40, 40));
  ASSERT_TRUE(CastCopy({src.data(), DType::kInt32, {{3, 4}, {0, 0}, 3}},
                       {dst.data(), DType::kFloat64, {{3, 4}, {4, 1}, 0}})
                  .ok());
  EXPECT_THAT(dst, ElementsAreArray(std::vector<double>(12, 40)));
}

TEST(CastCopyTest, NegativeSourceStrides) {
  const std::vector<int32_t> src = Iota<int32_t>(12);
  std::vector<double> dst(12);
  ASSERT_TRUE(CastCopy({src.data(), DType::kInt32, {{3, 4}, {-4, -1}, 11}},
                       {dst.data(), DType::kFloat64, {{3, 4}, {4, 1}, 0}})
                  .ok());
  EXPECT_THAT(dst, ElementsAre(11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1, 0));
  ASSERT_TRUE(CastCopy({src.data(), DType::kInt32, {{3, 4}, {-4, 1}, 8}},
                       {dst.data(), DType::kFloat64, {{3, 4}, {4, 1}, 0}})
                  .ok());
  EXPECT_THAT(dst, ElementsAre(8, 9, 10, 11, 4, 5, 6, 7, 0, 1, 2, 3));
}

TEST(CastCopyTest, OffsetsAndStridedViews) {
  CheckCast({{3, 4}, {10, 2}, 3}, Iota<int32_t>(3 + 2 * 10 + 3 * 2 + 1), {{3, 4}, {5, 1}, 2},
            2 + 3 * 5);
  CheckCast({{2, 1, 3}, {3, 100, 1}, 1}, Iota<int32_t>(7), {{2, 1, 3}, {1, 7, 2}, 4}, 10);
}

TEST(CastCopyTest, RunsMergeOnlyWhenBothSidesAreContiguous) {
  // Contiguous source rows into padded destination rows, and the reverse.
  CheckCast({{3, 4}, {4, 1}, 0}, Iota<int32_t>(12), {{3, 4}, {5, 1}, 1}, 16);
  CheckCast({{3, 4}, {5, 1}, 1}, Iota<int32_t>(16), {{3, 4}, {4, 1}, 0}, 12);
}

TEST(CastCopyTest, ZeroDimensional) {
  const double src[] = {1.0, 2.0, -7.9};
  int16_t dst[] = {0, 0, 0};
  ASSERT_TRUE(
      CastCopy({src, DType::kFloat64, {{}, {}, 2}}, {dst, DType::kInt16, {{}, {}, 1}}).ok());
  EXPECT_THAT(dst, ElementsAre(0, -7, 0));
}

TEST(CastCopyTest, AllSizeOneDims) {
  const int32_t src[] = {0, 42};
  double dst[] = {-1, -1};
  ASSERT_TRUE(CastCopy({src, DType::kInt32, {{1, 1, 1}, {9, 9, 9}, 1}},
                       {dst, DType::kFloat64, {{1, 1, 1}, {0, 0, 0}, 1}})
                  .ok());
  EXPECT_THAT(dst, ElementsAre(-1, 42));
}

TEST(CastCopyTest, EmptyWritesNothing) {
  const int32_t src[] = {1};
  double dst[] = {-1};
  ASSERT_TRUE(CastCopy({src, DType::kInt32, {{0, 3}, {3, 1}, 0}},
                       {dst, DType::kFloat64, {{0, 3}, {3, 1}, 0}})
                  .ok());
  EXPECT_EQ(dst[0], -1);
  // A zero-size destination may use any strides.
  EXPECT_TRUE(CastCopy({src, DType::kInt32, {{3, 0}, {1, 1}, 0}},
                       {dst, DType::kFloat64, {{3, 0}, {0, 0}, 0}})
                  .ok());
}

TEST(CastCopyTest, LargeStridedCopyMatchesReference) {
  // 600 * 500 = 300000 >= 2^18 elements: split across threads. Rows of the
  // source are 1001 apart, so the two dims stay separate loops.
  const Layout src_layout{{600, 500}, {1001, 2}, 0};
  CheckCast(src_layout, Iota<int32_t>(600 * 1001), {{600, 500}, {500, 1}, 0}, 600 * 500);
}

TEST(CastCopyTest, LargeContiguousCopyMatchesReference) {
  constexpr int64_t kCount = int64_t{1} << 19;
  std::vector<float> src(kCount);
  for (int64_t i = 0; i < kCount; ++i) src[i] = static_cast<float>(i) * 0.37f - 1000.0f;
  std::vector<Half> dst(kCount);
  ASSERT_TRUE(CastCopy({src.data(), DType::kFloat32, {{kCount}, {1}, 0}},
                       {dst.data(), DType::kFloat16, {{kCount}, {1}, 0}})
                  .ok());
  int64_t bad = 0;
  for (int64_t i = 0; i < kCount; ++i) bad += dst[i].bits != HalfFromFloat(src[i]).bits;
  EXPECT_EQ(bad, 0);
}

// Contiguous float32 -> float16 runs take the F16C instruction where the CPU
// has it; every bit pattern class must come out as the scalar conversion
// gives it: ties to even at every half boundary, overflow to infinity,
// subnormal halves, signed zeros, and NaNs of any payload as the one quiet NaN.
TEST(CastCopyTest, Float16FastPathAgreesWithTheScalarConversionOnEveryKindOfValue) {
  std::vector<uint32_t> bits;
  for (uint32_t h = 0; h < 0x7C00u; ++h) {  // each finite half and the midpoint above it
    const float lo = FloatFromHalf(Half{static_cast<uint16_t>(h)});
    const float hi = FloatFromHalf(Half{static_cast<uint16_t>(h + 1)});
    uint32_t mid;
    const float m = lo + (hi - lo) / 2;
    std::memcpy(&mid, &m, 4);
    for (uint32_t b : {mid - 1, mid, mid + 1}) {
      bits.push_back(b);
      bits.push_back(b | 0x80000000u);
    }
  }
  for (uint64_t b = 0; b < (uint64_t{1} << 32); b += 4099) bits.push_back(static_cast<uint32_t>(b));
  for (uint32_t b : {0x7F800000u, 0xFF800000u, 0x7FC00000u, 0xFFC00000u, 0x7F800001u, 0xFFBFFFFFu,
                     0x7FFFFFFFu, 0x477FF000u, 0x477FEFFFu, 0x00000001u, 0x80000000u, 0x33000000u,
                     0x33000001u, 0x38800000u, 0x387FFFFFu}) {
    bits.push_back(b);
  }
  const int64_t n = static_cast<int64_t>(bits.size());
  std::vector<float> src(n);
  std::memcpy(src.data(), bits.data(), n * sizeof(float));
  std::vector<Half> dst(n);
  ASSERT_TRUE(CastCopy({src.data(), DType::kFloat32, {{n}, {1}, 0}},
                       {dst.data(), DType::kFloat16, {{n}, {1}, 0}})
                  .ok());
  int bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    const uint16_t want = HalfFromFloat(src[i]).bits;
    if (dst[i].bits != want && bad++ < 5) {
      ADD_FAILURE() << std::hex << "float bits 0x" << bits[i] << ": got 0x" << dst[i].bits
                    << ", want 0x" << want;
    }
  }
  EXPECT_EQ(bad, 0) << "of " << n;
}

TEST(CastCopyTest, EveryDTypePairThroughStridedCopy) {
  // 3 elements of value 1, 2, 3 in every dtype: a strided source and a
  // transposed destination, checked by reading back as float64.
  for (int f = 0; f < kNumDTypes; ++f) {
    for (int t = 0; t < kNumDTypes; ++t) {
      const DType from = AllDTypes()[f], to = AllDTypes()[t];
      SCOPED_TRACE(testing::Message() << DTypeName(from) << " -> " << DTypeName(to));
      std::vector<unsigned char> src(6 * ItemSize(from)), dst(3 * ItemSize(to));
      std::vector<unsigned char> back(3 * sizeof(double));
      const double values[] = {1.0, 2.0, 3.0};
      ASSERT_TRUE(
          CastCopy({values, DType::kFloat64, {{3}, {1}, 0}}, {src.data(), from, {{3}, {2}, 0}})
              .ok());
      ASSERT_TRUE(
          CastCopy({src.data(), from, {{1, 3}, {1, 2}, 0}}, {dst.data(), to, {{1, 3}, {0, 1}, 0}})
              .ok());
      ASSERT_TRUE(
          CastCopy({dst.data(), to, {{3}, {1}, 0}}, {back.data(), DType::kFloat64, {{3}, {1}, 0}})
              .ok());
      double got[3];
      std::memcpy(got, back.data(), sizeof got);
      if (from == DType::kBool || to == DType::kBool) {
        EXPECT_THAT(got, ElementsAre(1, 1, 1));
      } else {
        EXPECT_THAT(got, ElementsAre(1, 2, 3));
      }
    }
  }
}

TEST(CastCopyTest, RejectsShapeMismatch) {
  const int32_t src[6] = {};
  double dst[6];
  absl::Status s = CastCopy({src, DType::kInt32, {{2, 3}, {3, 1}, 0}},
                            {dst, DType::kFloat64, {{3, 2}, {2, 1}, 0}});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("cannot copy shape [2, 3] into shape [3, 2]"));
  EXPECT_EQ(
      CastCopy({src, DType::kInt32, {{6}, {1}, 0}}, {dst, DType::kFloat64, {{6, 1}, {1, 1}, 0}})
          .code(),
      absl::StatusCode::kInvalidArgument);
}

TEST(CastCopyTest, RejectsOverlappingDestination) {
  const int32_t src[12] = {};
  double dst[12];
  const Layout kOverlapping[] = {
      {{3, 4}, {0, 1}, 0},  // a zero stride on a dim of size 3
      {{4}, {0}, 0},
      {{2, 2}, {1, 1}, 0},  // slots 1 and 1
      {{3, 3}, {2, 1}, 0},  // rows overlap
  };
  for (const Layout& dst_layout : kOverlapping) {
    SCOPED_TRACE(DimsToString(dst_layout.shape) + DimsToString(dst_layout.strides));
    const Layout src_layout{dst_layout.shape, ContiguousStrides(dst_layout.shape), 0};
    absl::Status s = CastCopy({src, DType::kInt32, src_layout}, {dst, DType::kFloat64, dst_layout});
    ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("overlap"));
  }
}

TEST(CastDiscardsImaginaryTest, OnlyComplexIntoRealNonBool) {
  for (int f = 0; f < kNumDTypes; ++f) {
    for (int t = 0; t < kNumDTypes; ++t) {
      const DType from = AllDTypes()[f], to = AllDTypes()[t];
      SCOPED_TRACE(testing::Message() << DTypeName(from) << " -> " << DTypeName(to));
      EXPECT_EQ(CastDiscardsImaginary(from, to),
                IsComplex(from) && !IsComplex(to) && to != DType::kBool);
    }
  }
  EXPECT_TRUE(CastDiscardsImaginary(DType::kComplex64, DType::kFloat32));
  EXPECT_TRUE(CastDiscardsImaginary(DType::kComplex128, DType::kUInt8));
  EXPECT_FALSE(CastDiscardsImaginary(DType::kComplex64, DType::kBool));
  EXPECT_FALSE(CastDiscardsImaginary(DType::kComplex128, DType::kComplex64));
  EXPECT_FALSE(CastDiscardsImaginary(DType::kFloat64, DType::kFloat32));
}

}  // namespace
}  // namespace asarray
