// The local transport (server/local_transport.h): the envelope, memory as
// descriptors both ways, the checks on a client's descriptor, and leases
// that end with their connection. Every test also checks that nothing of
// this path is named in /dev/shm, and that every descriptor the server
// received was closed.
#include "server/local_transport.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <fstream>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "tests/server/test_server.h"
#include "wire/proto_convert.h"

namespace asarray::testing {
namespace {

using ::testing::HasSubstr;

// The entries in /dev/shm this process could have made: its server's (the
// test prefix holds the pid) and its clients' (named with the pid). Tests
// in other processes run beside it.
std::set<std::string> DevShmEntries() {
  const std::string pid = absl::StrCat("-", getpid(), "-");
  std::set<std::string> out;
  if (DIR* dir = opendir("/dev/shm")) {
    while (const dirent* e = readdir(dir)) {
      if (absl::StrContains(e->d_name, pid)) out.insert(e->d_name);
    }
    closedir(dir);
  }
  return out;
}

std::string Floats(const std::vector<float>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * sizeof(float));
}

v1::ConvertRequest InlineFloats(const std::vector<float>& values, Dims shape, Dims strides) {
  v1::ConvertRequest request;
  v1::InlineArray* a = request.mutable_source()->mutable_inline_array();
  a->set_dtype(v1::DTYPE_FLOAT32);
  LayoutToProto(Layout{std::move(shape), std::move(strides), 0}, a->mutable_layout());
  a->set_storage(Floats(values));
  return request;
}

// An fd source: float32 of `shape`, contiguous, at `offset` bytes of
// descriptor `index`, `size` bytes.
v1::ConvertRequest FdFloats(const Dims& shape, uint64_t offset, uint64_t size, uint32_t index = 0) {
  v1::ConvertRequest request;
  v1::FdArray* a = request.mutable_source()->mutable_fd();
  a->set_fd_index(index);
  a->set_offset(offset);
  a->set_size(size);
  a->set_dtype(v1::DTYPE_FLOAT32);
  LayoutToProto(Layout{shape, ContiguousStrides(shape), 0}, a->mutable_layout());
  return request;
}

// The bytes [offset, offset + size) of the file behind `fd`.
std::string ReadFd(int fd, uint64_t offset, uint64_t size) {
  std::string out(size, '\0');
  EXPECT_EQ(pread(fd, out.data(), size, static_cast<off_t>(offset)), static_cast<ssize_t>(size));
  return out;
}

class LocalTransportTest : public ::testing::Test {
 protected:
  void SetUp() override {
    shm_before_ = DevShmEntries();
    server_ = TestServer::Start();
    ASSERT_NE(server_, nullptr);
    client_ = server_->NewGrpcClient();
    ASSERT_TRUE(client_->Stats().ok());  // gRPC opens its descriptors on first use
    fds_before_ = CountFds(getpid());
  }

  void TearDown() override {
    // Connections a test closed end their handles on the server's threads.
    EXPECT_GE(WaitFor([&] { return client_->Stats()->tensors() == 0; }), 0)
        << "a test left a handle behind";
    // Nothing of the local path has a name.
    EXPECT_EQ(DevShmEntries(), shm_before_);
    client_.reset();
    server_.reset();
  }

  // Polls until `done` holds (up to 5 s); the milliseconds it took, or -1.
  template <typename Done>
  static double WaitFor(Done done) {
    const auto start = std::chrono::steady_clock::now();
    for (;;) {
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start)
              .count();
      if (done()) return ms;
      if (ms > 5000) return -1;
      std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
  }

