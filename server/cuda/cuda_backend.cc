// CudaBackend on the CUDA runtime. Work runs on the calling thread's default
// stream (cudaStreamPerThread) of the device concerned, and every public call
// synchronizes that stream before it returns.
#include "server/cuda_backend.h"

#include <cuda.h>
#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "core/layout.h"
#include "core/parallel.h"
#include "core/status_macros.h"
#include "server/cuda/cast_kernels.h"
#include "server/cuda/cuda_status.h"

namespace asarray::server {
namespace {

// Device allocations are rounded to this, so that no two tensors share one
// (an IPC handle exposes a whole allocation).
constexpr uint64_t kAllocationGranule = uint64_t{2} << 20;
// Host<->device copies up to this size go straight through the driver;
// larger ones stream through pinned staging buffers.
constexpr uint64_t kDirectCopyBytes = uint64_t{1} << 20;
// Chunks are big enough that each host memcpy spreads over every core (and
// the threads' start-up is small beside it), and few enough in flight that
// the pinned memory per copy stays at 96 MiB.
constexpr uint64_t kStagingChunk = uint64_t{32} << 20;
constexpr int kStagingDepth = 3;  // chunks in flight
// Host memory page-locked for direct copies, at most.
constexpr uint64_t kMaxPinnedBytes = uint64_t{16} << 30;
// Host memcpy into or out of a staging buffer splits into pieces this big.
constexpr int64_t kMemcpyGrain = int64_t{1} << 20;

cudaStream_t Stream() { return cudaStreamPerThread; }

// Makes `device` current for this scope, and restores the previous one.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    if (cudaGetDevice(&previous_) != cudaSuccess) previous_ = -1;
    status_ = CudaStatus(cudaSetDevice(device), absl::StrCat("selecting cuda:", device));
  }
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  const absl::Status& status() const { return status_; }

 private:
  int previous_ = -1;
  absl::Status status_;
};

absl::Status Synchronize(absl::string_view what) {
  ASARRAY_CUDA_RETURN_IF_ERROR(cudaStreamSynchronize(Stream()), what);
  return absl::OkStatus();
}

void ParallelMemcpy(void* dst, const void* src, size_t bytes) {
  ParallelFor(static_cast<int64_t>(bytes), kMemcpyGrain, [&](int64_t begin, int64_t end) {
    std::memcpy(static_cast<char*>(dst) + begin, static_cast<const char*>(src) + begin,
                end - begin);
  });
}

// Counts shared with the memory objects, which may outlive the backend.
struct Counters {
  std::atomic<uint64_t> allocations{0};
  std::atomic<uint64_t> bytes{0};
  std::atomic<uint64_t> ipc_opened{0};
  std::atomic<uint64_t> pinned_bytes{0};
};

// One cudaMalloc allocation of the server's, freed on destruction.
class OwnedAllocation final : public DeviceMemory {
 public:
  OwnedAllocation(int device, void* data, uint64_t size, uint64_t allocated, std::string handle,
                  std::shared_ptr<Counters> counters)
      : device_(device),
        data_(data),
        size_(size),
        allocated_(allocated),
        handle_(std::move(handle)),
        counters_(std::move(counters)) {
    ++counters_->allocations;
    counters_->bytes += allocated_;
  }
  ~OwnedAllocation() override {
    DeviceScope scope(device_);
    cudaFree(data_);
    --counters_->allocations;
    counters_->bytes -= allocated_;
  }
  void* data() const override { return size_ == 0 ? nullptr : data_; }
  uint64_t size() const override { return size_; }
  int device() const override { return device_; }
  const std::string& ipc_handle() const override { return handle_; }
  uint64_t offset_in_allocation() const override { return 0; }
  bool server_owned() const override { return true; }

 private:
  const int device_;
  void* const data_;
  const uint64_t size_;
  const uint64_t allocated_;
  const std::string handle_;
  const std::shared_ptr<Counters> counters_;
};

