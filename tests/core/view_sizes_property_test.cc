// A property test of the size arithmetic: for random layouts biased toward
// boundary values, ComputeViewSizes (and NumElements, ComputeByteRange and
// CheckFitsStorage on top of it) equals exact big-integer arithmetic, or
// refuses exactly when an exact number exceeds int64.
#include <cstdint>
#include <limits>
#include <optional>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "core/layout.h"
#include "gtest/gtest.h"

namespace asarray {
namespace {

__extension__ typedef __int128 Int128;

constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
constexpr int64_t kMin = std::numeric_limits<int64_t>::min();

// The reference: exact integers, saturated far beyond int64. Every sum below
// adds terms of one sign, and every product multiplies non-negative factors,
// so a saturated value is beyond int64 exactly when the true one is.
constexpr Int128 kSaturation = Int128{1} << 100;

Int128 Saturate(Int128 v) {
  if (v > kSaturation) return kSaturation;
  if (v < -kSaturation) return -kSaturation;
  return v;
}

bool Fits(Int128 v) { return v >= kMin && v <= kMax; }

struct Expected {
  absl::StatusCode code = absl::StatusCode::kOk;
  ViewSizes sizes;
};

Expected Reference(const Layout& layout, size_t item) {
  Expected e;
  const size_t rank = layout.shape.size();
  if (rank != layout.strides.size() || rank > 64 || layout.offset < 0) {
    e.code = absl::StatusCode::kInvalidArgument;
    return e;
  }
  Int128 numel = 1;
  bool empty = false;
  for (int64_t size : layout.shape) {
    if (size < 0) {
      e.code = absl::StatusCode::kInvalidArgument;
      return e;
    }
    empty |= size == 0;
    // Both factors are at most 2^63 here, so the product fits.
    numel = numel > kMax ? kSaturation : Saturate(numel * size);
  }
  if (empty) numel = 0;
  if (!Fits(numel)) {
    e.code = absl::StatusCode::kInvalidArgument;
    return e;
  }
  Int128 lo = layout.offset, hi = layout.offset;
  if (numel > 0) {
    for (size_t d = 0; d < rank; ++d) {
      const Int128 reach = Int128{layout.shape[d] - 1} * layout.strides[d];
      if (reach < 0)
        lo = Saturate(lo + reach);
      else
        hi = Saturate(hi + reach);
    }
    const Int128 begin = lo * static_cast<Int128>(item);
    const Int128 end = (hi + 1) * static_cast<Int128>(item);
    if (!Fits(lo) || !Fits(hi) || !Fits(begin) || !Fits(end)) {
      e.code = absl::StatusCode::kInvalidArgument;
      return e;
    }
    e.sizes.extent = {static_cast<int64_t>(begin), static_cast<int64_t>(end)};
  }
  const Int128 nbytes = numel * static_cast<Int128>(item);
  if (!Fits(nbytes)) {
    e.code = absl::StatusCode::kResourceExhausted;
    return e;
  }
  e.sizes.numel = static_cast<int64_t>(numel);
  e.sizes.nbytes = static_cast<int64_t>(nbytes);
  return e;
}

// Random layouts, most of their numbers drawn from the boundaries.
class LayoutGenerator {
 public:
  explicit LayoutGenerator(uint64_t seed) : rng_(seed) {
    for (int k = 0; k < 63; ++k) {
      const int64_t p = int64_t{1} << k;
      boundaries_.insert(boundaries_.end(), {p, p - 1, p + 1, -p, -p + 1, -p - 1});
    }
    boundaries_.insert(boundaries_.end(), {0, 1, 2, 3, -1, -2, kMax, kMax - 1, kMin, kMin + 1,
                                           3037000499, 3037000500, kMax / 2, kMax / 4, kMax / 16});
  }

  int64_t Number(bool non_negative) {
    int64_t v;
    switch (Pick(10)) {
      case 0:
      case 1:
      case 2:
      case 3:
      case 4:
        v = boundaries_[Pick(boundaries_.size())];
        break;
      case 5:
      case 6:
      case 7:
        v = static_cast<int64_t>(Pick(9)) - 4;
        break;
      default:
        v = static_cast<int64_t>(rng_());
    }
    if (non_negative && v < 0 && Pick(8) != 0) v = v == kMin ? kMax : -v;
    return v;
  }

  Layout Next() {
    size_t rank;
    switch (Pick(20)) {
      case 0:
        rank = 64;
        break;
      case 1:
        rank = 5 + Pick(12);
        break;
      default:
        rank = Pick(5);
    }
    if (Pick(200) == 0) rank = 65;
    Layout layout;
    for (size_t d = 0; d < rank; ++d) {
      // Mostly small sizes, so that products stay near the boundary.
      layout.shape.push_back(Pick(3) == 0 ? Number(true) : static_cast<int64_t>(Pick(5)));
      layout.strides.push_back(Number(false));
    }
    // Broadcasts: a small extent, however many elements.
    if (Pick(8) == 0) layout.strides.assign(rank, 0);
    if (Pick(50) == 0 && rank > 0) layout.strides.pop_back();
    layout.offset = Pick(4) == 0 ? Number(true) : static_cast<int64_t>(Pick(8));
    return layout;
  }

