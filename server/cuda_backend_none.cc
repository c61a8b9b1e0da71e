// CudaBackend for builds without the CUDA toolkit: there is never a device,
// and every device request says so.
#include "absl/strings/str_cat.h"
#include "server/cuda_backend.h"

namespace asarray::server {

struct CudaBackend::Impl {};

namespace {

absl::Status NoBackend(const std::string& device = "") {
  return absl::FailedPreconditionError(absl::StrCat(
      "no CUDA device is available", device.empty() ? "" : " for ", device,
      ": this server was built without the CUDA backend (configure with -DASARRAY_CUDA=ON on "
      "a machine with the CUDA toolkit)"));
}

}  // namespace

CudaBackend::CudaBackend(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
CudaBackend::~CudaBackend() = default;

std::unique_ptr<CudaBackend> CudaBackend::Create() {
  return std::unique_ptr<CudaBackend>(new CudaBackend(std::make_unique<Impl>()));
}

bool CudaBackend::Compiled() { return false; }
int CudaBackend::device_count() const { return 0; }
std::string CudaBackend::Describe() const { return "CUDA: not built"; }

absl::Status CudaBackend::CheckDevice(const Device& device) const {
  if (device.type == Device::Type::kCPU) return absl::OkStatus();
  return NoBackend(DeviceName(device));
}

absl::StatusOr<std::shared_ptr<DeviceMemory>> CudaBackend::Allocate(int, uint64_t) {
  return NoBackend();
}

absl::StatusOr<std::shared_ptr<DeviceMemory>> CudaBackend::OpenIpc(const std::string&, int,
                                                                   uint64_t, uint64_t) {
  return NoBackend();
}

absl::StatusOr<std::shared_ptr<void>> CudaBackend::PinHost(void*, uint64_t) { return NoBackend(); }

absl::Status CudaBackend::CastHostToDevice(const ConstStridedView&, int, const StridedView&, bool) {
  return NoBackend();
}

absl::Status CudaBackend::CastDeviceToHost(int, const ConstStridedView&, const StridedView&) {
  return NoBackend();
}

absl::Status CudaBackend::CastDeviceToDevice(int, const ConstStridedView&, int,
                                             const StridedView&) {
  return NoBackend();
}

absl::Status CudaBackend::CopyRowMajorRangeToHost(int, const ConstStridedView&, int64_t, int64_t,
                                                  void*) {
  return NoBackend();
}

CudaStats CudaBackend::Stats() const { return {}; }

}  // namespace asarray::server
