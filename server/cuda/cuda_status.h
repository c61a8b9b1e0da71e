// The one place where CUDA runtime errors become absl::Status. Every CUDA
// call and every kernel launch in the backend goes through
// ASARRAY_CUDA_RETURN_IF_ERROR.
#ifndef ASARRAY_SERVER_CUDA_CUDA_STATUS_H_
#define ASARRAY_SERVER_CUDA_CUDA_STATUS_H_

#include <cuda_runtime_api.h>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace asarray::server {

// OK for cudaSuccess. Otherwise "<what>: <CUDA's message> (<error name>)",
// with a code that says whose problem it is: RESOURCE_EXHAUSTED when device
// or pinned memory runs out, FAILED_PRECONDITION when the driver or the
// device is unusable, INVALID_ARGUMENT for a device the host lacks, INTERNAL
// for the rest. Clears the error, unless it is sticky (the context is lost).
absl::Status CudaStatus(cudaError_t error, absl::string_view what);

}  // namespace asarray::server

#define ASARRAY_CUDA_RETURN_IF_ERROR(expr, what)                         \
  do {                                                                   \
    const cudaError_t asarray_cuda_error_ = (expr);                      \
    if (asarray_cuda_error_ != cudaSuccess) {                            \
      return ::asarray::server::CudaStatus(asarray_cuda_error_, (what)); \
    }                                                                    \
  } while (false)

#endif  // ASARRAY_SERVER_CUDA_CUDA_STATUS_H_
