#include "core/parallel.h"

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <limits>
#include <memory>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#include "gtest/gtest.h"

namespace asarray {
namespace {

using Piece = std::pair<int64_t, int64_t>;

// Runs ParallelFor and returns the pieces it handed out, sorted.
std::vector<Piece> RecordPieces(int64_t total, int64_t grain) {
  std::mutex mu;
  std::vector<Piece> pieces;
  ParallelFor(total, grain, [&](int64_t begin, int64_t end) {
    std::lock_guard<std::mutex> lock(mu);
    pieces.emplace_back(begin, end);
  });
  std::sort(pieces.begin(), pieces.end());
  return pieces;
}

TEST(ParallelForTest, MaxParallelismIsPositive) { EXPECT_GE(MaxParallelism(), 1); }

TEST(ParallelForTest, CoversEveryIndexExactlyOnce) {
  for (int64_t total : {1, 2, 7, 1000, 100003, 1 << 20}) {
    for (int64_t grain : {int64_t{0}, int64_t{1}, int64_t{3}, int64_t{1000}, int64_t{1} << 18}) {
      SCOPED_TRACE(testing::Message() << "total " << total << ", grain " << grain);
      std::unique_ptr<std::atomic<int>[]> counts(new std::atomic<int>[total]);
      for (int64_t i = 0; i < total; ++i) counts[i].store(0);
      ParallelFor(total, grain, [&](int64_t begin, int64_t end) {
        ASSERT_LE(0, begin);
        ASSERT_LT(begin, end);
        ASSERT_LE(end, total);
        for (int64_t i = begin; i < end; ++i) counts[i].fetch_add(1);
      });
      int64_t wrong = 0;
      for (int64_t i = 0; i < total; ++i) wrong += counts[i].load() != 1;
      EXPECT_EQ(wrong, 0);
    }
  }
}

TEST(ParallelForTest, PiecesTileTheRange) {
  for (int64_t total : {5, 64, 999, 1 << 16}) {
    for (int64_t grain : {1, 2, 3, 100}) {
      SCOPED_TRACE(testing::Message() << "total " << total << ", grain " << grain);
      const std::vector<Piece> pieces = RecordPieces(total, grain);
      ASSERT_FALSE(pieces.empty());
      EXPECT_LE(static_cast<int64_t>(pieces.size()), MaxParallelism());
      int64_t next = 0;
      for (const Piece& p : pieces) {
        EXPECT_EQ(p.first, next);
        EXPECT_LT(p.first, p.second);
        next = p.second;
      }
      EXPECT_EQ(next, total);
    }
  }
}

TEST(ParallelForTest, RangesNoLargerThanTheGrainRunInlineInOneCall) {
  const std::thread::id caller = std::this_thread::get_id();
  for (const Piece& total_grain : {Piece{1, 1}, Piece{10, 10}, Piece{100, 1000}, Piece{1, 0}}) {
    SCOPED_TRACE(testing::Message()
                 << "total " << total_grain.first << ", grain " << total_grain.second);
    int calls = 0;
    ParallelFor(total_grain.first, total_grain.second, [&](int64_t begin, int64_t end) {
      ++calls;
      EXPECT_EQ(std::this_thread::get_id(), caller);
      EXPECT_EQ(begin, 0);
      EXPECT_EQ(end, total_grain.first);
    });
    EXPECT_EQ(calls, 1);
  }
}

TEST(ParallelForTest, EmptyOrNegativeTotalCallsNothing) {
  for (int64_t total : {int64_t{0}, int64_t{-1}, std::numeric_limits<int64_t>::min()}) {
    int calls = 0;
    ParallelFor(total, 1, [&](int64_t, int64_t) { ++calls; });
    EXPECT_EQ(calls, 0) << "total " << total;
  }
}

TEST(ParallelForTest, WaitsForEveryPiece) {
  std::atomic<int64_t> sum{0};
  ParallelFor(1 << 20, 1, [&](int64_t begin, int64_t end) {
    int64_t local = 0;
    for (int64_t i = begin; i < end; ++i) local += i;
    sum.fetch_add(local);
  });
  EXPECT_EQ(sum.load(), (int64_t{1} << 20) * ((int64_t{1} << 20) - 1) / 2);
}

TEST(ParallelForTest, HugeTotalsDoNotOverflow) {
  // The pieces are only recorded, never iterated.
  constexpr int64_t kMax = std::numeric_limits<int64_t>::max();
  for (const Piece& total_grain : {Piece{kMax, 1}, Piece{kMax, kMax / 4}, Piece{kMax - 1, 2}}) {
    SCOPED_TRACE(testing::Message()
                 << "total " << total_grain.first << ", grain " << total_grain.second);
    const std::vector<Piece> pieces = RecordPieces(total_grain.first, total_grain.second);
    int64_t next = 0;
    for (const Piece& p : pieces) {
      EXPECT_EQ(p.first, next);
      EXPECT_LT(p.first, p.second);
      next = p.second;
    }
    EXPECT_EQ(next, total_grain.first);
  }
}

}  // namespace
}  // namespace asarray