  // Every descriptor the server received is closed again.
  void ExpectNoFdsLeaked(const std::string& context) {
    EXPECT_GE(WaitFor([&] { return CountFds(getpid()) <= fds_before_; }), 0)
        << context << ": " << CountFds(getpid()) << " descriptors open, " << fds_before_
        << " before";
  }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<Client> client_;
  std::set<std::string> shm_before_;
  int fds_before_ = 0;
};

TEST_F(LocalTransportTest, ResultsAreSealedMemfdsSentWithTheAnswer) {
  LocalConnection local(server_->address());
  ASSERT_TRUE(local.connected());
  v1::ConvertResponse response;
  std::vector<UniqueFd> received;
  ASSERT_TRUE(
      local.Convert(InlineFloats({1, 2, 3, 4}, {2, 2}, {1, 2}), {}, &response, &received).ok());
  const v1::TensorHandle& handle = response.handle();
  ASSERT_TRUE(handle.has_fd()) << handle.DebugString();
  EXPECT_FALSE(handle.fd().request_fd());
  ASSERT_EQ(received.size(), 1u);
  EXPECT_EQ(handle.fd().fd_index(), 0u);
  EXPECT_EQ(handle.lease_expires_unix_ms(), 0) << "a connection's lease has no time";
  // A memfd, sealed so that its size never changes under a mapping.
  const int seals = fcntl(received[0].get(), F_GET_SEALS);
  EXPECT_EQ(seals & (F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL),
            F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL);
  EXPECT_NE(ftruncate(received[0].get(), 0), 0);
  // The inline storage as it arrived (the handle keeps its layout).
  EXPECT_EQ(ReadFd(received[0].get(), handle.fd().offset(), handle.fd().size()),
            Floats({1, 2, 3, 4}));
  // The same handle reads back over gRPC, and is the caller's there too.
  EXPECT_EQ(*client_->ReadBytes(handle.id()), Floats({1, 3, 2, 4}));
  v1::StatsResponse stats = *client_->Stats();
  EXPECT_EQ(stats.connection_leases(), 1u);
  EXPECT_EQ(stats.local_connections(), 1u);
  EXPECT_GT(stats.fds(), 0u);
  EXPECT_GE(stats.fd_limit(), stats.fds());
  v1::ReleaseRequest release;
  release.set_id(handle.id());
  EXPECT_TRUE(local.Release(release).ok());
  EXPECT_EQ(local.Release(release).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Stats()->connection_leases(), 0u);
  // Errors carry gRPC's code and message.
  v1::ConvertRequest no_copy = InlineFloats({1}, {1}, {1});
  no_copy.mutable_options()->set_copy(false);
  const absl::Status refused = local.Convert(no_copy);
  EXPECT_EQ(refused.code(), absl::StatusCode::kFailedPrecondition);
  grpc::ClientContext context;
  v1::ConvertResponse ignored;
  const grpc::Status over_grpc =
      v1::AsArray::NewStub(
          grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()))
          ->Convert(&context, no_copy, &ignored);
  EXPECT_EQ(std::string(refused.message()), over_grpc.error_message());
}

TEST_F(LocalTransportTest, StatsAndRenewTravelTooAndRenewingUntiesTheLease) {
  LocalConnection local(server_->address());
  v1::ConvertResponse response;
  std::vector<UniqueFd> received;
  ASSERT_TRUE(local.Convert(InlineFloats({1}, {1}, {1}), {}, &response, &received).ok());
  v1::LocalRequest renew;
  renew.mutable_renew()->set_id(response.handle().id());
  v1::LocalResponse answer;
  ASSERT_TRUE(local.Call(renew, {}, &answer).ok());
  EXPECT_GT(answer.renew().lease_expires_unix_ms(), 0);
  v1::LocalRequest stats;
  stats.mutable_stats();
  ASSERT_TRUE(local.Call(stats, {}, &answer).ok());
  EXPECT_EQ(answer.stats().tensors(), 1u);
  EXPECT_EQ(answer.stats().connection_leases(), 0u) << "a renewed lease is a TTL lease";
  EXPECT_TRUE(client_->Release(response.handle().id()).ok());
}

TEST_F(LocalTransportTest, AnFdSourceIsAliasedAsTheRequestsOwnAndCastIntoANewMemfd) {
  LocalConnection local(server_->address());
  UniqueFd memfd = SealedMemfd(64, std::string(16, '\0') + Floats({1.5f, -2, 3, 4}));
  v1::ConvertResponse response;
  std::vector<UniqueFd> received;
  ASSERT_TRUE(local.Convert(FdFloats({4}, 16, 16), {memfd.get()}, &response, &received).ok());
  const v1::TensorHandle alias = response.handle();
  EXPECT_TRUE(alias.shares_memory());
  ASSERT_TRUE(alias.has_fd());
  EXPECT_TRUE(alias.fd().request_fd()) << "the caller's own memory comes back as its own";
  EXPECT_EQ(alias.fd().offset(), 16u);
  EXPECT_TRUE(received.empty());
  EXPECT_EQ(client_->Stats()->client_regions(), 1u);
  // Written through the alias, read through the server.
  const float seven = 7;
  ASSERT_EQ(pwrite(memfd.get(), &seven, 4, 16), 4);
  EXPECT_EQ(*client_->ReadBytes(alias.id()), Floats({7, -2, 3, 4}));

  // A cast copies into a memfd of the server's, sent with the answer.
  v1::ConvertRequest cast = FdFloats({4}, 16, 16);
  cast.mutable_options()->set_dtype(v1::DTYPE_FLOAT64);
  ASSERT_TRUE(local.Convert(cast, {memfd.get()}, &response, &received).ok());
  ASSERT_EQ(received.size(), 1u);
  EXPECT_FALSE(response.handle().shares_memory());
  const std::vector<double> expected = {7, -2, 3, 4};
  EXPECT_EQ(ReadFd(received[0].get(), response.handle().fd().offset(), 32),
            std::string(reinterpret_cast<const char*>(expected.data()), 32));
  EXPECT_TRUE(client_->Release(alias.id()).ok());
  EXPECT_TRUE(client_->Release(response.handle().id()).ok());
  // The copy's hold on the region may end on a worker just after the answer.
  EXPECT_GE(WaitFor([&] { return client_->Stats()->client_regions() == 0; }), 0);
}

