// Faults on either side: clients SIGKILLed mid-upload, while holding leases
// or while a read streams; the server SIGKILLed with live tensors; /dev/shm
// full; renewals racing expiry. Each ends with the server serving and no
// segment, client region or byte of quota left behind.
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/server/requests.h"
#include "tests/server/test_server.h"
#include "wire/proto_convert.h"

namespace asarray::testing {
namespace {

using ::testing::HasSubstr;

// "<op> <code> <detail>" -> {code, detail}.
std::pair<std::string, std::string> Parse(const std::string& line) {
  std::vector<std::string> words = absl::StrSplit(line, absl::MaxSplits(' ', 2));
  words.resize(3);
  return {words[1], words[2]};
}

server::StoreStats StatsOf(TestServer& server) { return server.server().store().Stats(); }

bool Empty(TestServer& server) {
  const server::StoreStats s = StatsOf(server);
  return s.tensors == 0 && s.segments == 0 && s.bytes_in_use == 0 && s.client_regions == 0 &&
         server.SegmentsInDevShm() == 0;
}

TEST(Faults, ClientKilledMidUploadLeavesNothing) {
  std::unique_ptr<TestServer> server = TestServer::Start();
  ASSERT_NE(server, nullptr);
  Child client({ASARRAY_PEER_CLIENT, server->address(), "upload-half:4194304"});
  EXPECT_EQ(client.ReadLine(), "upload-half OK");
  // The upload's segment exists while the stream is open ...
  EXPECT_TRUE(Eventually([&] { return StatsOf(*server).segments == 1; }));
  client.Kill(SIGKILL);
  // ... and goes with the client.
  EXPECT_TRUE(Eventually([&] { return Empty(*server); }));
  EXPECT_TRUE(server->NewGrpcClient()->Health().ok());
}

TEST(Faults, ClientKilledHoldingLeasesIsReclaimedWhenTheyExpire) {
  std::unique_ptr<TestServer> server = TestServer::Start(
      [](server::ServerOptions& o) { o.store.default_ttl = absl::Milliseconds(300); });
  ASSERT_NE(server, nullptr);
  Child client(
      {ASARRAY_PEER_CLIENT, server->address(), "literal", "literal", "own-region:4096", "hang"});
  std::vector<std::string> ids;
  for (int i = 0; i < 2; ++i) {
    auto [code, id] = Parse(client.ReadLine());
    EXPECT_EQ(code, "OK");
    ids.push_back(id);
  }
  auto [region_code, region] = Parse(client.ReadLine());
  EXPECT_EQ(region_code, "OK");
  EXPECT_EQ(client.ReadLine(), "hang OK");
  client.Kill(SIGKILL);
  // Two result segments and the client's region, all held by leases only.
  const server::StoreStats held = StatsOf(*server);
  EXPECT_LE(held.tensors, 3u);
  EXPECT_TRUE(Eventually([&] { return Empty(*server); }));
  EXPECT_EQ(StatsOf(*server).expired, 3u) << "the leases ended by expiring";
  std::unique_ptr<Client> other = server->NewGrpcClient();
  for (const std::string& id : ids) {
    EXPECT_EQ(other->ReadBytes(id).status().code(), absl::StatusCode::kNotFound);
  }
  EXPECT_EQ(shm_unlink(region.c_str()), 0) << "the server never unlinks a client's segment";
}

TEST(Faults, ReaderKilledMidStreamLeavesTheTensorIntact) {
  std::unique_ptr<TestServer> server = TestServer::Start();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = server->NewGrpcClient();
  std::vector<int32_t> values(2 << 20);  // 8 MiB: far more than one stream window
  std::iota(values.begin(), values.end(), 0);
  std::string id;
  {
    absl::StatusOr<MappedTensor> t =
        client->ConvertInline(values.data(), values.size() * 4, DType::kInt32,
                              Layout{{static_cast<int64_t>(values.size())}, {1}, 0}, {});
    ASSERT_TRUE(t.ok()) << t.status();
    t->DetachLease();
    id = t->id();
  }  // this process unmapped it; the server's lease holds it
  const uint64_t errors_before = client->Stats()->errors();
  Child reader({ASARRAY_PEER_CLIENT, server->address(), "read-first:" + id});
  EXPECT_EQ(reader.ReadLine(), "read-first OK");
  reader.Kill(SIGKILL);
  // The stream fails on the server's side once the client is gone.
  EXPECT_TRUE(Eventually([&] { return client->Stats()->errors() == errors_before + 1; }));
  absl::StatusOr<std::string> bytes = client->ReadBytes(id);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  ASSERT_EQ(bytes->size(), values.size() * 4);
  EXPECT_EQ(std::memcmp(bytes->data(), values.data(), bytes->size()), 0);
  ASSERT_TRUE(client->Release(id).ok());
  EXPECT_TRUE(Eventually([&] { return Empty(*server); }));
}

// The real asarrayd, as the fault tests run it.
std::unique_ptr<Child> StartAsarrayd(const std::string& socket, const std::string& prefix,
                                     std::vector<std::string> wrapper = {}) {
  return StartServerProcess(ASARRAY_ASARRAYD, socket, prefix,
                            {"--segment_pool_bytes=0", "--workers=2"}, std::move(wrapper));
}

TEST(Faults, ServerKilledWithLiveTensorsIsSweptAtTheNextStart) {
  TempDir dir;
  const std::string socket = dir.path() + "/sock/asarrayd.sock";
  const std::string prefix = absl::StrCat("asarrayd-killed-", getpid());
  std::unique_ptr<Child> asarrayd = StartAsarrayd(socket, prefix);
  ASSERT_NE(asarrayd, nullptr);
  {
    std::unique_ptr<Client> client = *Client::Connect("unix:" + socket, TestServer::GrpcOnly());
    for (int i = 0; i < 3; ++i) {
      absl::StatusOr<MappedTensor> t = client->ConvertLiteral(Literal::Int(i), {});
      ASSERT_TRUE(t.ok()) << t.status();
      t->DetachLease();
    }
  }
  EXPECT_EQ(CountSegments(prefix), 3);
  asarrayd->Kill(SIGKILL);
  EXPECT_EQ(CountSegments(prefix), 3) << "a killed server cannot clean up";
  // The next server with this prefix sweeps what the dead instance left.
  std::unique_ptr<TestServer> next = TestServer::Start([&](server::ServerOptions& o) {
    o.store.prefix = prefix;
    o.sweep_orphans = true;
  });
  ASSERT_NE(next, nullptr);
  EXPECT_EQ(next->server().orphans_swept(), 3);
  EXPECT_EQ(CountSegments(prefix), 0);
  // The socket the dead server left is no obstacle either.
  std::unique_ptr<Child> again = StartAsarrayd(socket, prefix + "-again");
  ASSERT_NE(again, nullptr);
  const int status = again->Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

// Whether this process may create a mount namespace and mount a tmpfs in it.
bool CanMountTmpfs() {
  return geteuid() == 0 && std::system(
                               "unshare -m sh -c 'mount -t tmpfs -o size=64k tmpfs /mnt' "
                               ">/dev/null 2>&1") == 0;
}

TEST(Faults, FullDevShmIsResourceExhaustedAndTheServerKeepsServing) {
  if (!CanMountTmpfs()) GTEST_SKIP() << "needs root and mount namespaces";
  TempDir dir;
  const std::string socket = dir.path() + "/sock/asarrayd.sock";
  // The server's /dev/shm is a 4 MiB tmpfs in a mount namespace of its own.
  std::unique_ptr<Child> asarrayd =
      StartAsarrayd(socket, absl::StrCat("asarrayd-full-", getpid()),
                    {"unshare", "-m", "sh", "-c",
                     "mount -t tmpfs -o size=4m tmpfs /dev/shm && exec \"$0\" \"$@\""});
  ASSERT_NE(asarrayd, nullptr);
  std::unique_ptr<Client> client = *Client::Connect("unix:" + socket, TestServer::GrpcOnly());
  constexpr size_t kBig = 3 << 20;
  absl::StatusOr<v1::ConvertResponse> first = client->Convert(InlineOfBytes(kBig, 'a'));
  ASSERT_TRUE(first.ok()) << first.status();
  // No room for a second: refused when the segment is reserved, not a SIGBUS later.
  absl::StatusOr<v1::ConvertResponse> second = client->Convert(InlineOfBytes(kBig, 'b'));
  EXPECT_EQ(second.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(second.status().message(), HasSubstr("No space left"));
  v1::ConvertUploadHeader header;
  header.set_dtype(v1::DTYPE_UINT8);
  LayoutToProto(Layout{{static_cast<int64_t>(kBig)}, {1}, 0}, header.mutable_layout());
  header.set_storage_size(kBig);
  const std::string upload(kBig, 'c');
  EXPECT_EQ(client->Upload(header, upload.data()).status().code(),
            absl::StatusCode::kResourceExhausted);
  // Small requests still fit, and what was stored reads back whole.
  EXPECT_TRUE(client->Convert(InlineOfBytes(16, 'd')).ok());
  absl::StatusOr<std::string> bytes = client->ReadBytes(first->handle().id());
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, std::string(kBig, 'a'));
  // Room comes back with a release.
  ASSERT_TRUE(client->Release(first->handle().id()).ok());
  EXPECT_TRUE(client->Convert(InlineOfBytes(kBig, 'b')).ok());
  EXPECT_TRUE(client->Health().ok());
  const int status = asarrayd->Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status;
}

TEST(Faults, RenewRacingExpiryNeverResurrectsOrLeaks) {
  // Leases swept every millisecond and renewed from four threads by 1 to
  // 40 ms at a time (a renewal may shorten a lease), so that renewals and
  // expiries meet at any speed: some renewals win, some find the lease gone.
  std::unique_ptr<TestServer> server = TestServer::Start([](server::ServerOptions& o) {
    o.store.default_ttl = absl::Milliseconds(200);
    o.sweep_interval = absl::Milliseconds(1);
  });
  ASSERT_NE(server, nullptr);
  constexpr int kThreads = 4;
  constexpr int kPerThread = 8;
  std::atomic<int> resurrected{0}, renewed{0}, lost{0}, released{0}, failures{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937 rng(t);
      std::unique_ptr<Client> client = server->NewGrpcClient();
      std::vector<std::string> ids;
      for (int i = 0; i < kPerThread; ++i) {
        v1::ConvertRequest request;
        request.mutable_source()->mutable_literal()->add_nodes()->set_int_value(i);
        absl::StatusOr<v1::ConvertResponse> r = client->Convert(request);
        if (!r.ok()) ++failures;
        if (r.ok()) ids.push_back(r->handle().id());
      }
      std::vector<bool> gone(ids.size(), false);
      for (int round = 0; round < 200; ++round) {
        for (size_t i = 0; i < ids.size(); ++i) {
          absl::StatusOr<absl::Time> until =
              client->Renew(ids[i], absl::Milliseconds(1 + rng() % 40));
          if (until.ok()) {
            if (gone[i]) ++resurrected;  // an ended lease must stay ended
            ++renewed;
          } else if (until.status().code() == absl::StatusCode::kNotFound) {
            if (!gone[i]) ++lost;
            gone[i] = true;
          } else {
            ++failures;
          }
        }
      }
      for (size_t i = 0; i < ids.size(); ++i) {
        absl::Status s = client->Release(ids[i]);
        if (s.ok()) {
          if (gone[i]) ++resurrected;
          ++released;
        } else if (s.code() != absl::StatusCode::kNotFound) {
          ++failures;
        }
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(resurrected.load(), 0);
  ::testing::Test::RecordProperty("renewed", renewed.load());
  ::testing::Test::RecordProperty("lost_to_expiry", lost.load());
  EXPECT_TRUE(Eventually([&] { return Empty(*server); }));
  // Every tensor ended exactly once: released by its client or expired.
  EXPECT_EQ(released.load() + StatsOf(*server).expired, uint64_t{kThreads * kPerThread});
  EXPECT_GE(StatsOf(*server).expired, static_cast<uint64_t>(lost.load()));
}

TEST(Faults, ReleaseAfterExpiryIsNotFoundEvenBeforeTheSweep) {
  server::StoreOptions options;
  options.prefix = absl::StrCat("asarrayd-expiry-", getpid());
  options.default_ttl = absl::Milliseconds(1);
  server::TensorStore store(options);  // no sweeper runs
  server::Tensor tensor;
  tensor.layout = Layout{{4}, {1}, 0};
  tensor.owner = server::Caller::Local(geteuid());
  tensor.memory = *store.NewSegment(16);
  std::string id;
  absl::Time expires;
  {
    const server::TensorStore::Lease lease = store.Add(std::move(tensor));
    id = lease.tensor->id;
    expires = lease.expires;
  }
  ASSERT_TRUE(Eventually([&] { return absl::Now() > expires; }));
  EXPECT_EQ(store.Renew(id, absl::Seconds(1), server::Caller::Local(geteuid())).status().code(),
            absl::StatusCode::kNotFound);
  absl::Status released = store.Release(id, server::Caller::Local(geteuid()));
  EXPECT_EQ(released.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(released.message(), HasSubstr("expired"));
  EXPECT_EQ(store.Stats().expired, 1u);
  EXPECT_EQ(store.Stats().tensors, 0u);
  EXPECT_EQ(CountSegments(options.prefix), 0) << "its memory went with it";
}

}  // namespace
}  // namespace asarray::testing
