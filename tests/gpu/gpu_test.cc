// The CUDA backend on a real device: cast kernels against the CPU loops bit
// for bit, allocations and their release, and CUDA IPC between processes
// (asarrayd exports, this test process opens; this process exports, asarrayd
// opens). Every test skips, saying why, on a host without a usable device.
#include <chrono>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/types/span.h"
#include "client/client.h"
#include "client/cuda_ipc.h"
#include "core/cast.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/cuda_backend.h"
#include "tests/gpu/child_server.h"

namespace asarray::testing {
namespace {

using server::CudaBackend;
using server::DeviceMemory;
using ::testing::HasSubstr;

const absl::Span<const DType> kAllDTypes = absl::MakeConstSpan(AllDTypes(), kNumDTypes);

// Random bytes: every bit pattern, so NaNs, infinities, subnormals, values
// out of every integer range and bool bytes other than 0 and 1 all occur.
std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string out(n, '\0');
  for (char& c : out) c = static_cast<char>(rng());
  // Some exact small integers too, so that ordinary values are covered.
  for (size_t i = 0; i + 8 <= n; i += 64) {
    const double v = static_cast<double>(static_cast<int>(i % 300) - 150) * 0.5;
    std::memcpy(&out[i], &v, sizeof v);
  }
  return out;
}

std::string CpuCast(const std::string& src, DType from, const Layout& src_layout, DType to,
                    const Layout& dst_layout, size_t dst_bytes) {
  std::string out(dst_bytes, '\0');
  absl::Status s = CastCopy({src.data(), from, src_layout}, {out.data(), to, dst_layout});
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

// A device allocation of the backend's, read back whole.
std::string ReadBack(CudaBackend& cuda, const DeviceMemory& memory, DType dtype,
                     const Layout& layout) {
  const int64_t numel = NumElements(layout.shape).value();
  std::string out(numel * ItemSize(dtype), '\0');
  absl::Status s = cuda.CopyRowMajorRangeToHost(memory.device(), {memory.data(), dtype, layout}, 0,
                                                numel, out.data());
  EXPECT_TRUE(s.ok()) << s;
  return out;
}

class GpuBackendTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASARRAY_REQUIRE_GPU();
    cuda_ = CudaBackend::Create();
  }
  std::unique_ptr<CudaBackend> cuda_;
};