  size_t Item() { return size_t{1} << Pick(5); }

 private:
  uint64_t Pick(uint64_t n) { return rng_() % n; }

  std::mt19937_64 rng_;
  std::vector<int64_t> boundaries_;
};

void ExpectMatches(const Layout& layout, size_t item) {
  const Expected want = Reference(layout, item);
  const absl::StatusOr<ViewSizes> got = ComputeViewSizes(layout, item);
  const std::string where =
      absl::StrCat("shape ", DimsToString(layout.shape), " strides ", DimsToString(layout.strides),
                   " offset ", layout.offset, " item ", item);
  ASSERT_EQ(got.status().code(), want.code) << where << ": " << got.status();
  if (!got.ok()) {
    ASSERT_FALSE(got.status().message().empty()) << where;
    // A request's numbers are quoted, but never without bound.
    ASSERT_LE(got.status().message().size(), 600u) << where;
    return;
  }
  ASSERT_EQ(got->numel, want.sizes.numel) << where;
  ASSERT_EQ(got->nbytes, want.sizes.nbytes) << where;
  ASSERT_EQ(got->extent.begin, want.sizes.extent.begin) << where;
  ASSERT_EQ(got->extent.end, want.sizes.extent.end) << where;
  // The functions built on it agree.
  ASSERT_EQ(NumElements(layout.shape).value(), got->numel) << where;
  const absl::StatusOr<ByteRange> range = ComputeByteRange(layout, item);
  ASSERT_TRUE(range.ok()) << where;
  ASSERT_EQ(range->end, got->extent.end) << where;
  if (got->extent.begin >= 0) {
    ASSERT_TRUE(CheckFitsStorage(layout, item, got->extent.end).ok()) << where;
    if (got->numel > 0) {
      ASSERT_FALSE(CheckFitsStorage(layout, item, got->extent.end - 1).ok()) << where;
    }
  } else {
    ASSERT_FALSE(CheckFitsStorage(layout, item, kMax).ok()) << where;
  }
}

TEST(ViewSizesPropertyTest, RandomLayoutsMatchExactArithmetic) {
  LayoutGenerator gen(20261202);
  int refused_bytes = 0, refused_layout = 0, ok = 0;
  for (int i = 0; i < 300000; ++i) {
    const Layout layout = gen.Next();
    const size_t item = gen.Item();
    ExpectMatches(layout, item);
    if (HasFatalFailure()) return;
    switch (Reference(layout, item).code) {
      case absl::StatusCode::kOk:
        ++ok;
        break;
      case absl::StatusCode::kResourceExhausted:
        ++refused_bytes;
        break;
      default:
        ++refused_layout;
    }
  }
  // The generator reaches every outcome, each many times.
  EXPECT_GT(ok, 10000);
  EXPECT_GT(refused_bytes, 500);
  EXPECT_GT(refused_layout, 10000);
}

TEST(ViewSizesPropertyTest, BoundaryCasesMatchExactArithmetic) {
  const int64_t p61 = int64_t{1} << 61, p62 = int64_t{1} << 62;
  const std::vector<Layout> cases = {
      {{p61}, {0}, 0},              // the broadcast that once wrapped to 2^63
      {{p62}, {0}, 0},              // and to 0
      {{p61 - 1}, {0}, 0},          // fits for 4-byte items
      {{p62, 4, 0}, {1, 1, 1}, 0},  // empty, whatever the rest multiplies to
      {{p62}, {-4}, kMax - 1},      // a reach past int64 that the offset brings back
      {{2}, {kMax}, 0},
      {{2}, {kMin}, kMax},
      {{2}, {kMin}, 0},  // starts at byte INT64_MIN for 1-byte items
      {{kMax}, {1}, 0},
      {{1}, {kMin}, kMax},
      {{}, {}, kMax / 16},
      {{}, {}, kMax},
  };
  for (const Layout& layout : cases) {
    for (size_t item : {1, 2, 4, 8, 16}) ExpectMatches(layout, item);
  }
  const absl::StatusOr<ViewSizes> wrapped = ComputeViewSizes({{p61}, {0}, 0}, 4);
  EXPECT_EQ(wrapped.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(ComputeViewSizes({{p61 - 1}, {0}, 0}, 4)->nbytes, (p61 - 1) * 4);
}

}  // namespace
}  // namespace asarray