// A client allocation opened by IPC handle; closed on destruction. Shared by
// every tensor that uses a range of it.
class IpcMapping {
 public:
  IpcMapping(int device, void* base, uint64_t size, std::string handle,
             std::shared_ptr<Counters> counters)
      : device_(device),
        base_(base),
        size_(size),
        handle_(std::move(handle)),
        counters_(std::move(counters)) {
    ++counters_->ipc_opened;
  }
  ~IpcMapping() {
    DeviceScope scope(device_);
    cudaIpcCloseMemHandle(base_);
    --counters_->ipc_opened;
  }
  int device() const { return device_; }
  unsigned char* base() const { return static_cast<unsigned char*>(base_); }
  uint64_t size() const { return size_; }
  const std::string& handle() const { return handle_; }

 private:
  const int device_;
  void* const base_;
  const uint64_t size_;
  const std::string handle_;
  const std::shared_ptr<Counters> counters_;
};

class ClientAllocation final : public DeviceMemory {
 public:
  ClientAllocation(std::shared_ptr<IpcMapping> mapping, uint64_t offset, uint64_t size)
      : mapping_(std::move(mapping)), offset_(offset), size_(size) {}
  void* data() const override { return size_ == 0 ? nullptr : mapping_->base() + offset_; }
  uint64_t size() const override { return size_; }
  int device() const override { return mapping_->device(); }
  const std::string& ipc_handle() const override { return mapping_->handle(); }
  uint64_t offset_in_allocation() const override { return offset_; }
  bool server_owned() const override { return false; }

 private:
  const std::shared_ptr<IpcMapping> mapping_;
  const uint64_t offset_;
  const uint64_t size_;
};

// A temporary device buffer on the current device, freed in stream order.
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ~ScratchBuffer() {
    if (data_ != nullptr) cudaFreeAsync(data_, Stream());
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  absl::Status Allocate(uint64_t bytes) {
    ASARRAY_CUDA_RETURN_IF_ERROR(cudaMallocAsync(&data_, std::max<uint64_t>(bytes, 1), Stream()),
                                 absl::StrCat("allocating ", bytes, " bytes of scratch memory"));
    return absl::OkStatus();
  }
  unsigned char* data() const { return static_cast<unsigned char*>(data_); }

 private:
  void* data_ = nullptr;
};

// The byte range a view touches, which must start at or after its storage.
absl::StatusOr<ByteRange> RangeOf(const Layout& layout, DType dtype) {
  ASARRAY_ASSIGN_OR_RETURN(const ByteRange range, ComputeByteRange(layout, ItemSize(dtype)));
  if (range.begin < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("view with strides ", DimsToString(layout.strides), " and offset ",
                     layout.offset, " reaches before the start of its storage"));
  }
  return range;
}

// Whether dst is src's bytes verbatim: same dtype, same strides, and the
// elements fill their range exactly.
bool SameBytes(DType src_dtype, const Layout& src, DType dst_dtype, const Layout& dst) {
  return src_dtype == dst_dtype && src.strides == dst.strides && !HasNegativeStride(src.strides) &&
         IsNonOverlappingAndDense(src.shape, src.strides);
}

// REQUIRES: the view was checked (ComputeViewSizes, CheckFitsStorage), so
// offset * item size lies inside its extent.
const unsigned char* ElementZero(const ConstStridedView& v) {
  return static_cast<const unsigned char*>(v.base) + v.layout.offset * ItemSize(v.dtype);
}
unsigned char* ElementZero(const StridedView& v) {
  return static_cast<unsigned char*>(v.base) + v.layout.offset * ItemSize(v.dtype);
}