TEST_F(LocalTransportTest, AnotherConnectionTakesATensorByIdAndGetsItsDescriptor) {
  UniqueFd memfd = SealedMemfd(16, Floats({1, 2, 3, 4}));
  struct stat mine;
  ASSERT_EQ(fstat(memfd.get(), &mine), 0);
  std::string id;
  {
    LocalConnection producer(server_->address());
    v1::ConvertRequest request = FdFloats({4}, 0, 16);
    request.set_ttl_ms(0);  // a TTL lease (the default), for a handoff
    v1::ConvertResponse response;
    ASSERT_TRUE(producer.Convert(request, {memfd.get()}, &response).ok());
    id = response.handle().id();
    EXPECT_GT(response.handle().lease_expires_unix_ms(), 0);
  }  // the producer's connection closes; its TTL lease stays
  LocalConnection consumer(server_->address());
  v1::ConvertRequest take;
  take.mutable_source()->set_tensor_id(id);
  take.mutable_options()->set_copy(false);
  v1::ConvertResponse response;
  std::vector<UniqueFd> received;
  ASSERT_TRUE(consumer.Convert(take, {}, &response, &received).ok());
  ASSERT_EQ(received.size(), 1u);
  EXPECT_TRUE(response.handle().shares_memory());
  struct stat theirs;
  ASSERT_EQ(fstat(received[0].get(), &theirs), 0);
  EXPECT_EQ(theirs.st_dev, mine.st_dev);
  EXPECT_EQ(theirs.st_ino, mine.st_ino) << "the very same memory, with no name behind it";
  const float nine = 9;
  ASSERT_EQ(pwrite(received[0].get(), &nine, 4, 0), 4);
  EXPECT_EQ(ReadFd(memfd.get(), 0, 4), Floats({9}));
  EXPECT_TRUE(client_->Release(id).ok());
  v1::ReleaseRequest release;
  release.set_id(response.handle().id());
  EXPECT_TRUE(consumer.Release(release).ok());
}

TEST_F(LocalTransportTest, HandlesEndWithTheirConnectionUnlessTheyAskedForATtl) {
  std::string kept;
  {
    LocalConnection local(server_->address());
    for (int i = 0; i < 3; ++i) {
      ASSERT_TRUE(local.Convert(InlineFloats({1, 2}, {2}, {1})).ok());
    }
    v1::ConvertRequest with_ttl = InlineFloats({1, 2}, {2}, {1});
    with_ttl.set_ttl_ms(60000);
    v1::ConvertResponse response;
    ASSERT_TRUE(local.Convert(with_ttl, {}, &response).ok());
    kept = response.handle().id();
    EXPECT_EQ(client_->Stats()->tensors(), 4u);
    EXPECT_EQ(client_->Stats()->connection_leases(), 3u);
  }
  EXPECT_GE(WaitFor([&] { return client_->Stats()->tensors() == 1; }), 0);
  EXPECT_EQ(client_->Stats()->connection_leases(), 0u);
  EXPECT_EQ(client_->Stats()->local_connections(), 0u);
  EXPECT_TRUE(client_->Release(kept).ok());
}

TEST_F(LocalTransportTest, AKilledClientsHandlesAreReclaimed) {
  constexpr int kHandles = 1000;
  int ready[2];
  ASSERT_EQ(pipe(ready), 0);
  const pid_t child = fork();
  ASSERT_GE(child, 0);
  if (child == 0) {
    // Raw sockets and protobuf only: no gRPC in the child.
    close(ready[0]);
    LocalConnection local(server_->address());
    UniqueFd memfd = SealedMemfd(4096);
    for (int i = 0; i < kHandles; ++i) {
      v1::ConvertRequest request =
          i % 2 == 0 ? InlineFloats({1, 2}, {2}, {1}) : FdFloats({4}, 0, 16);
      if (!local.Convert(request, i % 2 == 0 ? std::vector<int>{} : std::vector<int>{memfd.get()})
               .ok()) {
        _exit(1);
      }
    }
    const char byte = 1;
    if (write(ready[1], &byte, 1) != 1) _exit(1);
    pause();
    _exit(0);
  }
  close(ready[1]);
  char byte = 0;
  ASSERT_EQ(read(ready[0], &byte, 1), 1) << "the child did not make its handles";
  close(ready[0]);
  EXPECT_EQ(client_->Stats()->tensors(), static_cast<uint64_t>(kHandles));
  EXPECT_EQ(client_->Stats()->client_regions(), static_cast<uint64_t>(kHandles / 2));
  ASSERT_EQ(kill(child, SIGKILL), 0);
  int status = 0;
  ASSERT_EQ(waitpid(child, &status, 0), child);
  const double ms = WaitFor([&] {
    const v1::StatsResponse s = *client_->Stats();
    return s.tensors() == 0 && s.client_regions() == 0 && s.segments() == 0;
  });
  ASSERT_GE(ms, 0) << "the killed client's handles were never reclaimed";
  std::printf("reclaimed %d handles %.1f ms after SIGKILL\n", kHandles, ms);
}

