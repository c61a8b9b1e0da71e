#include "client/cuda_ipc.h"

#include <cuda_runtime_api.h>

#include <cstring>

#include "absl/strings/str_cat.h"

namespace asarray {
namespace {

absl::Status Failed(cudaError_t error, absl::string_view what,
                    absl::StatusCode code = absl::StatusCode::kInternal) {
  cudaGetLastError();
  return absl::Status(code, absl::StrCat(what, ": ", cudaGetErrorString(error), " (",
                                         cudaGetErrorName(error), ")"));
}

absl::Status SelectDevice(int device) {
  const cudaError_t error = cudaSetDevice(device);
  if (error == cudaSuccess) return absl::OkStatus();
  return Failed(error, absl::StrCat("selecting cuda:", device),
                absl::StatusCode::kFailedPrecondition);
}

absl::Status Copy(void* dst, const void* src, uint64_t bytes, cudaMemcpyKind kind) {
  const cudaError_t error = cudaMemcpy(dst, src, bytes, kind);
  return error == cudaSuccess ? absl::OkStatus() : Failed(error, "copying device memory");
}

absl::Status CheckRange(uint64_t from, uint64_t bytes, uint64_t size) {
  if (from > size || bytes > size - from) {
    return absl::OutOfRangeError(
        absl::StrCat("bytes [", from, ", ", from + bytes, ") lie outside ", size));
  }
  return absl::OkStatus();
}

}  // namespace

bool ClientHasCuda() { return true; }

absl::StatusOr<std::unique_ptr<CudaIpcMapping>> CudaIpcMapping::Open(const std::string& handle,
                                                                     int device, uint64_t offset,
                                                                     uint64_t size) {
  if (handle.size() != sizeof(cudaIpcMemHandle_t)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a CUDA IPC handle holds ", sizeof(cudaIpcMemHandle_t), " bytes, not ", handle.size()));
  }
  if (absl::Status s = SelectDevice(device); !s.ok()) return s;
  cudaIpcMemHandle_t h;
  std::memcpy(&h, handle.data(), sizeof h);
  void* base = nullptr;
  const cudaError_t error = cudaIpcOpenMemHandle(&base, h, cudaIpcMemLazyEnablePeerAccess);
  if (error != cudaSuccess) {
    return Failed(error, absl::StrCat("opening a CUDA IPC handle on cuda:", device),
                  absl::StatusCode::kInvalidArgument);
  }
  return std::unique_ptr<CudaIpcMapping>(new CudaIpcMapping(base, device, offset, size));
}

CudaIpcMapping::~CudaIpcMapping() {
  cudaSetDevice(device_);
  cudaIpcCloseMemHandle(base_);
}

absl::Status CudaIpcMapping::CopyToHost(uint64_t from, uint64_t bytes, void* dst) const {
  if (absl::Status s = CheckRange(from, bytes, size_); !s.ok()) return s;
  if (bytes == 0) return absl::OkStatus();
  if (absl::Status s = SelectDevice(device_); !s.ok()) return s;
  return Copy(dst, static_cast<const unsigned char*>(data()) + from, bytes, cudaMemcpyDeviceToHost);
}

absl::StatusOr<std::unique_ptr<DeviceRegion>> DeviceRegion::Create(int device, uint64_t bytes) {
  if (absl::Status s = SelectDevice(device); !s.ok()) return s;
  void* data = nullptr;
  cudaError_t error = cudaMalloc(&data, bytes == 0 ? 1 : bytes);
  if (error != cudaSuccess) {
    return Failed(error, absl::StrCat("allocating ", bytes, " bytes on cuda:", device),
                  absl::StatusCode::kResourceExhausted);
  }
  cudaIpcMemHandle_t h;
  error = cudaIpcGetMemHandle(&h, data);
  if (error != cudaSuccess) {
    cudaFree(data);
    return Failed(error, "exporting an IPC handle");
  }
  return std::unique_ptr<DeviceRegion>(new DeviceRegion(
      data, device, bytes, std::string(reinterpret_cast<const char*>(&h), sizeof h)));
}

DeviceRegion::~DeviceRegion() {
  cudaSetDevice(device_);
  cudaFree(data_);
}

absl::Status DeviceRegion::CopyFromHost(const void* src, uint64_t bytes, uint64_t to) {
  if (absl::Status s = CheckRange(to, bytes, size_); !s.ok()) return s;
  if (bytes == 0) return absl::OkStatus();
  if (absl::Status s = SelectDevice(device_); !s.ok()) return s;
  return Copy(static_cast<unsigned char*>(data_) + to, src, bytes, cudaMemcpyHostToDevice);
}

absl::Status DeviceRegion::CopyToHost(uint64_t from, uint64_t bytes, void* dst) const {
  if (absl::Status s = CheckRange(from, bytes, size_); !s.ok()) return s;
  if (bytes == 0) return absl::OkStatus();
  if (absl::Status s = SelectDevice(device_); !s.ok()) return s;
  return Copy(dst, static_cast<const unsigned char*>(data_) + from, bytes, cudaMemcpyDeviceToHost);
}

}  // namespace asarray
