// The cast kernels: every element through Convert<To>(from) of
// core/element_convert.h, the same code the CPU loops run, so device results
// are bit-identical to host results for every pair of dtypes.
#ifndef ASARRAY_SERVER_CUDA_CAST_KERNELS_H_
#define ASARRAY_SERVER_CUDA_CAST_KERNELS_H_

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "core/cast.h"
#include "core/dtype.h"

namespace asarray::server {

// Launches, on `stream`, dst[j] = Convert(src[j]) for the elements with
// linear indices [begin, begin + count) of `loop` (core's MakeCopyLoop).
// `src` and `dst` point at element 0 of each view; the destination offset of
// each element is taken relative to `dst_origin` (0 for a whole cast; the
// range's first offset when the destination is a contiguous piece).
// Contiguous, aligned copies take a vectorized kernel. Returns the launch's
// error; the kernel runs asynchronously.
cudaError_t LaunchCast(DType src_dtype, const void* src, DType dst_dtype, void* dst,
                       const std::vector<LoopDim>& loop, int64_t begin, int64_t count,
                       int64_t dst_origin, cudaStream_t stream);

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_CUDA_CAST_KERNELS_H_