TEST_F(LocalTransportTest, TheCppClientUsesItByDefaultAndItsHandlesEndWithIt) {
  std::unique_ptr<Client> local = server_->NewClient();
  ASSERT_TRUE(local->has_local_transport());
  absl::StatusOr<SharedRegion> region = SharedRegion::CreateMemfd(16);
  ASSERT_TRUE(region.ok()) << region.status();
  EXPECT_TRUE(region->is_memfd());
  std::memcpy(region->data(), Floats({1, 2, 3, 4}).data(), 16);
  ConvertOptions no_copy;
  no_copy.copy = false;
  absl::StatusOr<MappedTensor> alias =
      local->ConvertRegion(*region, 0, 16, DType::kFloat32, Layout{{4}, {1}, 0}, no_copy);
  ASSERT_TRUE(alias.ok()) << alias.status();
  EXPECT_TRUE(alias->handle().shares_memory);
  static_cast<float*>(alias->mutable_data())[0] = 5;  // the same bytes
  EXPECT_EQ(static_cast<const float*>(region->data())[0], 5);
  ConvertOptions to_double;
  to_double.dtype = DType::kFloat64;
  absl::StatusOr<MappedTensor> cast =
      local->ConvertRegion(*region, 0, 16, DType::kFloat32, Layout{{4}, {1}, 0}, to_double);
  ASSERT_TRUE(cast.ok()) << cast.status();
  EXPECT_TRUE(cast->handle().has_fd);
  EXPECT_EQ(static_cast<const double*>(cast->data())[0], 5.0);
  // Big requests fall back to gRPC by themselves.
  std::vector<float> big(100000, 1.5f);
  absl::StatusOr<MappedTensor> inline_big = local->ConvertInline(
      big.data(), big.size() * 4, DType::kFloat32, Layout{{100000}, {1}, 0}, {});
  ASSERT_TRUE(inline_big.ok()) << inline_big.status();
  EXPECT_EQ(static_cast<const float*>(inline_big->data())[99999], 1.5f);
  EXPECT_EQ(local->Stats()->tensors(), 3u);
  EXPECT_TRUE(local->Renew(alias->id(), absl::Seconds(5)).ok());
  EXPECT_TRUE(cast->Release().ok());
  EXPECT_EQ(client_->Stats()->tensors(), 2u);
  // A memfd cannot go over gRPC.
  EXPECT_EQ(client_->ConvertRegion(*region, 0, 16, DType::kFloat32, Layout{{4}, {1}, 0}, {})
                .status()
                .code(),
            absl::StatusCode::kFailedPrecondition);
  alias->DetachLease();  // renewed: a TTL lease, which outlives the client
  const std::string kept = alias->id();
  inline_big->DetachLease();  // a gRPC handle's TTL lease: it outlives the client too
  const std::string big_id = inline_big->id();
  alias = absl::CancelledError("");
  inline_big = absl::CancelledError("");
  cast = absl::CancelledError("");
  local.reset();
  EXPECT_GE(WaitFor([&] { return client_->Stats()->local_connections() == 0; }), 0);
  EXPECT_EQ(client_->Stats()->tensors(), 2u);
  EXPECT_TRUE(client_->Release(kept).ok());
  EXPECT_TRUE(client_->Release(big_id).ok());
}

// How many mappings of this process show the file behind `fd`.
int MappingsOf(int fd) {
  struct stat st;
  EXPECT_EQ(fstat(fd, &st), 0);
  std::ifstream maps("/proc/self/maps");
  int count = 0;
  for (std::string line; std::getline(maps, line);) {
    // address perms offset dev inode path
    std::istringstream fields(line);
    std::string address, perms, offset, dev;
    uint64_t inode = 0;
    fields >> address >> perms >> offset >> dev >> inode;
    if (inode == static_cast<uint64_t>(st.st_ino)) ++count;
  }
  return count;
}