absl::Status LaunchWholeCast(DType src_dtype, const void* src, DType dst_dtype, void* dst,
                             const Layout& src_layout, const Layout& dst_layout) {
  const std::vector<LoopDim> loop = MakeCopyLoop(src_layout, dst_layout);
  ASARRAY_ASSIGN_OR_RETURN(const int64_t numel, NumElements(src_layout.shape));
  ASARRAY_CUDA_RETURN_IF_ERROR(
      LaunchCast(src_dtype, src, dst_dtype, dst, loop, 0, numel, 0, Stream()),
      absl::StrCat("launching the ", DTypeName(src_dtype), " to ", DTypeName(dst_dtype),
                   " cast kernel"));
  return absl::OkStatus();
}

// Element 0 of a view whose bytes [range.begin, range.end) were copied to
// `copy` (as the view touches nothing outside them).
unsigned char* ElementZeroIn(unsigned char* copy, const Layout& layout, DType dtype,
                             const ByteRange& range) {
  return copy + (layout.offset * static_cast<int64_t>(ItemSize(dtype)) - range.begin);
}

// Casts `src`, on the current device, into new scratch memory that stands for
// `dst`'s bytes `range`, laid out as `dst` (dense, so that the cast fills it).
absl::Status CastIntoScratch(const ConstStridedView& src, const StridedView& dst,
                             const ByteRange& range, ScratchBuffer* scratch) {
  ASARRAY_RETURN_IF_ERROR(scratch->Allocate(range.end - range.begin));
  return LaunchWholeCast(src.dtype, ElementZero(src), dst.dtype,
                         ElementZeroIn(scratch->data(), dst.layout, dst.dtype, range), src.layout,
                         dst.layout);
}

}  // namespace

// Pinned host buffers for staging copies, reused across calls and freed with
// the backend.
class StagingPool {
 public:
  ~StagingPool() {
    for (void* p : free_) cudaFreeHost(p);
  }
  absl::StatusOr<void*> Take() {
    {
      absl::MutexLock lock(&mu_);
      if (!free_.empty()) {
        void* p = free_.back();
        free_.pop_back();
        return p;
      }
    }
    void* p = nullptr;
    ASARRAY_CUDA_RETURN_IF_ERROR(cudaHostAlloc(&p, kStagingChunk, cudaHostAllocPortable),
                                 "allocating pinned staging memory");
    return p;
  }
  void Give(void* p) {
    absl::MutexLock lock(&mu_);
    free_.push_back(p);
  }

 private:
  absl::Mutex mu_;
  std::vector<void*> free_ ABSL_GUARDED_BY(mu_);
};

struct CudaBackend::Impl {
  int device_count = 0;
  std::string unavailable;  // why there is no device, when there is none
  std::vector<std::string> descriptions;
  std::shared_ptr<Counters> counters = std::make_shared<Counters>();
  StagingPool staging;
  using CuMemGetAddressRange = CUresult (*)(CUdeviceptr*, size_t*, CUdeviceptr);
  CuMemGetAddressRange get_address_range = nullptr;

  absl::Mutex ipc_mu;  // serializes opening and closing IPC handles
  absl::flat_hash_map<std::string, std::weak_ptr<IpcMapping>> ipc_open ABSL_GUARDED_BY(ipc_mu);

  // A copy of `bytes` between host and device memory: direct from pinned
  // host memory, else through staging buffers, where the host memcpy of one
  // chunk overlaps the DMA of the others.
  absl::Status HostToDevice(void* device, const void* host, uint64_t bytes, bool pinned);
  absl::Status DeviceToHost(void* host, const void* device, uint64_t bytes);
};

namespace {

// kStagingDepth staging buffers and an event for each, for one copy.
class StagingRing {
 public:
  explicit StagingRing(StagingPool* pool) : pool_(pool) {}
  ~StagingRing() {
    cudaStreamSynchronize(Stream());  // nothing may still read or fill a buffer
    for (Slot& s : slots_) {
      if (s.event != nullptr) cudaEventDestroy(s.event);
      if (s.buffer != nullptr) pool_->Give(s.buffer);
    }
  }
  StagingRing(const StagingRing&) = delete;
  StagingRing& operator=(const StagingRing&) = delete;

