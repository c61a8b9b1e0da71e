// CudaIpcMapping and DeviceRegion for clients built without CUDA.
#include "client/cuda_ipc.h"

namespace asarray {
namespace {

absl::Status NoCuda() {
  return absl::FailedPreconditionError(
      "this client was built without CUDA, so it cannot open CUDA IPC handles; read the "
      "tensor's bytes over gRPC instead");
}

}  // namespace

bool ClientHasCuda() { return false; }

absl::StatusOr<std::unique_ptr<CudaIpcMapping>> CudaIpcMapping::Open(const std::string&, int,
                                                                     uint64_t, uint64_t) {
  return NoCuda();
}
CudaIpcMapping::~CudaIpcMapping() = default;
absl::Status CudaIpcMapping::CopyToHost(uint64_t, uint64_t, void*) const { return NoCuda(); }

absl::StatusOr<std::unique_ptr<DeviceRegion>> DeviceRegion::Create(int, uint64_t) {
  return NoCuda();
}
DeviceRegion::~DeviceRegion() = default;
absl::Status DeviceRegion::CopyFromHost(const void*, uint64_t, uint64_t) { return NoCuda(); }
absl::Status DeviceRegion::CopyToHost(uint64_t, uint64_t, void*) const { return NoCuda(); }

}  // namespace asarray