TEST_F(LocalTransportTest, TheCppClientMapsAFileOnceAndClosesWhatItReceives) {
  // A producer's memfd, held by id under a TTL lease.
  std::unique_ptr<Client> producer = server_->NewClient();
  producer->set_lease_ttl(absl::Seconds(30));
  absl::StatusOr<SharedRegion> region = SharedRegion::CreateMemfd(4096);
  ASSERT_TRUE(region.ok()) << region.status();
  std::memcpy(region->data(), Floats({1, 2, 3, 4}).data(), 16);
  ConvertOptions no_copy;
  no_copy.copy = false;
  absl::StatusOr<MappedTensor> held =
      producer->ConvertRegion(*region, 0, 16, DType::kFloat32, Layout{{4}, {1}, 0}, no_copy);
  ASSERT_TRUE(held.ok()) << held.status();
  ASSERT_EQ(MappingsOf(region->fd()), 2);  // the region's own, and the alias's

  std::unique_ptr<Client> consumer = server_->NewClient();
  ASSERT_TRUE(consumer->Stats().ok());
  const int fds = CountMemfds();
  const uint64_t mapped = consumer->mappings().mapped();
  std::vector<MappedTensor> takes;
  for (int i = 0; i < 50; ++i) {
    absl::StatusOr<MappedTensor> take = consumer->ConvertTensor(held->id(), no_copy);
    ASSERT_TRUE(take.ok()) << take.status();
    ASSERT_TRUE(take->handle().has_fd);
    takes.push_back(*std::move(take));
  }
  // One mapping serves all 50; no received descriptor stays open.
  EXPECT_EQ(consumer->mappings().mapped(), mapped + 1);
  EXPECT_EQ(MappingsOf(region->fd()), 3);
  EXPECT_GE(WaitFor([&] { return CountMemfds() == fds; }), 0) << CountMemfds() << " memfds";
  for (const MappedTensor& t : takes) {
    EXPECT_EQ(t.data(), takes[0].data());
    EXPECT_EQ(static_cast<const float*>(t.data())[2], 3.0f);
  }
  static_cast<float*>(region->data())[2] = -3;  // the producer's very bytes
  EXPECT_EQ(static_cast<const float*>(takes[49].data())[2], -3.0f);
  // Once they are gone the mapping stays idle, and the next take uses it.
  const void* address = takes[0].data();
  takes.clear();
  EXPECT_EQ(consumer->mappings().idle(), 1u);
  absl::StatusOr<MappedTensor> again = consumer->ConvertTensor(held->id(), no_copy);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->data(), address);
  EXPECT_EQ(consumer->mappings().mapped(), mapped + 1);

  // A big file is mapped per handle, from the pages each needs.
  absl::StatusOr<SharedRegion> big = SharedRegion::CreateMemfd(size_t{4} << 20);
  ASSERT_TRUE(big.ok()) << big.status();
  absl::StatusOr<MappedTensor> big_held =
      producer->ConvertRegion(*big, 8192, 4096, DType::kUInt8, Layout{{4096}, {1}, 0}, no_copy);
  ASSERT_TRUE(big_held.ok()) << big_held.status();
  absl::StatusOr<MappedTensor> big_a = consumer->ConvertTensor(big_held->id(), no_copy);
  absl::StatusOr<MappedTensor> big_b = consumer->ConvertTensor(big_held->id(), no_copy);
  ASSERT_TRUE(big_a.ok() && big_b.ok());
  EXPECT_NE(big_a->data(), big_b->data());
  EXPECT_EQ(consumer->mappings().mapped(), mapped + 3);

  // The consumer's mappings outlive it until its last tensor goes.
  consumer.reset();
  EXPECT_EQ(static_cast<const float*>(again->data())[2], -3.0f);
  again = absl::CancelledError("");
  big_a = absl::CancelledError("");
  big_b = absl::CancelledError("");
  EXPECT_EQ(MappingsOf(region->fd()), 2);
  // The big region and the server's descriptor of it, which its handle uses.
  EXPECT_GE(WaitFor([&] { return CountMemfds() == fds + 2; }), 0) << CountMemfds() << " memfds";
}

TEST_F(LocalTransportTest, TheServerKeepsABigMemfdOpenOnlyWhileAHandleUsesIt) {
  std::unique_ptr<Client> local = server_->NewClient();
  ASSERT_TRUE(local->Stats().ok());
  absl::StatusOr<SharedRegion> small = SharedRegion::CreateMemfd(4096);
  absl::StatusOr<SharedRegion> big = SharedRegion::CreateMemfd(size_t{4} << 20);
  ASSERT_TRUE(small.ok() && big.ok());
  const int base = CountMemfds();  // this process is the server too
  ConvertOptions no_copy;
  no_copy.copy = false;
  const auto alias = [&](const SharedRegion& region) {
    return local->ConvertRegion(region, 0, 4096, DType::kUInt8, Layout{{4096}, {1}, 0}, no_copy);
  };
  {
    absl::StatusOr<MappedTensor> t = alias(*small);
    ASSERT_TRUE(t.ok()) << t.status();
  }
  // The server keeps its own descriptor of a small region for the next request.
  EXPECT_GE(WaitFor([&] { return local->Stats()->tensors() == 0; }), 0);
  EXPECT_GE(WaitFor([&] { return CountMemfds() == base + 1; }), 0) << CountMemfds() << " memfds";
  for (int round = 0; round < 2; ++round) {
    absl::StatusOr<MappedTensor> t = alias(*big);
    ASSERT_TRUE(t.ok()) << t.status();
    absl::StatusOr<MappedTensor> again = alias(*big);  // the same open file, while in use
    ASSERT_TRUE(again.ok()) << again.status();
    EXPECT_GE(WaitFor([&] { return CountMemfds() == base + 2; }), 0)
        << "round " << round << ": " << CountMemfds() << " memfds";
    t = absl::CancelledError("");
    again = absl::CancelledError("");
    // A big one is closed with its last handle: the client's memory is its own again.
    EXPECT_GE(WaitFor([&] { return CountMemfds() == base + 1; }), 0) << "round " << round;
  }
}

// --- Bad input on the fd path ---------------------------------------------------

// A descriptor of some kind for the table below; owns what it opened.
struct Attached {
  std::vector<UniqueFd> fds;
  std::vector<int> raw() const {
    std::vector<int> out;
    for (const UniqueFd& fd : fds) out.push_back(fd.get());
    return out;
  }
};