  absl::Status Init() {
    slots_.resize(kStagingDepth);
    for (Slot& s : slots_) {
      ASARRAY_ASSIGN_OR_RETURN(s.buffer, pool_->Take());
      ASARRAY_CUDA_RETURN_IF_ERROR(cudaEventCreateWithFlags(&s.event, cudaEventDisableTiming),
                                   "creating a staging event");
    }
    return absl::OkStatus();
  }
  struct Slot {
    void* buffer = nullptr;
    cudaEvent_t event = nullptr;
    uint64_t offset = 0;  // of the chunk it holds
    uint64_t length = 0;  // 0 when idle
  };
  Slot& operator[](size_t i) { return slots_[i % slots_.size()]; }

 private:
  StagingPool* const pool_;
  std::vector<Slot> slots_;
};

}  // namespace

absl::Status CudaBackend::Impl::HostToDevice(void* device, const void* host, uint64_t bytes,
                                             bool pinned) {
  if (pinned || bytes <= kDirectCopyBytes) {
    ASARRAY_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(device, host, bytes, cudaMemcpyHostToDevice, Stream()),
        "copying to the device");
    return absl::OkStatus();
  }
  StagingRing ring(&staging);
  ASARRAY_RETURN_IF_ERROR(ring.Init());
  size_t k = 0;
  for (uint64_t offset = 0; offset < bytes; offset += kStagingChunk, ++k) {
    StagingRing::Slot& slot = ring[k];
    // The DMA that last read this buffer must be done before it is refilled.
    ASARRAY_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(slot.event), "waiting for a staging copy");
    const uint64_t length = std::min(kStagingChunk, bytes - offset);
    ParallelMemcpy(slot.buffer, static_cast<const char*>(host) + offset, length);
    ASARRAY_CUDA_RETURN_IF_ERROR(cudaMemcpyAsync(static_cast<char*>(device) + offset, slot.buffer,
                                                 length, cudaMemcpyHostToDevice, Stream()),
                                 "copying to the device");
    ASARRAY_CUDA_RETURN_IF_ERROR(cudaEventRecord(slot.event, Stream()), "recording a staging copy");
  }
  return absl::OkStatus();
}

absl::Status CudaBackend::Impl::DeviceToHost(void* host, const void* device, uint64_t bytes) {
  if (bytes <= kDirectCopyBytes) {
    ASARRAY_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, Stream()),
        "copying from the device");
    return Synchronize("copying from the device");
  }
  StagingRing ring(&staging);
  ASARRAY_RETURN_IF_ERROR(ring.Init());
  const uint64_t chunks = (bytes + kStagingChunk - 1) / kStagingChunk;
  // Keeps kStagingDepth DMAs queued ahead of the host memcpy that drains them.
  auto issue = [&](uint64_t chunk) -> absl::Status {
    StagingRing::Slot& slot = ring[chunk];
    slot.offset = chunk * kStagingChunk;
    slot.length = std::min(kStagingChunk, bytes - slot.offset);
    ASARRAY_CUDA_RETURN_IF_ERROR(
        cudaMemcpyAsync(slot.buffer, static_cast<const char*>(device) + slot.offset, slot.length,
                        cudaMemcpyDeviceToHost, Stream()),
        "copying from the device");
    ASARRAY_CUDA_RETURN_IF_ERROR(cudaEventRecord(slot.event, Stream()), "recording a staging copy");
    return absl::OkStatus();
  };
  for (uint64_t c = 0; c < std::min<uint64_t>(chunks, kStagingDepth); ++c)
    ASARRAY_RETURN_IF_ERROR(issue(c));
  for (uint64_t c = 0; c < chunks; ++c) {
    StagingRing::Slot& slot = ring[c];
    ASARRAY_CUDA_RETURN_IF_ERROR(cudaEventSynchronize(slot.event), "waiting for a staging copy");
    ParallelMemcpy(static_cast<char*>(host) + slot.offset, slot.buffer, slot.length);
    if (c + kStagingDepth < chunks) ASARRAY_RETURN_IF_ERROR(issue(c + kStagingDepth));
  }
  return absl::OkStatus();
}

