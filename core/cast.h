// Copies a strided view into another view of the same shape, converting each
// element with core/element_convert.h. The destination may have any
// non-overlapping layout; large copies are split across threads.
#ifndef ASARRAY_CORE_CAST_H_
#define ASARRAY_CORE_CAST_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "core/dtype.h"
#include "core/layout.h"

namespace asarray {

// `base` is the start of the storage; the layout's offset and strides, in
// elements, locate the view inside it.
struct ConstStridedView {
  const void* base = nullptr;
  DType dtype = DType::kFloat32;
  Layout layout;
};

struct StridedView {
  void* base = nullptr;
  DType dtype = DType::kFloat32;
  Layout layout;
};

// One dimension of a copy loop: its size, and its strides in elements in the
// source and the destination.
struct LoopDim {
  int64_t size;
  int64_t src;
  int64_t dst;
};

// The loop that copies `src` into `dst` (same shape): size-1 dims dropped,
// the rest ordered by destination stride, outermost first, so that writes
// go through memory in order, and dims merged where they form one run in
// both. Empty for a single element. The CPU loops and the CUDA kernels both
// iterate over it; its linear index is row-major over these dims.
std::vector<LoopDim> MakeCopyLoop(const Layout& src, const Layout& dst);

// What CastCopy checks before it copies: INVALID_ARGUMENT when the shapes
// differ or the destination overlaps itself.
absl::Status CheckCastViews(const Layout& src, const Layout& dst);

// Writes Convert(src[i]) to dst[i] for every index i.
// REQUIRES: both layouts pass ValidateLayout and lie inside their storage;
// the destination's memory does not overlap the source's.
// INVALID_ARGUMENT when the shapes differ or the destination overlaps itself
// (a zero stride on a dimension of size > 1, or any overlap torch would reject).
absl::Status CastCopy(const ConstStridedView& src, const StridedView& dst);

// Copies the elements [begin, begin + count) of `src`, in row-major order, to
// the contiguous buffer `dst` (count * item size bytes), keeping the dtype.
// For streaming a strided tensor out in bounded pieces.
// REQUIRES: as CastCopy; 0 <= begin, begin + count <= numel.
absl::Status CopyRowMajorRange(const ConstStridedView& src, int64_t begin, int64_t count,
                               void* dst);

// Whether casting `from` into `to` discards information torch warns about
// (complex into a real dtype).
bool CastDiscardsImaginary(DType from, DType to);

}  // namespace asarray

#endif  // ASARRAY_CORE_CAST_H_