// Every pair, through host->device, device->device and device->host, on a
// contiguous view (vectorized kernel plus tail) and on a transposed view with
// an offset (strided kernel): the bytes equal the CPU's.
TEST_F(GpuBackendTest, CastKernelsMatchTheCpuBitForBit) {
  const Layout contiguous{{4099}, {1}, 0};
  const Layout transposed{{61, 67}, {1, 61}, 5};  // storage of 5 + 61 * 67 elements
  int checked = 0;
  for (const Layout& src_layout : {contiguous, transposed}) {
    const int64_t numel = NumElements(src_layout.shape).value();
    const Layout dst_layout{src_layout.shape, ContiguousStrides(src_layout.shape), 0};
    for (DType from : kAllDTypes) {
      const size_t src_bytes = (src_layout.offset + numel) * ItemSize(from);
      const std::string src = RandomBytes(src_bytes, 1000 + static_cast<int>(from));
      // The source on the device, as it is.
      absl::StatusOr<std::shared_ptr<DeviceMemory>> on_device = cuda_->Allocate(0, src_bytes);
      ASSERT_TRUE(on_device.ok()) << on_device.status();
      ASSERT_TRUE(cuda_
                      ->CastHostToDevice({src.data(), from, src_layout}, 0,
                                         {(*on_device)->data(), from, src_layout})
                      .ok());
      for (DType to : kAllDTypes) {
        SCOPED_TRACE(absl::StrCat(DTypeName(from), " -> ", DTypeName(to), " rank ",
                                  src_layout.shape.size()));
        const size_t dst_bytes = numel * ItemSize(to);
        const std::string want = CpuCast(src, from, src_layout, to, dst_layout, dst_bytes);
        // host -> device, cast on the device
        absl::StatusOr<std::shared_ptr<DeviceMemory>> dst = cuda_->Allocate(0, dst_bytes);
        ASSERT_TRUE(dst.ok());
        ASSERT_TRUE(cuda_
                        ->CastHostToDevice({src.data(), from, src_layout}, 0,
                                           {(*dst)->data(), to, dst_layout})
                        .ok());
        EXPECT_EQ(ReadBack(*cuda_, **dst, to, dst_layout), want) << "host to device";
        // device -> device
        absl::StatusOr<std::shared_ptr<DeviceMemory>> dst2 = cuda_->Allocate(0, dst_bytes);
        ASSERT_TRUE(dst2.ok());
        ASSERT_TRUE(cuda_
                        ->CastDeviceToDevice(0, {(*on_device)->data(), from, src_layout}, 0,
                                             {(*dst2)->data(), to, dst_layout})
                        .ok());
        EXPECT_EQ(ReadBack(*cuda_, **dst2, to, dst_layout), want) << "device to device";
        // device -> host
        std::string host(dst_bytes, '\0');
        ASSERT_TRUE(cuda_
                        ->CastDeviceToHost(0, {(*on_device)->data(), from, src_layout},
                                           {host.data(), to, dst_layout})
                        .ok());
        EXPECT_EQ(host, want) << "device to host";
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 2 * 144);
}

// Large copies stream through the pinned staging ring in several chunks.
TEST_F(GpuBackendTest, LargeCopiesThroughStagingKeepEveryByte) {
  const int64_t n =
      (int64_t{100} << 20) / 4 + 3;  // 100 MiB and a bit: the ring wraps, a ragged end
  const Layout layout{{n}, {1}, 0};
  const std::string src = RandomBytes(n * 4, 7);
  absl::StatusOr<std::shared_ptr<DeviceMemory>> dev = cuda_->Allocate(0, n * 4);
  ASSERT_TRUE(dev.ok());
  ASSERT_TRUE(cuda_
                  ->CastHostToDevice({src.data(), DType::kInt32, layout}, 0,
                                     {(*dev)->data(), DType::kInt32, layout})
                  .ok());
  std::string back(n * 4, '\0');
  ASSERT_TRUE(cuda_
                  ->CastDeviceToHost(0, {(*dev)->data(), DType::kInt32, layout},
                                     {back.data(), DType::kInt32, layout})
                  .ok());
  EXPECT_TRUE(back == src);
}

TEST_F(GpuBackendTest, RowMajorRangesOfAStridedView) {
  const Layout transposed{{300, 500}, {1, 300}, 0};
  const std::string src = RandomBytes(300 * 500 * 8, 11);
  absl::StatusOr<std::shared_ptr<DeviceMemory>> dev = cuda_->Allocate(0, src.size());
  ASSERT_TRUE(dev.ok());
  ASSERT_TRUE(cuda_
                  ->CastHostToDevice({src.data(), DType::kFloat64, transposed}, 0,
                                     {(*dev)->data(), DType::kFloat64, transposed})
                  .ok());
  for (const auto& [begin, count] :
       std::vector<std::pair<int64_t, int64_t>>{{0, 1}, {499, 502}, {1000, 131072}, {0, 150000}}) {
    std::string want(count * 8, '\0'), got(count * 8, '\0');
    ASSERT_TRUE(
        CopyRowMajorRange({src.data(), DType::kFloat64, transposed}, begin, count, want.data())
            .ok());
    ASSERT_TRUE(cuda_
                    ->CopyRowMajorRangeToHost(0, {(*dev)->data(), DType::kFloat64, transposed},
                                              begin, count, got.data())
                    .ok());
    EXPECT_TRUE(got == want) << "range " << begin << " + " << count;
  }
  EXPECT_EQ(cuda_
                ->CopyRowMajorRangeToHost(0, {(*dev)->data(), DType::kFloat64, transposed}, 149999,
                                          2, nullptr)
                .code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(GpuBackendTest, EachTensorGetsWhole2MiBAllocationsThatAreFreed) {
  {
    absl::StatusOr<std::shared_ptr<DeviceMemory>> a = cuda_->Allocate(0, 100);
    absl::StatusOr<std::shared_ptr<DeviceMemory>> b = cuda_->Allocate(0, (2 << 20) + 1);
    ASSERT_TRUE(a.ok() && b.ok());
    EXPECT_EQ((*a)->ipc_handle().size(), server::kCudaIpcHandleBytes);
    EXPECT_NE((*a)->ipc_handle(), (*b)->ipc_handle());
    EXPECT_EQ((*a)->size(), 100u);
    EXPECT_EQ((*a)->offset_in_allocation(), 0u);
    const server::CudaStats s = cuda_->Stats();
    EXPECT_EQ(s.allocations, 2u);
    EXPECT_EQ(s.bytes, uint64_t{6} << 20);  // 2 MiB + 4 MiB
  }
  EXPECT_EQ(cuda_->Stats().allocations, 0u);
  EXPECT_EQ(cuda_->Stats().bytes, 0u);
}

TEST_F(GpuBackendTest, UnknownOrdinalsAreInvalidArgument) {
  const int n = cuda_->device_count();
  absl::Status s = cuda_->CheckDevice(Device{Device::Type::kCUDA, n});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("does not exist"));
  EXPECT_TRUE(cuda_->CheckDevice(Device{Device::Type::kCUDA, n - 1}).ok());
  EXPECT_EQ(cuda_->Allocate(n, 16).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(GpuBackendTest, CastBetweenTwoDevices) {
  if (cuda_->device_count() < 2) {
    GTEST_SKIP() << "needs two CUDA devices; this host has " << cuda_->device_count();
  }
  const Layout layout{{1000}, {1}, 0};
  const std::string src = RandomBytes(4000, 5);
  absl::StatusOr<std::shared_ptr<DeviceMemory>> a = cuda_->Allocate(0, 4000);
  absl::StatusOr<std::shared_ptr<DeviceMemory>> b = cuda_->Allocate(1, 2000);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_TRUE(cuda_
                  ->CastHostToDevice({src.data(), DType::kFloat32, layout}, 0,
                                     {(*a)->data(), DType::kFloat32, layout})
                  .ok());
  ASSERT_TRUE(cuda_
                  ->CastDeviceToDevice(0, {(*a)->data(), DType::kFloat32, layout}, 1,
                                       {(*b)->data(), DType::kBFloat16, layout})
                  .ok());
  EXPECT_EQ(ReadBack(*cuda_, **b, DType::kBFloat16, layout),
            CpuCast(src, DType::kFloat32, layout, DType::kBFloat16, layout, 2000));
}

// --- Through asarrayd, across processes --------------------------------------

class GpuServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    ASARRAY_REQUIRE_GPU();
    server_ = ChildServer::Start(flags_);
    ASSERT_NE(server_, nullptr);
    client_ = server_->NewClient();
  }
  void TearDown() override {
    if (server_ == nullptr) return;
    EXPECT_TRUE(client_->Health().ok());
    client_.reset();
    server_.reset();
  }
  v1::StatsResponse Stats() {
    absl::StatusOr<v1::StatsResponse> s = client_->Stats();
    EXPECT_TRUE(s.ok()) << s.status();
    return s.ok() ? *s : v1::StatsResponse();
  }
  static ConvertOptions OnCuda(std::optional<DType> dtype = std::nullopt,
                               std::optional<bool> copy = std::nullopt) {
    ConvertOptions o;
    o.device = Device{Device::Type::kCUDA, 0};
    o.dtype = dtype;
    o.copy = copy;
    return o;
  }

  std::vector<std::string> flags_;
  std::unique_ptr<ChildServer> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(GpuServiceTest, ServerExportsAndThisProcessOpensTheHandle) {
  const Layout layout{{64, 33}, {33, 1}, 0};
  const std::string src = RandomBytes(64 * 33 * 4, 21);
  {
    absl::StatusOr<MappedTensor> t = client_->ConvertInline(src.data(), src.size(), DType::kFloat32,
                                                            layout, OnCuda(DType::kBFloat16));
    ASSERT_TRUE(t.ok()) << t.status();
    const HandleInfo& h = t->handle();
    EXPECT_EQ(DeviceName(h.device), "cuda:0");
    EXPECT_EQ(h.cuda_ipc_handle.size(), 64u);
    EXPECT_EQ(h.cuda_offset, 0u);
    EXPECT_EQ(h.cuda_size, 64u * 33 * 2);
    EXPECT_TRUE(h.shm_name.empty());
    EXPECT_FALSE(h.shares_memory);
    ASSERT_TRUE(t->on_device());
    EXPECT_NE(t->data(), nullptr);
    const std::string want =
        CpuCast(src, DType::kFloat32, layout, DType::kBFloat16, layout, 64 * 33 * 2);
    absl::StatusOr<std::string> opened = t->RowMajorBytes();  // through cudaIpcOpenMemHandle
    ASSERT_TRUE(opened.ok()) << opened.status();
    EXPECT_TRUE(*opened == want);
    absl::StatusOr<std::string> streamed = client_->ReadBytes(t->id());  // over gRPC
    ASSERT_TRUE(streamed.ok()) << streamed.status();
    EXPECT_TRUE(*streamed == want);
    EXPECT_EQ(Stats().cuda_allocations(), 1u);
    EXPECT_EQ(Stats().cuda_bytes_in_use(), uint64_t{2} << 20);
  }
  // The MappedTensor closed its handle and released the lease: memory freed.
  EXPECT_EQ(Stats().cuda_allocations(), 0u);
  EXPECT_EQ(Stats().tensors(), 0u);
}

TEST_F(GpuServiceTest, DeviceResultsGoBackToTheCpuAndBetweenSources) {
  // A literal, straight onto the device.
  absl::StatusOr<MappedTensor> lit =
      client_->ConvertLiteral(Literal::List({Literal::List({Literal::Int(1), Literal::Float(2.5)}),
                                             Literal::List({Literal::Int(3), Literal::Int(4)})}),
                              OnCuda());
  ASSERT_TRUE(lit.ok()) << lit.status();
  EXPECT_EQ(lit->dtype(), DType::kFloat32);
  const float want[] = {1, 2.5, 3, 4};
  absl::StatusOr<std::string> bytes = lit->RowMajorBytes();
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, std::string(reinterpret_cast<const char*>(want), sizeof want));
  // Device -> CPU, with a cast: a shared-memory result.
  ConvertOptions to_cpu;
  to_cpu.device = Device{};
  to_cpu.dtype = DType::kFloat64;
  absl::StatusOr<MappedTensor> cpu = client_->ConvertTensor(lit->id(), to_cpu);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_FALSE(cpu->handle().shm_name.empty());
  EXPECT_FALSE(cpu->on_device());
  EXPECT_EQ(static_cast<const double*>(cpu->data())[1], 2.5);
  // Same device, same dtype, copy=None: the held tensor itself.
  absl::StatusOr<MappedTensor> alias = client_->ConvertTensor(lit->id(), OnCuda());
  ASSERT_TRUE(alias.ok()) << alias.status();
  EXPECT_EQ(alias->handle().cuda_ipc_handle, lit->handle().cuda_ipc_handle);
  // copy=False with a cast fails as on the CPU.
  absl::Status s = client_->ConvertTensor(lit->id(), OnCuda(DType::kInt32, false)).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  // Host memory onto the device with copy=False: a copy is needed.
  SharedRegion region = SharedRegion::Create(16).value();
  s = client_
          ->ConvertRegion(region.name(), 0, 16, DType::kFloat32, {{4}, {1}, 0},
                          OnCuda(std::nullopt, false))
          .status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  // A streamed upload lands on the device too.
  client_->set_upload_threshold(1024);
  const std::string big = RandomBytes(1 << 20, 3);
  absl::StatusOr<MappedTensor> up =
      client_->ConvertInline(big.data(), big.size(), DType::kInt16, {{1 << 19}, {1}, 0}, OnCuda());
  ASSERT_TRUE(up.ok()) << up.status();
  absl::StatusOr<std::string> up_bytes = up->RowMajorBytes();
  ASSERT_TRUE(up_bytes.ok());
  EXPECT_TRUE(*up_bytes == big);
  // Unknown ordinals.
  ConvertOptions far = OnCuda();
  far.device->index = 99;
  s = client_->ConvertLiteral(Literal::List({Literal::Int(1)}), far).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("cuda:99 does not exist"));
}

TEST_F(GpuServiceTest, ThisProcessExportsAndTheServerAliasesOrCasts) {
  const int64_t n = 1000;
  const uint64_t offset = 256;  // the storage starts inside the allocation
  std::unique_ptr<DeviceRegion> region = DeviceRegion::Create(0, offset + n * 4).value();
  const std::string src = RandomBytes(n * 4, 31);
  ASSERT_TRUE(region->CopyFromHost(src.data(), src.size(), offset).ok());
  auto request = [&](ConvertOptions options) {
    v1::ConvertRequest r;
    v1::CudaIpcArray* a = r.mutable_source()->mutable_cuda_ipc();
    a->set_ipc_handle(region->ipc_handle());
    a->set_device(0);
    a->set_offset(offset);
    a->set_size(n * 4);
    a->set_dtype(v1::DTYPE_FLOAT32);
    LayoutToProto(Layout{{n / 2, 2}, {1, n / 2}, 0}, a->mutable_layout());  // a transposed view
    OptionsToProto(options, r.mutable_options());
    return r;
  };
  const Layout view{{n / 2, 2}, {1, n / 2}, 0};
  {
    // Same dtype and device, copy=None: the handle is this process's own
    // allocation (which this process must not open itself).
    absl::StatusOr<v1::ConvertResponse> alias = client_->Convert(request(OnCuda()));
    ASSERT_TRUE(alias.ok()) << alias.status();
    HandleInfo h = HandleFromProto(alias->handle()).value();
    EXPECT_TRUE(h.shares_memory);
    EXPECT_EQ(h.cuda_ipc_handle, region->ipc_handle());
    EXPECT_EQ(h.cuda_offset, offset);
    EXPECT_EQ(h.layout, view);
    EXPECT_EQ(Stats().cuda_allocations(), 0u);
    EXPECT_EQ(Stats().cuda_ipc_opened(), 1u);
    // Read over gRPC: the server gathers the strided view on the device.
    absl::StatusOr<std::string> bytes = client_->ReadBytes(h.id);
    ASSERT_TRUE(bytes.ok()) << bytes.status();
    EXPECT_TRUE(*bytes == CpuCast(src, DType::kFloat32, view, DType::kFloat32,
                                  {view.shape, ContiguousStrides(view.shape), 0}, n * 4));
    // The same allocation again shares the one opened handle.
    absl::StatusOr<v1::ConvertResponse> again = client_->Convert(request(OnCuda()));
    ASSERT_TRUE(again.ok());
    EXPECT_EQ(Stats().cuda_ipc_opened(), 1u);
    ASSERT_TRUE(client_->Release(h.id).ok());
    ASSERT_TRUE(client_->Release(again->handle().id()).ok());
    EXPECT_EQ(Stats().cuda_ipc_opened(), 0u);
  }
  // copy=False with a cast: as on the CPU.
  absl::Status s = client_->Convert(request(OnCuda(DType::kFloat16, false))).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_THAT(s.message(), HasSubstr("float32 and converting it to float16 needs a copy"));
  // copy=True, and a cast: new allocations of the server's, bit-exact.
  for (const ConvertOptions& options : {OnCuda(std::nullopt, true), OnCuda(DType::kFloat16)}) {
    const DType to = options.dtype.value_or(DType::kFloat32);
    absl::StatusOr<MappedTensor> t = client_->Map(
        HandleFromProto(client_->Convert(request(options)).value().handle()).value(), true);
    ASSERT_TRUE(t.ok()) << t.status();
    EXPECT_FALSE(t->handle().shares_memory);
    EXPECT_NE(t->handle().cuda_ipc_handle, region->ipc_handle());
    absl::StatusOr<std::string> got = t->RowMajorBytes();
    ASSERT_TRUE(got.ok()) << got.status();
    EXPECT_TRUE(*got == CpuCast(src, DType::kFloat32, view, to,
                                {view.shape, ContiguousStrides(view.shape), 0}, n * ItemSize(to)));
  }
  // Device -> CPU from the client's allocation.
  ConvertOptions to_cpu;
  to_cpu.device = Device{};
  v1::ConvertRequest r = request(to_cpu);
  absl::StatusOr<v1::ConvertResponse> cpu = client_->Convert(r);
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  EXPECT_TRUE(cpu->handle().has_shared_memory());
  ASSERT_TRUE(client_->Release(cpu->handle().id()).ok());
  // Bad handles and ranges are the caller's error; the server keeps serving.
  r = request(OnCuda());
  r.mutable_source()->mutable_cuda_ipc()->set_ipc_handle(RandomBytes(64, 1));
  s = client_->Convert(r).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  r = request(OnCuda());
  r.mutable_source()->mutable_cuda_ipc()->set_ipc_handle("short");
  EXPECT_EQ(client_->Convert(r).status().code(), absl::StatusCode::kInvalidArgument);
  r = request(OnCuda());
  r.mutable_source()->mutable_cuda_ipc()->set_offset(uint64_t{1} << 40);
  s = client_->Convert(r).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("outside the CUDA allocation"));
  EXPECT_EQ(Stats().cuda_ipc_opened(), 0u);
  EXPECT_EQ(Stats().cuda_allocations(), 0u);
}

// A big region used again is page-locked, then copied straight from: each
// use still sees the region's current bytes, and the pin goes when the
// client unlinks the region.
TEST_F(GpuServiceTest, ReusedBigRegionsArePinnedAndReadDirectly) {
  const int64_t n = (int64_t{32} << 20) / 4;
  const Layout layout{{n}, {1}, 0};
  {
    SharedRegion region = SharedRegion::Create(n * 4).value();
    auto* values = static_cast<int32_t*>(region.data());
    for (int round = 0; round < 3; ++round) {
      for (int64_t i = 0; i < n; ++i) values[i] = static_cast<int32_t>(i * 7 + round);
      const std::string src(static_cast<const char*>(region.data()), n * 4);
      for (DType to : {DType::kInt32, DType::kFloat64}) {
        absl::StatusOr<MappedTensor> t =
            client_->ConvertRegion(region.name(), 0, n * 4, DType::kInt32, layout, OnCuda(to));
        ASSERT_TRUE(t.ok()) << t.status();
        absl::StatusOr<std::string> got = t->RowMajorBytes();
        ASSERT_TRUE(got.ok()) << got.status();
        EXPECT_TRUE(*got == CpuCast(src, DType::kInt32, layout, to, layout, n * ItemSize(to)))
            << "round " << round << " to " << DTypeName(to);
      }
      // Pinned from the second use on.
      EXPECT_EQ(Stats().cuda_pinned_bytes(), static_cast<uint64_t>(n * 4)) << "round " << round;
    }
  }
  // The region is unlinked: the server lets go of it within a sweep.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Stats().cuda_pinned_bytes() != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(Stats().cuda_pinned_bytes(), 0u);
}

class GpuLeaseTest : public GpuServiceTest {
 protected:
  void SetUp() override {
    flags_ = {"--lease_ttl=1s"};
    GpuServiceTest::SetUp();
  }
};

TEST_F(GpuLeaseTest, LeaseExpiryFreesDeviceMemory) {
  absl::StatusOr<MappedTensor> t =
      client_->ConvertLiteral(Literal::List({Literal::Float(1)}), OnCuda());
  ASSERT_TRUE(t.ok()) << t.status();
  t->DetachLease();
  const std::string id = t->id();
  t = absl::CancelledError("closed");  // close the handle; keep the lease running
  EXPECT_EQ(Stats().cuda_allocations(), 1u);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (Stats().cuda_allocations() != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(Stats().cuda_allocations(), 0u);
  EXPECT_EQ(client_->Release(id).code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace asarray::testing