CudaBackend::CudaBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaBackend::~CudaBackend() = default;

bool CudaBackend::Compiled() { return true; }

std::unique_ptr<CudaBackend> CudaBackend::Create() {
  auto impl = std::make_unique<Impl>();
  int count = 0;
  const cudaError_t error = cudaGetDeviceCount(&count);
  if (error != cudaSuccess) {
    impl->unavailable = absl::StrCat(cudaGetErrorString(error), " (", cudaGetErrorName(error), ")");
    cudaGetLastError();
    count = 0;
  } else if (count == 0) {
    impl->unavailable = "the driver reports no CUDA device";
  }
  for (int d = 0; d < count; ++d) {
    cudaDeviceProp props;
    // Creating each context now keeps that cost out of the first request.
    if (cudaSetDevice(d) != cudaSuccess || cudaFree(nullptr) != cudaSuccess ||
        cudaGetDeviceProperties(&props, d) != cudaSuccess) {
      const cudaError_t e = cudaGetLastError();
      impl->unavailable = absl::StrCat("cuda:", d, " cannot be used: ", cudaGetErrorString(e));
      impl->descriptions.clear();
      count = 0;
      break;
    }
    impl->descriptions.push_back(absl::StrCat("cuda:", d, " ", props.name, " (sm_", props.major,
                                              props.minor, ", ", props.totalGlobalMem >> 20,
                                              " MiB)"));
  }
  if (count > 0) {
    cudaSetDevice(0);
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult found;
    if (cudaGetDriverEntryPointByVersion("cuMemGetAddressRange", &fn, 12000, cudaEnableDefault,
                                         &found) == cudaSuccess &&
        found == cudaDriverEntryPointSuccess) {
      impl->get_address_range = reinterpret_cast<Impl::CuMemGetAddressRange>(fn);
    } else {
      cudaGetLastError();
    }
  }
  impl->device_count = count;
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::move(impl)));
}

int CudaBackend::device_count() const { return impl_->device_count; }

std::string CudaBackend::Describe() const {
  if (impl_->device_count == 0) return "CUDA: no device available: " + impl_->unavailable;
  return absl::StrCat("CUDA: ", absl::StrJoin(impl_->descriptions, ", "));
}

