// Strided layouts as torch describes them: shape, strides in elements and a
// storage offset in elements. Every computation here is overflow-checked, so
// any input, however hostile, yields either a correct answer or
// INVALID_ARGUMENT. Pure functions; thread-safe.
#ifndef ASARRAY_CORE_LAYOUT_H_
#define ASARRAY_CORE_LAYOUT_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace asarray {

// torch itself allows more, but no real array needs more dimensions, and a
// bound keeps every per-dimension loop and buffer small.
inline constexpr int kMaxRank = 64;

using Dims = std::vector<int64_t>;

struct Layout {
  Dims shape;
  Dims strides;        // in elements; may be zero or negative
  int64_t offset = 0;  // in elements, from the start of the storage

  friend bool operator==(const Layout& a, const Layout& b) {
    return a.shape == b.shape && a.strides == b.strides && a.offset == b.offset;
  }
};

// "[2, 3]" for messages.
std::string DimsToString(absl::Span<const int64_t> dims);

// Product of the sizes; INVALID_ARGUMENT on a negative size or overflow.
absl::StatusOr<int64_t> NumElements(absl::Span<const int64_t> shape);

// Checks rank, sizes, offset, and that every element index the view can reach
// is representable, so later arithmetic on this layout cannot overflow.
absl::Status ValidateLayout(const Layout& layout);

// The bytes a view touches, relative to the start of its storage: [begin, end).
// begin is negative when negative strides reach before the storage. An empty
// view touches nothing and yields {0, 0}.
struct ByteRange {
  int64_t begin = 0;
  int64_t end = 0;
};
absl::StatusOr<ByteRange> ComputeByteRange(const Layout& layout, size_t item_size);

// Every size of a view of `item_size`-byte elements, each overflow-checked.
// This is the one way a layout becomes byte counts: the element count, the
// bytes it touches in its storage, and the bytes of its elements when dense.
struct ViewSizes {
  int64_t numel = 0;   // product of the shape
  ByteRange extent;    // as ComputeByteRange
  int64_t nbytes = 0;  // numel * item_size: the bytes a dense copy takes
};
// INVALID_ARGUMENT for a layout ValidateLayout refuses or whose extent does
// not fit int64 (no storage could hold it); RESOURCE_EXHAUSTED for a valid
// view (a broadcast, say) whose nbytes would not fit int64.
absl::StatusOr<ViewSizes> ComputeViewSizes(const Layout& layout, size_t item_size);

// How many bytes before its storage a range that starts before it reaches:
// -begin, which as int64 would overflow for a begin of INT64_MIN.
inline uint64_t BytesBefore(const ByteRange& range) {
  return range.begin < 0 ? uint64_t{0} - static_cast<uint64_t>(range.begin) : 0;
}

// Checks that a view of `item_size`-byte elements lies within a storage of
// `storage_bytes`; OUT_OF_RANGE-style problems are INVALID_ARGUMENT with the
// numbers in the message.
absl::Status CheckFitsStorage(const Layout& layout, size_t item_size, int64_t storage_bytes);

// Row-major strides for `shape` (torch's contiguous strides; size-0/1 dims get
// the stride they would have with size 1).
Dims ContiguousStrides(absl::Span<const int64_t> shape);

// torch's TensorImpl::is_contiguous.
bool IsContiguous(absl::Span<const int64_t> shape, absl::Span<const int64_t> strides);

// torch's is_non_overlapping_and_dense: the elements fill a block of exactly
// numel slots, in some dimension order.
bool IsNonOverlappingAndDense(absl::Span<const int64_t> shape, absl::Span<const int64_t> strides);

bool HasNegativeStride(absl::Span<const int64_t> strides);

// torch's infer_dense_strides: dense strides that keep the input's dimension
// order (stride-0 dimensions stay where a contiguous tensor has them).
Dims DenseStridesLike(absl::Span<const int64_t> shape, absl::Span<const int64_t> strides);

// torch's rule for the strides of a copy with preserved memory format: a
// non-overlapping and dense input keeps its strides, any other input gets
// DenseStridesLike.
Dims CopyStrides(absl::Span<const int64_t> shape, absl::Span<const int64_t> strides);

}  // namespace asarray

#endif  // ASARRAY_CORE_LAYOUT_H_
