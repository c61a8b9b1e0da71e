// CUDA memory across processes, for clients: a handle's allocation opened in
// this process, and an allocation of this process's exported for the server
// to read or alias. Built on the CUDA runtime when the client library has
// the CUDA backend; otherwise every call fails with FAILED_PRECONDITION.
// Same-process IPC is not valid CUDA: open only handles another process
// exported. Each object owns exactly one opened handle or allocation and
// closes or frees it on destruction. Used by one thread at a time.
#ifndef ASARRAY_CLIENT_CUDA_IPC_H_
#define ASARRAY_CLIENT_CUDA_IPC_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace asarray {

// Whether this client can open CUDA IPC handles (built with CUDA).
bool ClientHasCuda();

// The range [offset, offset + size) of another process's allocation, opened
// with cudaIpcOpenMemHandle and closed with cudaIpcCloseMemHandle.
class CudaIpcMapping {
 public:
  // `handle`: the 64 bytes of a cudaIpcMemHandle_t; `device`: the ordinal it
  // lives on. INVALID_ARGUMENT when the handle cannot be opened.
  static absl::StatusOr<std::unique_ptr<CudaIpcMapping>> Open(const std::string& handle, int device,
                                                              uint64_t offset, uint64_t size);
  ~CudaIpcMapping();
  CudaIpcMapping(const CudaIpcMapping&) = delete;
  CudaIpcMapping& operator=(const CudaIpcMapping&) = delete;

  // Device pointer of byte `offset` of the allocation.
  void* data() const { return static_cast<unsigned char*>(base_) + offset_; }
  uint64_t size() const { return size_; }
  int device() const { return device_; }
  // Copies `bytes` from data() + `from` into host memory.
  absl::Status CopyToHost(uint64_t from, uint64_t bytes, void* dst) const;

 private:
  CudaIpcMapping(void* base, int device, uint64_t offset, uint64_t size)
      : base_(base), device_(device), offset_(offset), size_(size) {}
  void* base_;
  int device_;
  uint64_t offset_;
  uint64_t size_;
};

// An allocation this process makes on `device` and exports: its IPC handle
// goes into a CudaIpcArray source. Freed on destruction; the server must be
// done with it first (release the tensors that alias it).
class DeviceRegion {
 public:
  static absl::StatusOr<std::unique_ptr<DeviceRegion>> Create(int device, uint64_t bytes);
  ~DeviceRegion();
  DeviceRegion(const DeviceRegion&) = delete;
  DeviceRegion& operator=(const DeviceRegion&) = delete;

  void* data() const { return data_; }
  uint64_t size() const { return size_; }
  int device() const { return device_; }
  const std::string& ipc_handle() const { return handle_; }
  absl::Status CopyFromHost(const void* src, uint64_t bytes, uint64_t to = 0);
  absl::Status CopyToHost(uint64_t from, uint64_t bytes, void* dst) const;

 private:
  DeviceRegion(void* data, int device, uint64_t size, std::string handle)
      : data_(data), device_(device), size_(size), handle_(std::move(handle)) {}
  void* data_;
  int device_;
  uint64_t size_;
  std::string handle_;
};

}  // namespace asarray

#endif  // ASARRAY_CLIENT_CUDA_IPC_H_