absl::Status CudaBackend::CheckDevice(const Device& device) const {
  if (device.type == Device::Type::kCPU) return absl::OkStatus();
  if (impl_->device_count == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "no CUDA device is available for ", DeviceName(device), ": ", impl_->unavailable));
  }
  if (device.index < 0 || device.index >= impl_->device_count) {
    return absl::InvalidArgumentError(
        absl::StrCat("device ", DeviceName(device), " does not exist: this host has ",
                     impl_->device_count, " CUDA device", impl_->device_count == 1 ? "" : "s",
                     " (cuda:0 to cuda:", impl_->device_count - 1, ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<DeviceMemory>> CudaBackend::Allocate(int device, uint64_t bytes) {
  ASARRAY_RETURN_IF_ERROR(CheckDevice(Device{Device::Type::kCUDA, device}));
  if (bytes > (uint64_t{1} << 62)) {
    return absl::ResourceExhaustedError(absl::StrCat(bytes, " bytes is beyond any device"));
  }
  const uint64_t allocated =
      std::max<uint64_t>(1, (bytes + kAllocationGranule - 1) / kAllocationGranule) *
      kAllocationGranule;
  DeviceScope scope(device);
  ASARRAY_RETURN_IF_ERROR(scope.status());
  void* data = nullptr;
  ASARRAY_CUDA_RETURN_IF_ERROR(cudaMalloc(&data, allocated),
                               absl::StrCat("allocating ", allocated, " bytes on cuda:", device));
  cudaIpcMemHandle_t handle;
  const cudaError_t error = cudaIpcGetMemHandle(&handle, data);
  if (error != cudaSuccess) {
    cudaFree(data);
    return CudaStatus(error, "exporting an IPC handle");
  }
  return std::make_shared<OwnedAllocation>(
      device, data, bytes, allocated,
      std::string(reinterpret_cast<const char*>(&handle), sizeof handle), impl_->counters);
}

absl::StatusOr<std::shared_ptr<DeviceMemory>> CudaBackend::OpenIpc(const std::string& handle,
                                                                   int device, uint64_t offset,
                                                                   uint64_t size) {
  ASARRAY_RETURN_IF_ERROR(CheckDevice(Device{Device::Type::kCUDA, device}));
  if (handle.size() != sizeof(cudaIpcMemHandle_t)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a CUDA IPC handle holds ", sizeof(cudaIpcMemHandle_t), " bytes, not ", handle.size()));
  }
  std::shared_ptr<IpcMapping> mapping;
  {
    absl::MutexLock lock(&impl_->ipc_mu);
    auto it = impl_->ipc_open.find(handle);
    if (it != impl_->ipc_open.end()) mapping = it->second.lock();
    if (mapping == nullptr) {
      DeviceScope scope(device);
      ASARRAY_RETURN_IF_ERROR(scope.status());
      cudaIpcMemHandle_t h;
      std::memcpy(&h, handle.data(), sizeof h);
      void* base = nullptr;
      const cudaError_t error = cudaIpcOpenMemHandle(&base, h, cudaIpcMemLazyEnablePeerAccess);
      if (error != cudaSuccess) {
        cudaGetLastError();
        return absl::InvalidArgumentError(absl::StrCat(
            "cannot open the CUDA IPC handle on cuda:", device, ": ", cudaGetErrorString(error),
            " (the allocation must be live, on that device, and exported by another process)"));
      }
      uint64_t allocation_size = 0;
      CUdeviceptr range_base = 0;
      size_t range_size = 0;
      if (impl_->get_address_range == nullptr ||
          impl_->get_address_range(&range_base, &range_size, reinterpret_cast<CUdeviceptr>(base)) !=
              CUDA_SUCCESS) {
        cudaIpcCloseMemHandle(base);
        return absl::InternalError("cannot find the size of an opened CUDA IPC allocation");
      }
      allocation_size = range_size - (reinterpret_cast<CUdeviceptr>(base) - range_base);
      // The deleter closes the handle under the lock, so that a reopen of
      // the same handle never races with its close.
      Impl* impl = impl_.get();
      mapping = std::shared_ptr<IpcMapping>(
          new IpcMapping(device, base, allocation_size, handle, impl_->counters),
          [impl](IpcMapping* m) {
            absl::MutexLock guard(&impl->ipc_mu);
            auto entry = impl->ipc_open.find(m->handle());
            if (entry != impl->ipc_open.end() && entry->second.expired()) {
              impl->ipc_open.erase(entry);
            }
            delete m;
          });
      impl_->ipc_open[handle] = mapping;
    }
  }
  if (mapping->device() != device) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the CUDA IPC handle is open on cuda:", mapping->device(), ", not cuda:", device));
  }
  if (offset > mapping->size() || size > mapping->size() - offset) {
    return absl::InvalidArgumentError(absl::StrCat("range [", offset, ", ", offset, " + ", size,
                                                   ") lies outside the CUDA allocation of ",
                                                   mapping->size(), " bytes"));
  }
  return std::make_shared<ClientAllocation>(std::move(mapping), offset, size);
}

absl::StatusOr<std::shared_ptr<void>> CudaBackend::PinHost(void* data, uint64_t bytes) {
  if (impl_->device_count == 0) return CheckDevice(Device{Device::Type::kCUDA, 0});
  std::shared_ptr<Counters> counters = impl_->counters;
  if (counters->pinned_bytes.fetch_add(bytes) + bytes > kMaxPinnedBytes) {
    counters->pinned_bytes -= bytes;
    return absl::ResourceExhaustedError(
        absl::StrCat("pinning ", bytes, " more bytes would pass the limit of ", kMaxPinnedBytes));
  }
  const cudaError_t error = cudaHostRegister(data, bytes, cudaHostRegisterPortable);
  if (error != cudaSuccess) {
    counters->pinned_bytes -= bytes;
    return CudaStatus(error, absl::StrCat("page-locking ", bytes, " bytes of host memory"));
  }
  return std::shared_ptr<void>(data, [counters, bytes](void* p) {
    cudaHostUnregister(p);
    counters->pinned_bytes -= bytes;
  });
}

absl::Status CudaBackend::CastHostToDevice(const ConstStridedView& src, int dst_device,
                                           const StridedView& dst, bool pinned) {
  ASARRAY_RETURN_IF_ERROR(CheckCastViews(src.layout, dst.layout));
  ASARRAY_ASSIGN_OR_RETURN(const int64_t numel, NumElements(src.layout.shape));
  if (numel == 0) return absl::OkStatus();
  DeviceScope scope(dst_device);
  ASARRAY_RETURN_IF_ERROR(scope.status());
  ASARRAY_ASSIGN_OR_RETURN(const ByteRange range, RangeOf(src.layout, src.dtype));
  const unsigned char* host = static_cast<const unsigned char*>(src.base) + range.begin;
  const uint64_t bytes = range.end - range.begin;
  if (SameBytes(src.dtype, src.layout, dst.dtype, dst.layout)) {
    ASARRAY_RETURN_IF_ERROR(impl_->HostToDevice(ElementZero(dst), host, bytes, pinned));
    return Synchronize("copying to the device");
  }
  // The source's bytes go over as they are, and the cast runs on the device.
  ScratchBuffer staged;
  ASARRAY_RETURN_IF_ERROR(staged.Allocate(bytes));
  ASARRAY_RETURN_IF_ERROR(impl_->HostToDevice(staged.data(), host, bytes, pinned));
  const unsigned char* src0 = ElementZeroIn(staged.data(), src.layout, src.dtype, range);
  ASARRAY_RETURN_IF_ERROR(
      LaunchWholeCast(src.dtype, src0, dst.dtype, ElementZero(dst), src.layout, dst.layout));
  return Synchronize("casting on the device");
}

absl::Status CudaBackend::CastDeviceToHost(int src_device, const ConstStridedView& src,
                                           const StridedView& dst) {
  ASARRAY_RETURN_IF_ERROR(CheckCastViews(src.layout, dst.layout));
  ASARRAY_ASSIGN_OR_RETURN(const int64_t numel, NumElements(src.layout.shape));
  if (numel == 0) return absl::OkStatus();
  DeviceScope scope(src_device);
  ASARRAY_RETURN_IF_ERROR(scope.status());
  ASARRAY_ASSIGN_OR_RETURN(const ByteRange range, RangeOf(dst.layout, dst.dtype));
  unsigned char* host = static_cast<unsigned char*>(dst.base) + range.begin;
  const uint64_t bytes = range.end - range.begin;
  if (SameBytes(src.dtype, src.layout, dst.dtype, dst.layout)) {
    ASARRAY_RETURN_IF_ERROR(impl_->DeviceToHost(host, ElementZero(src), bytes));
    return Synchronize("copying from the device");
  }
  if (!IsNonOverlappingAndDense(dst.layout.shape, dst.layout.strides)) {
    return absl::InvalidArgumentError("a cast out of a device needs a dense host destination");
  }
  // Cast on the device into the destination's layout, then copy that over.
  ScratchBuffer cast;
  ASARRAY_RETURN_IF_ERROR(CastIntoScratch(src, dst, range, &cast));
  ASARRAY_RETURN_IF_ERROR(impl_->DeviceToHost(host, cast.data(), bytes));
  return Synchronize("copying from the device");
}

absl::Status CudaBackend::CastDeviceToDevice(int src_device, const ConstStridedView& src,
                                             int dst_device, const StridedView& dst) {
  ASARRAY_RETURN_IF_ERROR(CheckCastViews(src.layout, dst.layout));
  ASARRAY_ASSIGN_OR_RETURN(const int64_t numel, NumElements(src.layout.shape));
  if (numel == 0) return absl::OkStatus();
  DeviceScope scope(src_device);
  ASARRAY_RETURN_IF_ERROR(scope.status());
  if (src_device == dst_device) {
    ASARRAY_RETURN_IF_ERROR(LaunchWholeCast(src.dtype, ElementZero(src), dst.dtype,
                                            ElementZero(dst), src.layout, dst.layout));
    return Synchronize("casting on the device");
  }
  if (!IsNonOverlappingAndDense(dst.layout.shape, dst.layout.strides)) {
    return absl::InvalidArgumentError("a copy between devices needs a dense destination");
  }
  // Cast on the source device into the destination's layout, then one peer copy.
  ASARRAY_ASSIGN_OR_RETURN(const ByteRange range, RangeOf(dst.layout, dst.dtype));
  const uint64_t bytes = range.end - range.begin;
  ScratchBuffer cast;
  ASARRAY_RETURN_IF_ERROR(CastIntoScratch(src, dst, range, &cast));
  ASARRAY_CUDA_RETURN_IF_ERROR(
      cudaMemcpyPeerAsync(static_cast<unsigned char*>(dst.base) + range.begin, dst_device,
                          cast.data(), src_device, bytes, Stream()),
      absl::StrCat("copying from cuda:", src_device, " to cuda:", dst_device));
  return Synchronize("copying between devices");
}

absl::Status CudaBackend::CopyRowMajorRangeToHost(int device, const ConstStridedView& src,
                                                  int64_t begin, int64_t count, void* dst) {
  // count * item_size <= nbytes, which the checked sizes bound.
  ASARRAY_ASSIGN_OR_RETURN(const ViewSizes sizes,
                           ComputeViewSizes(src.layout, ItemSize(src.dtype)));
  const int64_t numel = sizes.numel;
  if (begin < 0 || count < 0 || begin > numel || count > numel - begin) {
    return absl::InvalidArgumentError(absl::StrCat("element range [", begin, ", ", begin, " + ",
                                                   count, ") is outside [0, ", numel, ")"));
  }
  if (count == 0) return absl::OkStatus();
  DeviceScope scope(device);
  ASARRAY_RETURN_IF_ERROR(scope.status());
  const uint64_t item = ItemSize(src.dtype);
  const uint64_t bytes = static_cast<uint64_t>(count) * item;
  if (IsContiguous(src.layout.shape, src.layout.strides)) {
    ASARRAY_RETURN_IF_ERROR(impl_->DeviceToHost(dst, ElementZero(src) + begin * item, bytes));
    return Synchronize("copying from the device");
  }
  ScratchBuffer gathered;
  ASARRAY_RETURN_IF_ERROR(gathered.Allocate(bytes));
  const Layout row_major{src.layout.shape, ContiguousStrides(src.layout.shape), 0};
  ASARRAY_CUDA_RETURN_IF_ERROR(
      LaunchCast(src.dtype, ElementZero(src), src.dtype, gathered.data(),
                 MakeCopyLoop(src.layout, row_major), begin, count, begin, Stream()),
      "launching the gather kernel");
  ASARRAY_RETURN_IF_ERROR(impl_->DeviceToHost(dst, gathered.data(), bytes));
  return Synchronize("copying from the device");
}

CudaStats CudaBackend::Stats() const {
  CudaStats s;
  s.devices = impl_->device_count;
  s.allocations = impl_->counters->allocations.load();
  s.bytes = impl_->counters->bytes.load();
  s.ipc_opened = impl_->counters->ipc_opened.load();
  s.pinned_bytes = impl_->counters->pinned_bytes.load();
  return s;
}

}  // namespace asarray::server