Attached Pipe() {
  int p[2];
  EXPECT_EQ(pipe2(p, O_CLOEXEC), 0);
  Attached a;
  a.fds.emplace_back(p[0]);
  a.fds.emplace_back(p[1]);
  a.fds.pop_back();  // the read end alone
  return a;
}

Attached One(int fd) {
  Attached a;
  a.fds.emplace_back(fd);
  return a;
}

// `flags` reopening of a sealed memfd through /proc (O_PATH, O_RDONLY).
Attached Reopened(int flags) {
  UniqueFd memfd = SealedMemfd(16);
  return One(open(absl::StrCat("/proc/self/fd/", memfd.get()).c_str(), flags | O_CLOEXEC));
}

TEST_F(LocalTransportTest, BadDescriptorsGetTheirCodeAndNothingIsKept) {
  TempDir dir;
  const std::string file = dir.path() + "/on-disk";
  {
    UniqueFd f(open(file.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600));
    ASSERT_EQ(ftruncate(f.get(), 16), 0);
  }
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, pair), 0);
  close(pair[1]);
  struct Row {
    std::string name;
    Attached attached;
    v1::ConvertRequest request;
    absl::StatusCode code;
    std::string says;
  };
  std::vector<Row> rows;
  rows.push_back({"unsealed", One(SealedMemfd(16, "", 0).Release()), FdFloats({4}, 0, 16),
                  absl::StatusCode::kFailedPrecondition, "not sealed with F_SEAL_SHRINK"});
  rows.push_back({"no grow seal", One(SealedMemfd(16, "", F_SEAL_SHRINK).Release()),
                  FdFloats({4}, 0, 16), absl::StatusCode::kFailedPrecondition,
                  "not sealed with F_SEAL_GROW"});
  rows.push_back(
      {"write seal", One(SealedMemfd(16, "", F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE).Release()),
       FdFloats({4}, 0, 16), absl::StatusCode::kFailedPrecondition, "sealed against writing"});
  rows.push_back({"smaller than offset + size", One(SealedMemfd(16).Release()),
                  FdFloats({4}, 8, 16), absl::StatusCode::kInvalidArgument, "lies outside"});
  rows.push_back({"offset past the end", One(SealedMemfd(16).Release()), FdFloats({0}, 1u << 30, 0),
                  absl::StatusCode::kInvalidArgument, "lies outside"});
  rows.push_back({"a pipe", Pipe(), FdFloats({4}, 0, 16), absl::StatusCode::kInvalidArgument,
                  "is a FIFO, not a memfd"});
  rows.push_back({"a directory", One(open(dir.path().c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC)),
                  FdFloats({4}, 0, 16), absl::StatusCode::kInvalidArgument,
                  "is a directory, not a memfd"});
  rows.push_back({"a socket", One(pair[0]), FdFloats({4}, 0, 16),
                  absl::StatusCode::kInvalidArgument, "is a socket, not a memfd"});
  rows.push_back({"an eventfd", One(eventfd(0, EFD_CLOEXEC)), FdFloats({4}, 0, 16),
                  absl::StatusCode::kInvalidArgument, "not a memfd"});
  rows.push_back({"an O_PATH descriptor", Reopened(O_PATH), FdFloats({4}, 0, 16),
                  absl::StatusCode::kInvalidArgument, "O_PATH"});
  rows.push_back({"a read-only descriptor", Reopened(O_RDONLY), FdFloats({4}, 0, 16),
                  absl::StatusCode::kPermissionDenied, "open read-only"});
  rows.push_back({"a file on disk", One(open(file.c_str(), O_RDWR | O_CLOEXEC)),
                  FdFloats({4}, 0, 16), absl::StatusCode::kInvalidArgument, "cannot be sealed"});
  {
    Attached two;
    two.fds.push_back(SealedMemfd(16));
    two.fds.push_back(SealedMemfd(16));
    rows.push_back({"more descriptors than named", std::move(two), FdFloats({4}, 0, 16),
                    absl::StatusCode::kInvalidArgument, "2 descriptors came with the Convert"});
  }
  rows.push_back({"naming one not sent", One(SealedMemfd(16).Release()), FdFloats({4}, 0, 16, 1),
                  absl::StatusCode::kInvalidArgument, "names descriptor 1 but the request has 1"});
  rows.push_back({"naming one with none sent", Attached{}, FdFloats({4}, 0, 16),
                  absl::StatusCode::kInvalidArgument, "names descriptor 0 but the request has 0"});
  rows.push_back({"descriptors on an inline source", One(SealedMemfd(16).Release()),
                  InlineFloats({1}, {1}, {1}), absl::StatusCode::kInvalidArgument,
                  "takes no descriptors, but 1 came"});
  {
    Attached many;
    for (int i = 0; i < kMaxLocalFds + 1; ++i) many.fds.push_back(SealedMemfd(16));
    rows.push_back({"17 descriptors", std::move(many), FdFloats({4}, 0, 16),
                    absl::StatusCode::kInvalidArgument, "cut short (MSG_CTRUNC)"});
  }
  {
    Attached many;  // SCM_MAX_FD is 253
    for (int i = 0; i < 250; ++i) many.fds.emplace_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
    rows.push_back({"250 descriptors", std::move(many), FdFloats({4}, 0, 16),
                    absl::StatusCode::kInvalidArgument, "cut short (MSG_CTRUNC)"});
  }
  const int fds_with_rows = CountFds(getpid());
  for (Row& row : rows) {
    LocalConnection local(server_->address());
    ASSERT_TRUE(local.connected());
    const std::vector<int> raw = row.attached.raw();
    // Straight through sendmsg: SendLocal refuses more than kMaxLocalFds.
    iovec iov{nullptr, 0};
    const std::string bytes = [&] {
      v1::LocalRequest r;
      *r.mutable_convert() = row.request;
      return r.SerializeAsString();
    }();
    iov.iov_base = const_cast<char*>(bytes.data());
    iov.iov_len = bytes.size();
    msghdr msg{};
    msg.msg_iov = &iov;
    msg.msg_iovlen = 1;
    std::vector<char> control(CMSG_SPACE(sizeof(int) * std::max<size_t>(raw.size(), 1)));
    if (!raw.empty()) {
      msg.msg_control = control.data();
      msg.msg_controllen = CMSG_SPACE(sizeof(int) * raw.size());
      cmsghdr* c = CMSG_FIRSTHDR(&msg);
      c->cmsg_level = SOL_SOCKET;
      c->cmsg_type = SCM_RIGHTS;
      c->cmsg_len = CMSG_LEN(sizeof(int) * raw.size());
      std::memcpy(CMSG_DATA(c), raw.data(), sizeof(int) * raw.size());
    }
    ASSERT_GE(sendmsg(local.socket(), &msg, MSG_NOSIGNAL), 0)
        << row.name << ": " << std::strerror(errno);
    absl::StatusOr<LocalDatagram> answer = ReceiveLocal(local.socket(), kMaxLocalMessageBytes);
    ASSERT_TRUE(answer.ok()) << row.name << ": " << answer.status();
    EXPECT_TRUE(answer->fds.empty()) << row.name;
    v1::LocalResponse response;
    ASSERT_TRUE(response.ParseFromString(answer->bytes)) << row.name;
    EXPECT_EQ(static_cast<absl::StatusCode>(response.code()), row.code)
        << row.name << ": " << response.message();
    EXPECT_THAT(response.message(), HasSubstr(row.says)) << row.name;
    EXPECT_LE(response.message().size(), 600u) << row.name;
    // The server keeps serving on the same connection.
    EXPECT_TRUE(local.Convert(InlineFloats({1}, {1}, {1})).ok()) << row.name;
  }
  rows.clear();
  EXPECT_GE(WaitFor([&] {
              const v1::StatsResponse s = *client_->Stats();
              return s.tensors() == 0 && s.local_connections() == 0;
            }),
            0);
  EXPECT_EQ(client_->Stats()->client_regions(), 0u);
  EXPECT_LT(CountFds(getpid()), fds_with_rows);
  ExpectNoFdsLeaked("after the bad descriptors");
}

