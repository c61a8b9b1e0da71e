// The service end to end through a real in-process server: bad input gets a
// precise code and leaks nothing; handles alias, copy, expire, renew and
// release as documented.
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <numeric>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asarray/v1/asarray.grpc.pb.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "gtest/gtest.h"
#include "tests/server/test_server.h"
#include "wire/proto_convert.h"

namespace asarray::testing {
namespace {

using ::testing::HasSubstr;

class ServiceTest : public ::testing::Test {
 protected:
  void StartServer(const std::function<void(server::ServerOptions&)>& adjust = {}) {
    server_ = TestServer::Start(adjust);
    ASSERT_NE(server_, nullptr);
    client_ = server_->NewGrpcClient();
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(-1);
    args.SetMaxReceiveMessageSize(-1);
    stub_ = v1::AsArray::NewStub(
        grpc::CreateCustomChannel(server_->address(), grpc::InsecureChannelCredentials(), args));
  }
  void SetUp() override { StartServer(); }

  // After every test: the server still answers, and nothing is left over.
  void TearDown() override {
    if (server_ == nullptr) return;
    EXPECT_TRUE(client_->Health().ok());
    client_.reset();
    stub_.reset();
    server_->Stop();
  }

  absl::Status RawConvert(const v1::ConvertRequest& request,
                          v1::ConvertResponse* response = nullptr) {
    grpc::ClientContext context;
    v1::ConvertResponse unused;
    return FromGrpcStatus(stub_->Convert(&context, request, response ? response : &unused));
  }

