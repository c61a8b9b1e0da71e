#include "core/layout.h"

#include <cstdint>
#include <limits>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asarray {
namespace {

using ::testing::HasSubstr;

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();

TEST(DimsToStringTest, FormatsLikeAList) {
  EXPECT_EQ(DimsToString({}), "[]");
  EXPECT_EQ(DimsToString({2, -3}), "[2, -3]");
}

TEST(NumElementsTest, MultipliesSizes) {
  EXPECT_EQ(NumElements({}).value(), 1);
  EXPECT_EQ(NumElements({2, 3, 4}).value(), 24);
  EXPECT_EQ(NumElements({5, 0, 7}).value(), 0);
  EXPECT_EQ(NumElements({kMax}).value(), kMax);
  EXPECT_EQ(NumElements({int64_t{1} << 31, int64_t{1} << 31}).value(), int64_t{1} << 62);
}

TEST(NumElementsTest, RejectsNegativeSizes) {
  absl::StatusOr<int64_t> n = NumElements({2, -1, 3});
  ASSERT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(n.status().message(), HasSubstr("negative size at dim 1"));
  // A zero elsewhere does not excuse a negative size.
  EXPECT_EQ(NumElements({0, -1}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(NumElementsTest, RejectsOverflow) {
  for (const Dims& shape :
       {Dims{int64_t{1} << 32, int64_t{1} << 31}, Dims{kMax, 2}, Dims{3037000500, 3037000500}}) {
    SCOPED_TRACE(DimsToString(shape));
    EXPECT_EQ(NumElements(shape).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(ValidateLayoutTest, AcceptsOrdinaryLayouts) {
  const Layout kValid[] = {
      {{}, {}, 0},
      {{2, 3}, {3, 1}, 0},
      {{2, 3}, {1, 2}, 7},
      {{4}, {-1}, 3},
      {{3, 4}, {0, 0}, 0},
      {{0, 5}, {kMax, kMax}, 0},  // empty: strides are never applied
      {{1}, {kMin}, 0},           // a size-1 dim never moves
      {{2}, {kMax}, 0},           // reaches exactly INT64_MAX
      {{2}, {kMin + 1}, kMax},    // reaches exactly 0 from the top
      {{2}, {kMin}, kMax},        // reaches -1: representable, if not storable
  };
  for (const Layout& layout : kValid) {
    SCOPED_TRACE(DimsToString(layout.shape) + DimsToString(layout.strides));
    EXPECT_TRUE(ValidateLayout(layout).ok()) << ValidateLayout(layout);
  }
}

TEST(ValidateLayoutTest, RejectsRankMismatch) {
  absl::Status s = ValidateLayout({{2, 3}, {1}, 0});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("has 2 dims but strides [1] have 1"));
}

TEST(ValidateLayoutTest, RejectsRankAboveMax) {
  EXPECT_TRUE(ValidateLayout({Dims(kMaxRank, 1), Dims(kMaxRank, 1), 0}).ok());
  absl::Status s = ValidateLayout({Dims(kMaxRank + 1, 1), Dims(kMaxRank + 1, 1), 0});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("exceeds the maximum"));
}

TEST(ValidateLayoutTest, RejectsNegativeOffset) {
  absl::Status s = ValidateLayout({{2}, {1}, -1});
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("offset -1 is negative"));
}

TEST(ValidateLayoutTest, RejectsNegativeSize) {
  EXPECT_EQ(ValidateLayout({{-2}, {1}, 0}).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ValidateLayoutTest, RejectsReachBeyondInt64) {
  const Layout kInvalid[] = {
      {{3}, {kMax}, 0},         // 2 * INT64_MAX
      {{2}, {kMax}, 1},         // offset + INT64_MAX
      {{3}, {kMin}, 0},         // 2 * INT64_MIN
      {{2, 2}, {kMin, -1}, 0},  // INT64_MIN - 1
      {{int64_t{1} << 31, int64_t{1} << 31}, {int64_t{1} << 33, 1}, 0},
      {{2, 2}, {kMax / 2 + 1, kMax / 2 + 1}, 0},
  };
  for (const Layout& layout : kInvalid) {
    SCOPED_TRACE(DimsToString(layout.shape) + DimsToString(layout.strides));
    absl::Status s = ValidateLayout(layout);
    ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(s.message(), HasSubstr("overflow int64"));
  }
}

TEST(ComputeByteRangeTest, PositiveStrides) {
  ByteRange r = ComputeByteRange({{2, 3}, {3, 1}, 0}, 4).value();
  EXPECT_EQ(r.begin, 0);
  EXPECT_EQ(r.end, 24);
  r = ComputeByteRange({{2, 3}, {1, 4}, 5}, 2).value();  // indices 5 .. 5 + 1 + 8 = 14
  EXPECT_EQ(r.begin, 10);
  EXPECT_EQ(r.end, 30);
}

TEST(ComputeByteRangeTest, ZeroDimensional) {
  ByteRange r = ComputeByteRange({{}, {}, 3}, 8).value();
  EXPECT_EQ(r.begin, 24);
  EXPECT_EQ(r.end, 32);
}

TEST(ComputeByteRangeTest, NegativeStrides) {
  // Indices 11, 10, ..., 0: a fully reversed 3x4 view.
  ByteRange r = ComputeByteRange({{3, 4}, {-4, -1}, 11}, 4).value();
  EXPECT_EQ(r.begin, 0);
  EXPECT_EQ(r.end, 48);
  // Indices 2, 0, -2: reaches before the storage.
  r = ComputeByteRange({{3}, {-2}, 2}, 4).value();
  EXPECT_EQ(r.begin, -8);
  EXPECT_EQ(r.end, 12);
  // Mixed signs: indices from 6 - 2 = 4 up to 6 + 3 = 9.
  r = ComputeByteRange({{2, 4}, {-2, 1}, 6}, 1).value();
  EXPECT_EQ(r.begin, 4);
  EXPECT_EQ(r.end, 10);
}

TEST(ComputeByteRangeTest, ZeroStrides) {
  ByteRange r = ComputeByteRange({{1000, 3}, {0, 0}, 4}, 8).value();
  EXPECT_EQ(r.begin, 32);
  EXPECT_EQ(r.end, 40);
}

TEST(ComputeByteRangeTest, EmptyViewsTouchNothing) {
  for (const Layout& layout :
       {Layout{{0}, {1}, 0}, Layout{{3, 0}, {1, 1}, 100}, Layout{{0, 7}, {-5, kMax}, 9}}) {
    SCOPED_TRACE(DimsToString(layout.shape) + DimsToString(layout.strides));
    ByteRange r = ComputeByteRange(layout, 4).value();
    EXPECT_EQ(r.begin, 0);
    EXPECT_EQ(r.end, 0);
  }
}

TEST(ComputeByteRangeTest, RejectsInvalidLayouts) {
  EXPECT_EQ(ComputeByteRange({{2}, {1, 1}, 0}, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeByteRange({{2}, {1}, -1}, 4).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ComputeByteRangeTest, RejectsByteCountsBeyondInt64) {
  // Valid in elements, but not in bytes.
  absl::StatusOr<ByteRange> r = ComputeByteRange({{2}, {kMax / 2}, 0}, 4);
  ASSERT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("more bytes than int64"));
  EXPECT_EQ(ComputeByteRange({{2}, {kMin}, kMax}, 2).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ComputeByteRange({{}, {}, kMax}, 1).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(CheckFitsStorageTest, ExactBoundary) {
  // Last element at index 5 + (2 - 1) * 3 + (3 - 1) * 1 = 10: needs 11 * 4 bytes.
  const Layout layout{{2, 3}, {3, 1}, 5};
  EXPECT_TRUE(CheckFitsStorage(layout, 4, 44).ok());
  EXPECT_TRUE(CheckFitsStorage(layout, 4, 1000).ok());
  absl::Status s = CheckFitsStorage(layout, 4, 43);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("needs 44 bytes but its storage holds 43"));
}

TEST(CheckFitsStorageTest, NegativeStrideBoundary) {
  EXPECT_TRUE(CheckFitsStorage({{4}, {-1}, 3}, 2, 8).ok());
  EXPECT_EQ(CheckFitsStorage({{4}, {-1}, 3}, 2, 7).code(), absl::StatusCode::kInvalidArgument);
}

TEST(CheckFitsStorageTest, RejectsViewsStartingBeforeStorage) {
  absl::Status s = CheckFitsStorage({{4}, {-1}, 2}, 4, 1 << 20);
  ASSERT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("starts 4 bytes before its storage"));
}

TEST(CheckFitsStorageTest, EmptyViewFitsEmptyStorage) {
  EXPECT_TRUE(CheckFitsStorage({{0, 4}, {4, 1}, 1000}, 4, 0).ok());
}

TEST(CheckFitsStorageTest, PropagatesInvalidLayout) {
  EXPECT_EQ(CheckFitsStorage({{3}, {kMax}, 0}, 1, kMax).code(), absl::StatusCode::kInvalidArgument);
}

TEST(ContiguousStridesTest, RowMajor) {
  EXPECT_EQ(ContiguousStrides({}), Dims{});
  EXPECT_EQ(ContiguousStrides({5}), Dims{1});
  EXPECT_EQ(ContiguousStrides({2, 3, 4}), (Dims{12, 4, 1}));
  // Size-0 and size-1 dims get the stride they would have with size 1.
  EXPECT_EQ(ContiguousStrides({2, 1, 4}), (Dims{4, 4, 1}));
  EXPECT_EQ(ContiguousStrides({2, 0, 4}), (Dims{4, 4, 1}));
  EXPECT_EQ(ContiguousStrides({3, 4, 1}), (Dims{4, 1, 1}));
}

TEST(ContiguousStridesTest, SaturatesForHugeEmptyShapes) {
  const Dims strides = ContiguousStrides({0, kMax, 4});
  EXPECT_EQ(strides[2], 1);
  EXPECT_EQ(strides[1], 4);
  EXPECT_EQ(strides[0], kMax);
}

struct DenseCase {
  Dims shape;
  Dims strides;
  bool contiguous;
  bool dense;
};

// Expected values agree with torch 1.13's is_contiguous() and
// torch._prims_common.is_non_overlapping_and_dense().
const DenseCase kDenseCases[] = {
    {{}, {}, true, true},
    {{2, 3}, {3, 1}, true, true},
    {{2, 3}, {1, 2}, false, true},         // transpose
    {{3, 4}, {1, 3}, false, true},         // transpose
    {{2, 3, 4}, {1, 2, 6}, false, true},   // fully reversed order
    {{2, 3, 4}, {12, 1, 3}, false, true},  // inner pair swapped
    {{3, 4}, {0, 1}, false, false},        // broadcast
    {{3, 4}, {4, 0}, false, false},        // broadcast
    {{3}, {2}, false, false},              // slice step 2
    {{3, 4}, {8, 2}, false, false},        // slice step 2
    {{4, 4}, {2, 2}, false, false},        // overlapping
    {{2, 2}, {1, 1}, false, false},        // overlapping
    {{0}, {7}, true, true},                // empty
    {{0, 3}, {7, 7}, true, true},          // empty
    {{3, 0}, {0, 0}, true, true},          // empty
    {{1}, {5}, true, true},                // size-1 dims ignore their strides
    {{2, 1}, {1, 9}, true, true},
    {{5, 1, 3}, {1, 7, 5}, false, true},
    {{1, 1, 1}, {3, 7, 11}, true, true},
    {{4, 3}, {3, 1}, true, true},
    {{3, 2}, {1, 4}, false, false},  // a gap between rows
};

TEST(IsContiguousTest, MatchesTorch) {
  for (const DenseCase& c : kDenseCases) {
    SCOPED_TRACE(DimsToString(c.shape) + DimsToString(c.strides));
    EXPECT_EQ(IsContiguous(c.shape, c.strides), c.contiguous);
  }
}

TEST(IsNonOverlappingAndDenseTest, MatchesTorch) {
  for (const DenseCase& c : kDenseCases) {
    SCOPED_TRACE(DimsToString(c.shape) + DimsToString(c.strides));
    EXPECT_EQ(IsNonOverlappingAndDense(c.shape, c.strides), c.dense);
  }
}

TEST(HasNegativeStrideTest, Basics) {
  EXPECT_FALSE(HasNegativeStride({}));
  EXPECT_FALSE(HasNegativeStride({0, 1, kMax}));
  EXPECT_TRUE(HasNegativeStride({3, -1}));
  EXPECT_TRUE(HasNegativeStride({kMin}));
}

struct StrideCase {
  Dims shape;
  Dims strides;
  Dims torch_clone_strides;
};

// torch_clone_strides came from torch 1.13 (torch.clone()):
//   torch.empty(1000).as_strided(shape, strides).clone().stride()
// clone keeps the strides of a non-overlapping and dense input and otherwise
// uses infer_dense_strides.
const StrideCase kNonDenseCases[] = {
    {{3}, {2}, {1}},
    {{3, 4}, {0, 1}, {4, 1}},
    {{3, 4}, {1, 0}, {4, 1}},
    {{2, 3, 4}, {0, 4, 1}, {12, 4, 1}},
    {{2, 3, 4}, {4, 0, 1}, {12, 4, 1}},
    {{2, 3, 4}, {0, 0, 1}, {12, 4, 1}},
    {{2, 3, 4}, {1, 0, 0}, {12, 4, 1}},
    {{3, 4, 5}, {0, 0, 0}, {20, 5, 1}},
    {{4, 3, 2}, {0, 1, 0}, {6, 2, 1}},
    {{2, 1, 3}, {0, 5, 2}, {3, 3, 1}},
    {{2, 2, 2}, {2, 0, 1}, {4, 2, 1}},
    {{4, 4}, {2, 2}, {4, 1}},
    {{3, 3}, {2, 2}, {3, 1}},
    {{2, 2}, {1, 1}, {2, 1}},
    {{3, 2}, {4, 4}, {2, 1}},  // equal strides: the smaller size goes inside
    {{2, 3}, {4, 4}, {1, 2}},
    {{3, 2, 2}, {4, 4, 1}, {4, 2, 1}},
    {{3, 4}, {8, 2}, {4, 1}},
    {{3, 4}, {1, 6}, {1, 3}},
    {{2, 3, 4}, {24, 8, 2}, {12, 4, 1}},
    {{2, 3, 4}, {2, 8, 24}, {1, 2, 6}},
    {{3, 1, 4}, {8, 100, 2}, {4, 12, 1}},
};

const StrideCase kDenseStrideCases[] = {
    {{3, 4}, {1, 3}, {1, 3}},          {{2, 3, 4}, {12, 1, 3}, {12, 1, 3}},
    {{2, 3, 4}, {1, 2, 6}, {1, 2, 6}}, {{2, 3, 4}, {3, 1, 6}, {3, 1, 6}},
    {{5, 1, 3}, {1, 7, 5}, {1, 7, 5}}, {{3, 4}, {4, 1}, {4, 1}},
    {{0, 3}, {0, 5}, {0, 5}},          {{2, 0, 3}, {1, 0, 9}, {1, 0, 9}},
};

TEST(DenseStridesLikeTest, MatchesTorchInferDenseStrides) {
  for (const StrideCase& c : kNonDenseCases) {
    SCOPED_TRACE(DimsToString(c.shape) + DimsToString(c.strides));
    EXPECT_EQ(DenseStridesLike(c.shape, c.strides), c.torch_clone_strides);
  }
}

TEST(DenseStridesLikeTest, RankZeroAndOne) {
  EXPECT_EQ(DenseStridesLike({}, {}), Dims{});
  EXPECT_EQ(DenseStridesLike({7}, {-3}), Dims{1});
}

TEST(CopyStridesTest, MatchesTorchClone) {
  for (const StrideCase& c : kNonDenseCases) {
    SCOPED_TRACE(DimsToString(c.shape) + DimsToString(c.strides));
    EXPECT_EQ(CopyStrides(c.shape, c.strides), c.torch_clone_strides);
  }
  for (const StrideCase& c : kDenseStrideCases) {
    SCOPED_TRACE(DimsToString(c.shape) + DimsToString(c.strides));
    EXPECT_EQ(CopyStrides(c.shape, c.strides), c.torch_clone_strides);
  }
}

}  // namespace
}  // namespace asarray
