// The CUDA backend behind an interface that needs no CUDA header: device
// discovery, device allocations exported by IPC handle, client allocations
// opened by IPC handle, and casts between host and device memory in every
// direction. Built from server/cuda/ when the toolkit is found
// (-DASARRAY_CUDA=AUTO|ON); otherwise server/cuda_backend_none.cc provides
// the same class, which reports that no device is available.
//
// Every CUDA error becomes an absl::Status in server/cuda/cuda_status.h, the
// one place that maps them. Every call is synchronous: when it returns, the
// work it started on the device is complete (the calling thread's stream is
// synchronized), so a handle is never returned before its bytes are written.
// Thread-safe.
#ifndef ASARRAY_SERVER_CUDA_BACKEND_H_
#define ASARRAY_SERVER_CUDA_BACKEND_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "core/cast.h"
#include "core/plan.h"

namespace asarray::server {

// The 64 bytes of a cudaIpcMemHandle_t.
inline constexpr size_t kCudaIpcHandleBytes = 64;

// Device memory a tensor lives in: a whole allocation of the server's own
// (one cudaMalloc per tensor, never shared with another tensor), or a range
// of a client's allocation opened by IPC handle. Owns the allocation or the
// opened handle, and frees or closes it on destruction.
class DeviceMemory {
 public:
  virtual ~DeviceMemory() = default;
  // Device pointer of the storage; null when size() is 0.
  virtual void* data() const = 0;
  // Bytes of storage from data().
  virtual uint64_t size() const = 0;
  virtual int device() const = 0;
  // The IPC handle of the allocation that holds the storage, and the byte
  // offset of data() within it: what a client opens.
  virtual const std::string& ipc_handle() const = 0;
  virtual uint64_t offset_in_allocation() const = 0;
  // Whether the server allocated it (a client's allocation when false).
  virtual bool server_owned() const = 0;
};

struct CudaStats {
  int devices = 0;
  uint64_t allocations = 0;   // live allocations of the server's
  uint64_t bytes = 0;         // bytes they hold (rounded to 2 MiB each)
  uint64_t ipc_opened = 0;    // client allocations open for aliasing or reading
  uint64_t pinned_bytes = 0;  // host memory page-locked by PinHost
};

class CudaBackend {
 public:
  // Probes the driver and the devices. Never fails: without a usable device
  // every call fails with FAILED_PRECONDITION that says why.
  static std::unique_ptr<CudaBackend> Create();
  ~CudaBackend();
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  // Whether this build has the backend at all.
  static bool Compiled();
  int device_count() const;
  // One line for logs: the devices, or why there are none.
  std::string Describe() const;

  // OK for the CPU and for an existing device. FAILED_PRECONDITION when no
  // device is available (with the reason), INVALID_ARGUMENT for an ordinal
  // this host does not have.
  absl::Status CheckDevice(const Device& device) const;

  // A fresh allocation of at least `bytes` (rounded up to 2 MiB) on `device`.
  // RESOURCE_EXHAUSTED when the device is out of memory.
  absl::StatusOr<std::shared_ptr<DeviceMemory>> Allocate(int device, uint64_t bytes);

  // Opens a client's allocation by its IPC handle (64 bytes) on `device`, and
  // takes [offset, offset + size) of it. INVALID_ARGUMENT when the handle
  // cannot be opened or the range does not fit the allocation. A handle that
  // is already open is shared, not opened twice.
  absl::StatusOr<std::shared_ptr<DeviceMemory>> OpenIpc(const std::string& handle, int device,
                                                        uint64_t offset, uint64_t size);

  // Page-locks `bytes` of host memory at `data` (cudaHostRegister) so that
  // copies to a device read it directly, without staging. The token undoes
  // it when destroyed, which must happen before the memory is unmapped.
  // RESOURCE_EXHAUSTED past the backend's limit on pinned bytes.
  absl::StatusOr<std::shared_ptr<void>> PinHost(void* data, uint64_t bytes);

  // Writes Convert(src[i]) into dst[i] for every index i, with the same
  // per-element conversion as the CPU (core/element_convert.h). Views are as
  // in core/cast.h; a device view's base is a device pointer on `*_device`.
  // The source bytes go to the device first, straight from `src` when it is
  // `pinned` (PinHost), through pinned staging buffers otherwise, and are
  // cast there.
  absl::Status CastHostToDevice(const ConstStridedView& src, int dst_device, const StridedView& dst,
                                bool pinned = false);
  // Casts on the source device, then copies into host memory.
  absl::Status CastDeviceToHost(int src_device, const ConstStridedView& src,
                                const StridedView& dst);
  // Same device: one cast kernel. Another device: cast on the source device,
  // then a peer copy.
  absl::Status CastDeviceToDevice(int src_device, const ConstStridedView& src, int dst_device,
                                  const StridedView& dst);
  // Elements [begin, begin + count) of a device view, row-major, into the
  // host buffer `dst` (count * item size bytes). For streaming a tensor out.
  absl::Status CopyRowMajorRangeToHost(int device, const ConstStridedView& src, int64_t begin,
                                       int64_t count, void* dst);

  CudaStats Stats() const;

  struct Impl;

 private:
  explicit CudaBackend(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_CUDA_BACKEND_H_