  static v1::ConvertRequest InlineFloats(const std::vector<float>& values, Dims shape, Dims strides,
                                         int64_t offset = 0) {
    v1::ConvertRequest request;
    v1::InlineArray* a = request.mutable_source()->mutable_inline_array();
    a->set_dtype(v1::DTYPE_FLOAT32);
    LayoutToProto(Layout{std::move(shape), std::move(strides), offset}, a->mutable_layout());
    a->set_storage(values.data(), values.size() * sizeof(float));
    return request;
  }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<Client> client_;
  std::unique_ptr<v1::AsArray::Stub> stub_;
};

// --- Bad input (the full table is bad_input_test.cc) -----------------------------

TEST_F(ServiceTest, CopyFalseWithInlineDataIsFailedPrecondition) {
  v1::ConvertRequest request = InlineFloats({1, 2}, {2}, {1});
  request.mutable_options()->set_copy(false);
  absl::Status s = RawConvert(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("inline"));
  // copy unset is not copy=False: the same request converts.
  request.mutable_options()->clear_copy();
  EXPECT_TRUE(RawConvert(request).ok());
}

TEST(ServiceLimits, RequestOverTheMessageLimitIsResourceExhausted) {
  std::unique_ptr<TestServer> server =
      TestServer::Start([](server::ServerOptions& o) { o.max_message_bytes = 3 << 19; });
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = server->NewGrpcClient();
  client->set_upload_threshold(SIZE_MAX);  // force a single unary message
  std::vector<float> big(512 * 1024);      // 2 MiB
  absl::Status s = client
                       ->ConvertInline(big.data(), big.size() * 4, DType::kFloat32,
                                       Layout{{static_cast<int64_t>(big.size())}, {1}, 0}, {})
                       .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  // The same bytes stream through ConvertUpload.
  client->set_upload_threshold(64 << 10);
  absl::StatusOr<MappedTensor> t =
      client->ConvertInline(big.data(), big.size() * 4, DType::kFloat32,
                            Layout{{static_cast<int64_t>(big.size())}, {1}, 0}, {});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(client->Health().ok());
}

TEST(ServiceQuota, QuotaExceededIsResourceExhaustedUntilReleased) {
  std::unique_ptr<TestServer> server =
      TestServer::Start([](server::ServerOptions& o) { o.store.max_bytes = 1000; });
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = server->NewGrpcClient();
  std::vector<uint8_t> bytes(600);
  const Layout layout{{600}, {1}, 0};
  absl::StatusOr<MappedTensor> first =
      client->ConvertInline(bytes.data(), bytes.size(), DType::kUInt8, layout, {});
  ASSERT_TRUE(first.ok());
  absl::Status s =
      client->ConvertInline(bytes.data(), bytes.size(), DType::kUInt8, layout, {}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("quota"));
  ASSERT_TRUE(first->Release().ok());
  EXPECT_TRUE(client->ConvertInline(bytes.data(), bytes.size(), DType::kUInt8, layout, {}).ok());
}

TEST_F(ServiceTest, CudaRequestsFailClearlyWithoutADevice) {
  if (server_->server().cuda().device_count() > 0) {
    GTEST_SKIP() << "a CUDA device is present (" << server_->server().cuda().Describe()
                 << "): tests/gpu covers the device paths";
  }
  for (const Device device : {Device{Device::Type::kCUDA, 0}, Device{Device::Type::kCUDA, 7}}) {
    ConvertOptions options;
    options.device = device;
    absl::Status s = client_->ConvertLiteral(Literal::List({Literal::Float(1)}), options).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_THAT(s.message(), HasSubstr("no CUDA device is available for " + DeviceName(device)));
    // And why: no driver here, or a build without the backend.
    EXPECT_THAT(s.message(), ::testing::AnyOf(HasSubstr("driver"), HasSubstr("without the CUDA")));
  }
  // A client's CUDA allocation as the source fails the same way.
  v1::ConvertRequest request;
  v1::CudaIpcArray* array = request.mutable_source()->mutable_cuda_ipc();
  array->set_ipc_handle(std::string(64, '\0'));
  array->set_device(0);
  array->set_size(4);
  array->set_dtype(v1::DTYPE_FLOAT32);
  array->mutable_layout()->add_shape(1);
  array->mutable_layout()->add_strides(1);
  absl::Status s = RawConvert(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("no CUDA device is available for cuda:0"));
  // A handle past the range it declares is refused before any device is asked.
  array->set_size(2);
  EXPECT_EQ(RawConvert(request).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(RawConvert(v1::ConvertRequest()).code(), absl::StatusCode::kInvalidArgument);
  // The CPU path keeps serving.
  absl::StatusOr<MappedTensor> cpu =
      client_->ConvertLiteral(Literal::List({Literal::Float(1)}), ConvertOptions{});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  absl::StatusOr<v1::StatsResponse> stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->cuda_devices(), 0u);
  EXPECT_EQ(stats->cuda_allocations(), 0u);
}

// A client's segment is mapped once and reused; a segment created again
// under the same name is mapped afresh; an unlinked one is let go.
TEST_F(ServiceTest, ClientSegmentsAreReusedUntilUnlinkedOrReplaced) {
  const std::string name = "/asarray-test-cache-" + std::to_string(getpid());
  auto make = [&](float value) {
    shm_unlink(name.c_str());
    const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    EXPECT_GE(fd, 0);
    EXPECT_EQ(ftruncate(fd, 64), 0);
    void* p = mmap(nullptr, 64, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    std::fill_n(static_cast<float*>(p), 16, value);
    munmap(p, 64);
    close(fd);
  };
  ConvertOptions copy;
  copy.copy = true;
  auto first_value = [&] {
    absl::StatusOr<MappedTensor> t =
        client_->ConvertRegion(name, 0, 64, DType::kFloat32, {{16}, {1}, 0}, copy);
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? static_cast<const float*>(t->data())[0] : -1.f;
  };
  make(1.f);
  EXPECT_EQ(first_value(), 1.f);
  EXPECT_EQ(first_value(), 1.f);
  EXPECT_EQ(server_->server().store().Stats().client_segments_cached, 1u);
  make(2.f);  // the same name, another file: its bytes, not the cached ones
  EXPECT_EQ(first_value(), 2.f);
  EXPECT_EQ(server_->server().store().Stats().client_segments_cached, 1u);
  shm_unlink(name.c_str());
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (server_->server().store().Stats().client_segments_cached != 0 &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(server_->server().store().Stats().client_segments_cached, 0u);
}

// A client that recycles a region of its own first takes an exclusive flock
// on it; the server holds a shared one while any handle aliases it or a copy
// reads it, and refuses the segment while its owner holds it.
TEST_F(ServiceTest, AServerUseOfAClientSegmentHoldsASharedLock) {
  const std::string name = "/asarray-test-lock-" + std::to_string(getpid());
  const int fd = shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(ftruncate(fd, 64), 0);
  const Layout layout{{16}, {1}, 0};
  ConvertOptions no_copy;
  no_copy.copy = false;
  ConvertOptions copy;
  copy.copy = true;
  {
    absl::StatusOr<MappedTensor> alias =
        client_->ConvertRegion(name, 0, 64, DType::kFloat32, layout, no_copy);
    ASSERT_TRUE(alias.ok()) << alias.status();
    EXPECT_TRUE(alias->handle().shares_memory);
    EXPECT_EQ(flock(fd, LOCK_EX | LOCK_NB), -1);  // a handle aliases it
    EXPECT_EQ(errno, EWOULDBLOCK);
  }  // released
  ASSERT_EQ(flock(fd, LOCK_EX | LOCK_NB), 0);
  absl::StatusOr<MappedTensor> refused =
      client_->ConvertRegion(name, 0, 64, DType::kFloat32, layout, copy);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(refused.status().message(), HasSubstr("being recycled by its owner"));
  ASSERT_EQ(flock(fd, LOCK_UN), 0);
  {
    absl::StatusOr<MappedTensor> copied =
        client_->ConvertRegion(name, 0, 64, DType::kFloat32, layout, copy);
    ASSERT_TRUE(copied.ok()) << copied.status();
    EXPECT_FALSE(copied->handle().shares_memory);
  }
  EXPECT_EQ(flock(fd, LOCK_EX | LOCK_NB), 0);  // the copy let go when it was done
  close(fd);
  shm_unlink(name.c_str());
}

TEST_F(ServiceTest, AConvertCarriesReleasesWhateverBecomesOfIt) {
  v1::ConvertResponse first, second;
  ASSERT_TRUE(RawConvert(InlineFloats({1, 2}, {2}, {1}), &first).ok());
  ASSERT_TRUE(RawConvert(InlineFloats({3}, {1}, {1}), &second).ok());
  ASSERT_EQ(client_->Stats()->tensors(), 2u);
  v1::ConvertRequest carrying = InlineFloats({4}, {1}, {1});
  carrying.add_release_ids(first.handle().id());
  carrying.add_release_ids("no-such-handle");  // skipped; it fails nothing
  v1::ConvertResponse third;
  ASSERT_TRUE(RawConvert(carrying, &third).ok());
  EXPECT_EQ(client_->Stats()->tensors(), 2u);
  EXPECT_EQ(client_->ReadBytes(first.handle().id()).status().code(), absl::StatusCode::kNotFound);
  v1::ConvertRequest failing = InlineFloats({1, 2}, {2}, {1});
  failing.mutable_options()->set_copy(false);  // inline data cannot be aliased
  failing.add_release_ids(second.handle().id());
  failing.add_release_ids(third.handle().id());
  EXPECT_EQ(RawConvert(failing).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client_->Stats()->tensors(), 0u);
}

TEST(HandleProtoTest, CudaLocationRoundTrips) {
  HandleInfo info;
  info.id = "abc";
  info.dtype = DType::kBFloat16;
  info.layout = Layout{{2, 3}, {3, 1}, 0};
  info.device = Device{Device::Type::kCUDA, 1};
  info.cuda_ipc_handle = std::string(64, '\x5a');
  info.cuda_offset = 128;
  info.cuda_size = 12;
  v1::TensorHandle proto;
  ASSERT_TRUE(HandleToProto(info, &proto).ok());
  EXPECT_TRUE(proto.has_cuda());
  EXPECT_FALSE(proto.has_shared_memory());
  EXPECT_EQ(proto.cuda().device(), 1);
  absl::StatusOr<HandleInfo> back = HandleFromProto(proto);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->cuda_ipc_handle, info.cuda_ipc_handle);
  EXPECT_EQ(back->cuda_offset, 128u);
  EXPECT_EQ(back->cuda_size, 12u);
  EXPECT_EQ(back->device, info.device);
  // CUDA memory on a device other than the handle's is a malformed handle.
  proto.mutable_cuda()->set_device(0);
  EXPECT_EQ(HandleFromProto(proto).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ServiceTest, ReturnDataPastTheMessageLimitIsResourceExhausted) {
  server_.reset();
  StartServer([](server::ServerOptions& o) { o.max_message_bytes = 64 << 10; });
  absl::StatusOr<SharedRegion> region = SharedRegion::Create(1 << 20);
  ASSERT_TRUE(region.ok());
  v1::ConvertRequest request;
  v1::SharedMemoryArray* a = request.mutable_source()->mutable_shared_memory();
  a->set_name(region->name());
  a->set_size(region->size());
  a->set_dtype(v1::DTYPE_UINT8);
  LayoutToProto(Layout{{1 << 20}, {1}, 0}, a->mutable_layout());
  request.set_return_data(true);
  absl::Status s = RawConvert(request);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(s.message(), HasSubstr("ConvertToData"));
  // ConvertToData streams the same result.
  absl::StatusOr<std::string> data = client_->ConvertToData(request);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(data->size(), 1u << 20);
  EXPECT_EQ(server_->server().store().Stats().tensors, 0u);
}

// --- Handles -----------------------------------------------------------------

TEST_F(ServiceTest, ShmSourceIsAliasedWithoutACopy) {
  absl::StatusOr<SharedRegion> region = SharedRegion::Create(4096);
  ASSERT_TRUE(region.ok());
  float* values = static_cast<float*>(region->data());
  std::iota(values, values + 12, 0.0f);
  // A transposed 3x4 view starting 64 bytes into the segment.
  absl::StatusOr<MappedTensor> t = client_->ConvertRegion(region->name(), 64, 48, DType::kFloat32,
                                                          Layout{{4, 3}, {1, 4}, 0}, {});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_TRUE(t->handle().shares_memory);
  EXPECT_EQ(t->handle().shm_name, region->name());
  EXPECT_EQ(t->handle().shm_offset, 64u);
  EXPECT_EQ(t->strides(), (Dims{1, 4}));
  EXPECT_EQ(server_->SegmentsInDevShm(), 0);  // no result segment was made
  // A write through the region shows through the handle's own mapping.
  values[16 + 5] = 42.0f;
  EXPECT_EQ(static_cast<const float*>(t->data())[5], 42.0f);
  EXPECT_EQ(server_->server().store().Stats().client_regions, 1u);
  ASSERT_TRUE(t->Release().ok());
  EXPECT_EQ(server_->server().store().Stats().client_regions, 0u);
}

TEST_F(ServiceTest, CopyTrueAndCastsMakeNewSegments) {
  absl::StatusOr<SharedRegion> region = SharedRegion::Create(16);
  ASSERT_TRUE(region.ok());
  std::iota(static_cast<float*>(region->data()), static_cast<float*>(region->data()) + 4, 1.0f);
  ConvertOptions copy;
  copy.copy = true;
  absl::StatusOr<MappedTensor> a =
      client_->ConvertRegion(region->name(), 0, 16, DType::kFloat32, Layout{{4}, {1}, 0}, copy);
  ASSERT_TRUE(a.ok());
  EXPECT_FALSE(a->handle().shares_memory);
  EXPECT_NE(a->handle().shm_name, region->name());
  ConvertOptions cast;
  cast.dtype = DType::kInt64;
  absl::StatusOr<MappedTensor> b =
      client_->ConvertRegion(region->name(), 0, 16, DType::kFloat32, Layout{{4}, {1}, 0}, cast);
  ASSERT_TRUE(b.ok());
  EXPECT_EQ(static_cast<const int64_t*>(b->data())[3], 4);
  EXPECT_EQ(server_->SegmentsInDevShm(), 2);
  a = absl::CancelledError("dropped");  // destroying the MappedTensor releases it
  EXPECT_EQ(server_->SegmentsInDevShm(), 1);
}

TEST_F(ServiceTest, HeldTensorIsASourceAliasedOrCast) {
  absl::StatusOr<MappedTensor> base =
      client_->ConvertLiteral(Literal::List({Literal::Float(1.5), Literal::Float(-2.5)}), {});
  ASSERT_TRUE(base.ok());
  absl::StatusOr<MappedTensor> alias = client_->ConvertTensor(base->id(), {});
  ASSERT_TRUE(alias.ok());
  EXPECT_TRUE(alias->handle().shares_memory);
  EXPECT_NE(alias->id(), base->id());
  EXPECT_EQ(alias->handle().shm_name, base->handle().shm_name);
  // Releasing the first handle keeps the memory: the alias still holds it.
  ASSERT_TRUE(base->Release().ok());
  EXPECT_EQ(server_->SegmentsInDevShm(), 1);
  ConvertOptions to_int;
  to_int.dtype = DType::kInt32;
  absl::StatusOr<MappedTensor> cast = client_->ConvertTensor(alias->id(), to_int);
  ASSERT_TRUE(cast.ok());
  EXPECT_FALSE(cast->handle().shares_memory);
  EXPECT_EQ(static_cast<const int32_t*>(cast->data())[1], -2);
  to_int.copy = false;
  EXPECT_EQ(client_->ConvertTensor(alias->id(), to_int).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(ServiceTest, LeasesExpireUnlessRenewed) {
  server_.reset();
  StartServer([](server::ServerOptions& o) { o.store.default_ttl = absl::Milliseconds(200); });
  absl::StatusOr<MappedTensor> doomed =
      client_->ConvertLiteral(Literal::List({Literal::Int(1)}), {});
  absl::StatusOr<MappedTensor> kept = client_->ConvertLiteral(Literal::List({Literal::Int(2)}), {});
  ASSERT_TRUE(doomed.ok() && kept.ok());
  absl::StatusOr<absl::Time> renewed = client_->Renew(kept->id(), absl::Seconds(60));
  ASSERT_TRUE(renewed.ok());
  EXPECT_GT(*renewed, absl::Now() + absl::Seconds(50));
  EXPECT_TRUE(Eventually([&] { return server_->server().store().Stats().expired == 1; }));
  EXPECT_EQ(client_->ReadBytes(doomed->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Renew(doomed->id()).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(client_->ReadBytes(kept->id()).ok());
  EXPECT_EQ(server_->SegmentsInDevShm(), 1);
  // The expired tensor's mapping stays valid in this process.
  EXPECT_EQ(static_cast<const int64_t*>(doomed->data())[0], 1);
}

TEST_F(ServiceTest, ReadStreamsRowMajorBytesOfAStridedTensor) {
  absl::StatusOr<SharedRegion> region = SharedRegion::Create(6 * 4);
  ASSERT_TRUE(region.ok());
  std::iota(static_cast<int32_t*>(region->data()), static_cast<int32_t*>(region->data()) + 6, 0);
  // The 2x3 storage read as its 3x2 transpose.
  absl::StatusOr<MappedTensor> t =
      client_->ConvertRegion(region->name(), 0, 24, DType::kInt32, Layout{{3, 2}, {1, 3}, 0}, {});
  ASSERT_TRUE(t.ok());
  HandleInfo handle;
  absl::StatusOr<std::string> bytes = client_->ReadBytes(t->id(), &handle);
  ASSERT_TRUE(bytes.ok());
  std::vector<int32_t> got(6);
  std::memcpy(got.data(), bytes->data(), 24);
  EXPECT_EQ(got, (std::vector<int32_t>{0, 3, 1, 4, 2, 5}));
  EXPECT_EQ(handle.id, t->id());
  EXPECT_EQ(bytes->size(), 24u);
}

TEST_F(ServiceTest, ReturnDataKeepsNoTensor) {
  v1::ConvertRequest request = InlineFloats({1, 2, 3, 4, 5, 6}, {2, 3}, {1, 2});
  request.set_return_data(true);
  request.mutable_options()->set_dtype(v1::DTYPE_FLOAT64);
  v1::ConvertResponse response;
  ASSERT_TRUE(RawConvert(request, &response).ok());
  std::vector<double> got(6);
  ASSERT_EQ(response.data().size(), 48u);
  std::memcpy(got.data(), response.data().data(), 48);
  EXPECT_EQ(got, (std::vector<double>{1, 3, 5, 2, 4, 6}));
  EXPECT_TRUE(response.handle().id().empty());
  EXPECT_FALSE(response.handle().has_shared_memory());
  EXPECT_EQ(server_->server().store().Stats().tensors, 0u);
  EXPECT_EQ(server_->SegmentsInDevShm(), 0);
}

TEST_F(ServiceTest, UploadedStorageBecomesTheResultWhenNoCastIsNeeded) {
  client_->set_upload_threshold(16);
  std::vector<int16_t> values(100);
  std::iota(values.begin(), values.end(), -50);
  // A strided view: every other element of the first 80.
  absl::StatusOr<MappedTensor> t = client_->ConvertInline(values.data(), values.size() * 2,
                                                          DType::kInt16, Layout{{40}, {2}, 0}, {});
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_FALSE(t->handle().shares_memory);
  EXPECT_EQ(t->strides(), Dims{2});  // the uploaded storage itself, no relayout
  EXPECT_EQ(static_cast<const int16_t*>(t->data())[2 * 39], 28);
  EXPECT_EQ(server_->SegmentsInDevShm(), 1);
  ConvertOptions cast;
  cast.dtype = DType::kFloat32;
  absl::StatusOr<MappedTensor> f = client_->ConvertInline(
      values.data(), values.size() * 2, DType::kInt16, Layout{{40}, {2}, 0}, cast);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->strides(), Dims{1});
  EXPECT_EQ(static_cast<const float*>(f->data())[39], 28.0f);
  EXPECT_EQ(server_->SegmentsInDevShm(), 2);  // the upload segment went with the cast
}

TEST_F(ServiceTest, ListAndStatsDescribeLiveTensors) {
  absl::StatusOr<MappedTensor> a = client_->ConvertLiteral(Literal::List({Literal::Int(1)}), {});
  absl::StatusOr<MappedTensor> b = client_->ConvertLiteral(Literal::Bool(true), {});
  ASSERT_TRUE(a.ok() && b.ok());
  absl::StatusOr<std::vector<HandleInfo>> list = client_->List();
  ASSERT_TRUE(list.ok());
  std::vector<std::string> ids;
  for (const HandleInfo& h : *list) ids.push_back(h.id);
  EXPECT_THAT(ids, ::testing::UnorderedElementsAre(a->id(), b->id()));
  absl::StatusOr<v1::StatsResponse> stats = client_->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->tensors(), 2u);
  EXPECT_EQ(stats->segments(), 2u);
  EXPECT_EQ(stats->bytes_in_use(), 9u);
  EXPECT_EQ(stats->converts(), 2u);
}

TEST_F(ServiceTest, ShutdownWithLiveTensorsUnlinksEverySegment) {
  std::vector<MappedTensor> live;
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<MappedTensor> t = client_->ConvertLiteral(Literal::List({Literal::Int(i)}), {});
    ASSERT_TRUE(t.ok());
    t->DetachLease();
    live.push_back(*std::move(t));
  }
  EXPECT_EQ(server_->SegmentsInDevShm(), 5);
  server_->Stop();  // fails the test if a segment is left
  EXPECT_EQ(static_cast<const int64_t*>(live[4].data())[0], 4);  // mappings outlive the names
  server_.reset();
}

TEST(ServiceStartup, OrphanedSegmentsOfDeadInstancesAreSwept) {
  const std::string prefix = absl::StrCat("asarrayd-orphan-", getpid());
  // A dead instance (no such pid) and a live one (this process, true start time).
  const std::string dead = absl::StrCat("/", prefix, "-999999999.1-abc");
  int fd = shm_open(dead.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
  ASSERT_GE(fd, 0);
  close(fd);
  std::unique_ptr<TestServer> server = TestServer::Start([&](server::ServerOptions& o) {
    o.store.prefix = prefix;
    o.sweep_orphans = true;
  });
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->server().orphans_swept(), 1);
  EXPECT_EQ(CountSegments(prefix), 0);
  std::unique_ptr<Client> client = server->NewGrpcClient();
  absl::StatusOr<MappedTensor> t = client->ConvertLiteral(Literal::Int(7), {});
  ASSERT_TRUE(t.ok());
  // A second server with the same prefix leaves the live instance's segment.
  EXPECT_EQ(server::TensorStore::SweepOrphans(prefix), 0);
  EXPECT_EQ(CountSegments(prefix), 1);
}

TEST_F(ServiceTest, SocketIsPrivate) {
  const std::string path = server_->address().substr(5);
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat(path.substr(0, path.rfind('/')).c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
}

TEST_F(ServiceTest, ConcurrentClientsConvertAndRelease) {
  std::vector<std::thread> threads;
  std::atomic<int> failures{0};
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&, t] {
      std::unique_ptr<Client> client = server_->NewGrpcClient();
      for (int i = 0; i < 25; ++i) {
        std::vector<int32_t> v(100, t * 1000 + i);
        ConvertOptions o;
        o.dtype = DType::kFloat64;
        absl::StatusOr<MappedTensor> m =
            client->ConvertInline(v.data(), 400, DType::kInt32, Layout{{100}, {1}, 0}, o);
        if (!m.ok() || static_cast<const double*>(m->data())[99] != t * 1000 + i) ++failures;
      }
    });
  }
  for (std::thread& th : threads) th.join();
  EXPECT_EQ(failures.load(), 0);
  EXPECT_EQ(server_->server().store().Stats().tensors, 0u);
  EXPECT_EQ(server_->SegmentsInDevShm(), 0);
}

}  // namespace
}  // namespace asarray::testing

namespace asarray::testing {
namespace {

TEST_F(ServiceTest, ReleaseTakesSeveralIdsAndReportsUnknownOnes) {
  std::vector<std::string> ids;
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<MappedTensor> t = client_->ConvertLiteral(Literal::Int(i), {});
    ASSERT_TRUE(t.ok());
    t->DetachLease();
    ids.push_back(t->id());
  }
  grpc::ClientContext context;
  v1::ReleaseRequest request;
  v1::ReleaseResponse response;
  request.set_id(ids[0]);
  request.add_more_ids(ids[1]);
  request.add_more_ids("no-such-id");
  request.add_more_ids(ids[2]);
  EXPECT_EQ(FromGrpcStatus(stub_->Release(&context, request, &response)).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(server_->server().store().Stats().tensors, 0u);  // the known ones all went
}

}  // namespace
}  // namespace asarray::testing