TEST_F(LocalTransportTest, BadDatagramsGetTheirCodeAndTheConnectionGoesOn) {
  auto local_connection = std::make_unique<LocalConnection>(server_->address());
  LocalConnection& local = *local_connection;
  ASSERT_TRUE(local.connected());
  v1::LocalRequest with_data;
  *with_data.mutable_convert() = InlineFloats({1}, {1}, {1});
  with_data.mutable_convert()->set_return_data(true);
  v1::LocalRequest release_with_fd;
  release_with_fd.mutable_release()->set_id("x");
  v1::LocalRequest no_method;
  struct Row {
    std::string datagram;
    bool with_fd;
    std::string says;
  };
  const std::vector<Row> rows = {
      {"\xff\xff\xff", false, "does not parse as an asarray.v1.LocalRequest"},
      {no_method.SerializeAsString() + std::string("\x08\x01", 2), false, "names no method"},
      {std::string(kMaxLocalMessageBytes + 100, '\x0a'), false, "send it over gRPC"},
      {with_data.SerializeAsString(), false, "send them over gRPC"},
      {release_with_fd.SerializeAsString(), true, "a Release request takes no descriptors"},
  };
  for (const Row& row : rows) {
    UniqueFd memfd = SealedMemfd(16);
    std::vector<int> fds;
    if (row.with_fd) fds.push_back(memfd.get());
    const absl::Status status = local.CallRaw(row.datagram, fds);
    EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << row.says << ": " << status;
    EXPECT_THAT(std::string(status.message()), HasSubstr(row.says));
  }
  EXPECT_TRUE(local.Convert(InlineFloats({1}, {1}, {1})).ok());
  // An empty datagram reads as the end of the connection, which ends its
  // handles.
  EXPECT_FALSE(local.CallRaw("").ok());
  EXPECT_GE(WaitFor([&] { return client_->Stats()->tensors() == 0; }), 0);
  local_connection.reset();
  {
    LocalConnection again(server_->address());
    v1::ConvertResponse response;
    ASSERT_TRUE(again.Convert(InlineFloats({1}, {1}, {1}), {}, &response).ok());
    EXPECT_TRUE(client_->Release(response.handle().id()).ok());
  }
  EXPECT_GE(WaitFor([&] { return client_->Stats()->local_connections() == 0; }), 0);
  ExpectNoFdsLeaked("after the bad datagrams");
}

