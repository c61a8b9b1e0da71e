// SegmentPool: warm segments of exactly the requested size, never reused,
// bounded in bytes, and unlinked with the pool.
#include "server/segment_pool.h"

#include <unistd.h>

#include <chrono>
#include <cstring>
#include <set>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "server/tensor_store.h"
#include "tests/server/test_server.h"
#include "wire/posix_util.h"

namespace asarray::server {
namespace {

class SegmentPoolTest : public ::testing::Test {
 protected:
  std::string prefix_ = absl::StrCat("asarrayd-pool-test-", getpid());
  int counter_ = 0;
  std::function<std::string()> Names() {
    return [this] { return absl::StrCat("/", prefix_, "-", counter_++, "-", RandomHex128()); };
  }
  // Polls until the pool holds `bytes`; never a fixed sleep.
  static bool HoldsEventually(const SegmentPool& pool, uint64_t bytes) {
    for (int i = 0; i < 2000 && pool.bytes() != bytes; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    return pool.bytes() == bytes;
  }
  void TearDown() override { EXPECT_EQ(testing::CountSegments(prefix_), 0); }
};

TEST_F(SegmentPoolTest, TakeMissesFirstThenGetsAWarmSegmentOfThatSize) {
  SegmentPool pool(8 << 20, Names());
  const uint64_t size = 3 << 20;
  EXPECT_EQ(pool.Take(size), nullptr);  // cold: nothing prepared yet
  ASSERT_TRUE(HoldsEventually(pool, size));
  std::unique_ptr<ShmSegment> warm = pool.Take(size);
  ASSERT_NE(warm, nullptr);
  EXPECT_EQ(warm->size(), size);
  EXPECT_TRUE(warm->touched());
  EXPECT_EQ(warm->data()[size - 1], 0);
  EXPECT_EQ(pool.hits(), 1u);
  EXPECT_EQ(pool.Take(size + 1), nullptr);  // sizes must match exactly
}

TEST_F(SegmentPoolTest, PrivateSegmentsArePooledApartAndHaveNoDescriptor) {
  SegmentPool pool(8 << 20, Names());
  const uint64_t size = 2 << 20;
  EXPECT_EQ(pool.Take(size, ShmSegment::Kind::kPrivate), nullptr);
  ASSERT_TRUE(HoldsEventually(pool, size));
  EXPECT_EQ(pool.Take(size, ShmSegment::Kind::kMemfd), nullptr);  // kinds never mix
  std::unique_ptr<ShmSegment> warm = pool.Take(size, ShmSegment::Kind::kPrivate);
  ASSERT_NE(warm, nullptr);
  EXPECT_EQ(warm->kind(), ShmSegment::Kind::kPrivate);
  EXPECT_EQ(warm->fd(), -1);
  EXPECT_EQ(warm->name(), "");
  EXPECT_TRUE(warm->touched());
  std::memset(warm->data(), 0x5a, size);
  EXPECT_EQ(warm->data()[size - 1], 0x5a);
}

TEST(ShmSegmentKinds, EachKindIsMadeAsItSaysAndANameGoesOnlyWithTheNamedKind) {
  absl::StatusOr<std::unique_ptr<ShmSegment>> reserved =
      ShmSegment::Create(ShmSegment::Kind::kPrivate, 3 << 20);
  ASSERT_TRUE(reserved.ok()) << reserved.status();
  EXPECT_TRUE((*reserved)->touched());  // its pages are in already
  EXPECT_EQ((*reserved)->data()[(3 << 20) - 1], 0);
  absl::StatusOr<std::unique_ptr<ShmSegment>> memfd =
      ShmSegment::Create(ShmSegment::Kind::kMemfd, 4096);
  ASSERT_TRUE(memfd.ok()) << memfd.status();
  EXPECT_GE((*memfd)->fd(), 0);
  EXPECT_EQ(ShmSegment::Create(ShmSegment::Kind::kPrivate, 4096, "/a-name").status().code(),
            absl::StatusCode::kInternal);
  EXPECT_EQ(ShmSegment::Create(ShmSegment::Kind::kNamed, 4096).status().code(),
            absl::StatusCode::kInternal);
  absl::StatusOr<std::unique_ptr<ShmSegment>> empty =
      ShmSegment::Create(ShmSegment::Kind::kPrivate, 0);
  ASSERT_TRUE(empty.ok()) << empty.status();
  EXPECT_EQ((*empty)->data(), nullptr);
}

TEST_F(SegmentPoolTest, EverySegmentHasAFreshName) {
  SegmentPool pool(8 << 20, Names());
  std::set<std::string> names;
  pool.Take(1 << 20);
  for (int i = 0; i < 4; ++i) {
    ASSERT_TRUE(HoldsEventually(pool, 1 << 20));
    std::unique_ptr<ShmSegment> s = pool.Take(1 << 20);
    ASSERT_NE(s, nullptr);
    EXPECT_TRUE(names.insert(s->name()).second) << s->name();
  }
}

TEST_F(SegmentPoolTest, StaysWithinItsBytesAndIgnoresSmallOrHugeSizes) {
  SegmentPool pool(5 << 20, Names());
  EXPECT_EQ(pool.Take(4096), nullptr);
  EXPECT_EQ(pool.Take(64 << 20), nullptr);
  pool.Take(3 << 20);
  ASSERT_TRUE(HoldsEventually(pool, 3 << 20));
  pool.Take(4 << 20);  // evicts the 3 MiB one to make room
  ASSERT_TRUE(HoldsEventually(pool, 4 << 20));
  EXPECT_LE(pool.bytes(), 5u << 20);
}

TEST_F(SegmentPoolTest, RefillWaitsWhileATransferIsMarked) {
  SegmentPool pool(8 << 20, Names());
  {
    SegmentPool::Foreground upload = pool.EnterForeground();
    SegmentPool::Foreground copy = pool.EnterForeground();
    EXPECT_EQ(pool.Take(3 << 20), nullptr);
    { SegmentPool::Foreground ended = std::move(copy); }  // one transfer ends
    // A refill takes milliseconds; given far longer, none starts while the
    // other transfer runs.
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    EXPECT_EQ(pool.bytes(), 0u);
  }
  EXPECT_TRUE(HoldsEventually(pool, 3 << 20));
}

TEST_F(SegmentPoolTest, StoppingDuringARefillLeavesNoSegment) {
  for (int i = 0; i < 5; ++i) {
    SegmentPool pool(64 << 20, Names());
    pool.Take(64 << 20);  // starts preparing 64 MiB, step by step
  }
  // TearDown counts this test's segments: none may remain.
}

TEST_F(SegmentPoolTest, DisabledPoolHoldsNothing) {
  SegmentPool pool(0, Names());
  EXPECT_EQ(pool.Take(2 << 20), nullptr);
  EXPECT_EQ(pool.bytes(), 0u);
}

TEST(SegmentPoolInStore, ResultsTakeWarmSegmentsAndShutdownUnlinksThePool) {
  std::unique_ptr<testing::TestServer> server =
      testing::TestServer::Start([](ServerOptions& o) { o.store.pool_bytes = 16 << 20; });
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = server->NewGrpcClient();
  std::vector<uint8_t> bytes(2 << 20, 9);
  const Layout layout{{2 << 20}, {1}, 0};
  for (int i = 0; i < 3; ++i) {
    for (int p = 0; p < 2000 && i > 0 && server->server().store().Stats().pool_bytes == 0; ++p) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    absl::StatusOr<MappedTensor> t =
        client->ConvertInline(bytes.data(), bytes.size(), DType::kUInt8, layout, {});
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(static_cast<const uint8_t*>(t->data())[12345], 9);
  }
  EXPECT_EQ(server->server().store().Stats().pool_hits, 2u);

  // Streamed uploads into a warm segment copy each chunk as it arrives.
  client->set_upload_threshold(64 << 10);
  client->set_chunk_size(96 << 10);  // chunks that do not divide the size
  std::vector<uint8_t> pattern(2 << 20);
  for (size_t i = 0; i < pattern.size(); ++i) pattern[i] = static_cast<uint8_t>(i * 131 + 7);
  for (int i = 0; i < 4; ++i) {
    for (int p = 0; p < 2000 && server->server().store().Stats().pool_bytes == 0; ++p) {
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    absl::StatusOr<MappedTensor> t =
        client->ConvertInline(pattern.data(), pattern.size(), DType::kUInt8, layout, {});
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_EQ(std::memcmp(t->data(), pattern.data(), pattern.size()), 0) << "upload " << i;
  }
  EXPECT_GE(server->server().store().Stats().pool_hits, 5u);
  // TestServer's teardown fails the test if a pooled segment outlives the server.
}

}  // namespace
}  // namespace asarray::server