TEST_F(LocalTransportTest, AnFdSourceOverGrpcIsRefused) {
  grpc::ClientContext context;
  v1::ConvertResponse response;
  const grpc::Status status =
      v1::AsArray::NewStub(
          grpc::CreateChannel(server_->address(), grpc::InsecureChannelCredentials()))
          ->Convert(&context, FdFloats({4}, 0, 16), &response);
  EXPECT_EQ(status.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(status.error_message(), HasSubstr("only over the local transport"));
}

TEST_F(LocalTransportTest, ServesConnectionsAtOnceAndStopsWithThemOpen) {
  constexpr int kThreads = 8;
  constexpr int kCalls = 50;
  std::vector<std::thread> threads;
  std::atomic<int> done{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      LocalConnection local(server_->address());
      if (!local.connected()) return;
      UniqueFd memfd = SealedMemfd(8, Floats({1, 2}));
      for (int i = 0; i < kCalls; ++i) {
        v1::ConvertResponse response;
        std::vector<UniqueFd> received;
        const bool by_fd = i % 2 == 0;
        if (!local
                 .Convert(by_fd ? FdFloats({2}, 0, 8) : InlineFloats({1, 2}, {2}, {1}),
                          by_fd ? std::vector<int>{memfd.get()} : std::vector<int>{}, &response,
                          &received)
                 .ok()) {
          return;
        }
        v1::ReleaseRequest release;
        release.set_id(response.handle().id());
        if (!local.Release(release).ok()) return;
      }
      ++done;
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(done.load(), kThreads);
  EXPECT_EQ(client_->Stats()->tensors(), 0u);
  LocalConnection idle(server_->address());  // open when the server stops
  ASSERT_TRUE(idle.connected());
  ASSERT_TRUE(idle.Convert(InlineFloats({1}, {1}, {1})).ok());  // ends with it
  EXPECT_GE(WaitFor([&] { return client_->Stats()->tensors() == 1; }), 0);
  server_->Stop();
  server_ = TestServer::Start();
  client_ = server_->NewGrpcClient();
}

TEST(LatencyHistogramTest, EveryValueLiesInItsBucketAndQuantilesAreWithinAnEighth) {
  using server::LatencyHistogram;
  for (uint64_t v : {0ull, 1ull, 7ull, 8ull, 9ull, 15ull, 16ull, 17ull, 1000ull, 20000ull,
                     123456789ull, (1ull << 41) + 5}) {
    const int b = LatencyHistogram::Bucket(v);
    EXPECT_LE(v, LatencyHistogram::UpperBound(b)) << v;
    if (b > 0) {
      EXPECT_GT(v, LatencyHistogram::UpperBound(b - 1)) << v;
    }
  }
  LatencyHistogram h;
  EXPECT_EQ(h.Quantile(0.5), 0u);
  for (uint64_t v = 1; v <= 1000; ++v) h.Record(v * 1000);
  EXPECT_EQ(h.count(), 1000u);
  EXPECT_GE(h.Quantile(0.5), 500000u);
  EXPECT_LE(h.Quantile(0.5), 500000u * 9 / 8);
  EXPECT_GE(h.Quantile(0.99), 990000u);
  EXPECT_LE(h.Quantile(0.99), 990000u * 9 / 8);
}

TEST_F(LocalTransportTest, StatsReportTheServersOwnTimeForLocalConverts) {
  LocalConnection local(server_->address());
  for (int i = 0; i < 20; ++i) {
    v1::ConvertResponse response;
    std::vector<UniqueFd> received;
    ASSERT_TRUE(local.Convert(InlineFloats({1, 2}, {2}, {1}), {}, &response, &received).ok());
    v1::ReleaseRequest release;
    release.set_id(response.handle().id());
    ASSERT_TRUE(local.Release(release).ok());
  }
  const v1::StatsResponse s = *client_->Stats();
  EXPECT_EQ(s.local_converts(), 20u) << "releases are not converts";
  EXPECT_GT(s.local_convert_p50_ns(), 0u);
  EXPECT_GE(s.local_convert_p99_ns(), s.local_convert_p50_ns());
  // The work alone ends before the send, so it is never the longer.
  EXPECT_GT(s.local_convert_work_p50_ns(), 0u);
  EXPECT_LE(s.local_convert_work_p50_ns(), s.local_convert_p50_ns());
  EXPECT_GE(s.local_convert_work_p99_ns(), s.local_convert_work_p50_ns());
}

}  // namespace
}  // namespace asarray::testing
