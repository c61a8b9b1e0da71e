#include "core/layout.h"

#include <algorithm>
#include <numeric>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "core/checked_math.h"

namespace asarray {

std::string DimsToString(absl::Span<const int64_t> dims) {
  std::string out = "[";
  for (size_t d = 0; d < dims.size(); ++d) {
    if (d > 0) out += ", ";
    // Dims come from requests: a message quotes about 128 bytes of them.
    if (out.size() > 100) {
      absl::StrAppend(&out, "... (", dims.size(), " dims)");
      break;
    }
    absl::StrAppend(&out, dims[d]);
  }
  out += "]";
  return out;
}

absl::StatusOr<int64_t> NumElements(absl::Span<const int64_t> shape) {
  // Exactly: a zero anywhere makes the product 0, however large the rest.
  bool empty = false;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", DimsToString(shape), " has a negative size at dim ", d));
    }
    empty |= shape[d] == 0;
  }
  if (empty) return 0;
  int64_t n = 1;
  for (int64_t size : shape) {
    if (!CheckedMul(n, size, &n)) {
      return absl::InvalidArgumentError(
          absl::StrCat("shape ", DimsToString(shape), " has more elements than int64 holds"));
    }
  }
  return n;
}

namespace {

// Exact intermediates: a product of two int64 values fits, and so does a
// sum of one such product and an int64 value.
__extension__ typedef __int128 Int128;

bool FitsInt64(Int128 v) { return v >= INT64_MIN && v <= INT64_MAX; }

// Lowest and highest element index a non-empty view reaches.
struct ElementBounds {
  int64_t lo;
  int64_t hi;
};

absl::StatusOr<ElementBounds> ComputeElementBounds(const Layout& layout) {
  // lo only falls and hi only rises, each from the offset, so the first
  // partial sum outside int64 settles it, and no sum grows past 2^127.
  Int128 lo = layout.offset, hi = layout.offset;
  for (size_t d = 0; d < layout.shape.size(); ++d) {
    const Int128 reach = Int128{layout.shape[d] - 1} * layout.strides[d];
    (reach < 0 ? lo : hi) += reach;
    if (!FitsInt64(lo) || !FitsInt64(hi)) {
      return absl::InvalidArgumentError(
          absl::StrCat("layout with shape ", DimsToString(layout.shape), ", strides ",
                       DimsToString(layout.strides), " and offset ", layout.offset,
                       " reaches element indices that overflow int64"));
    }
  }
  return ElementBounds{static_cast<int64_t>(lo), static_cast<int64_t>(hi)};
}

}  // namespace

absl::Status ValidateLayout(const Layout& layout) {
  if (layout.shape.size() != layout.strides.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shape ", DimsToString(layout.shape), " has ", layout.shape.size(), " dims but strides ",
        DimsToString(layout.strides), " have ", layout.strides.size()));
  }
  if (layout.shape.size() > static_cast<size_t>(kMaxRank)) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", layout.shape.size(), " exceeds the maximum of ", kMaxRank));
  }
  if (layout.offset < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("storage offset ", layout.offset, " is negative"));
  }
  absl::StatusOr<int64_t> numel = NumElements(layout.shape);
  if (!numel.ok()) return numel.status();
  if (*numel == 0) return absl::OkStatus();
  return ComputeElementBounds(layout).status();
}

absl::StatusOr<ViewSizes> ComputeViewSizes(const Layout& layout, size_t item_size) {
  absl::Status valid = ValidateLayout(layout);
  if (!valid.ok()) return valid;
  if (item_size == 0 || item_size > 16) {
    return absl::InvalidArgumentError(absl::StrCat("item size ", item_size, " is not 1 to 16"));
  }
  ViewSizes sizes;
  sizes.numel = NumElements(layout.shape).value();  // ValidateLayout checked it
  const Int128 item = static_cast<Int128>(item_size);
  if (sizes.numel > 0) {
    const ElementBounds b = ComputeElementBounds(layout).value();
    const Int128 begin = b.lo * item, end = (Int128{b.hi} + 1) * item;
    if (!FitsInt64(begin) || !FitsInt64(end)) {
      return absl::InvalidArgumentError(
          absl::StrCat("layout with shape ", DimsToString(layout.shape), " and strides ",
                       DimsToString(layout.strides), " spans more bytes than int64 holds"));
    }
    sizes.extent = {static_cast<int64_t>(begin), static_cast<int64_t>(end)};
  }
  // A valid view (a broadcast, say) can still have more element bytes than
  // any storage: it cannot be copied, sent, or described by its nbytes.
  const Int128 nbytes = sizes.numel * item;
  if (!FitsInt64(nbytes)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a view with shape ", DimsToString(layout.shape), " has ", sizes.numel,
                     " elements of ", item_size, " bytes: more bytes than int64 holds"));
  }
  sizes.nbytes = static_cast<int64_t>(nbytes);
  return sizes;
}

absl::StatusOr<ByteRange> ComputeByteRange(const Layout& layout, size_t item_size) {
  absl::StatusOr<ViewSizes> sizes = ComputeViewSizes(layout, item_size);
  if (!sizes.ok()) return sizes.status();
  return sizes->extent;
}

absl::Status CheckFitsStorage(const Layout& layout, size_t item_size, int64_t storage_bytes) {
  absl::StatusOr<ByteRange> range = ComputeByteRange(layout, item_size);
  if (!range.ok()) return range.status();
  if (range->begin < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("view with shape ", DimsToString(layout.shape), ", strides ",
                     DimsToString(layout.strides), " and offset ", layout.offset, " starts ",
                     BytesBefore(*range), " bytes before its storage"));
  }
  if (range->end > storage_bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("view with shape ", DimsToString(layout.shape), ", strides ",
                     DimsToString(layout.strides), " and offset ", layout.offset, " needs ",
                     range->end, " bytes but its storage holds ", storage_bytes));
  }
  return absl::OkStatus();
}

Dims ContiguousStrides(absl::Span<const int64_t> shape) {
  Dims strides(shape.size());
  int64_t stride = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    strides[i] = stride;
    // Saturate instead of overflowing: only reachable for empty shapes, whose
    // strides nobody dereferences.
    if (shape[i] > 1 && !CheckedMul(stride, shape[i], &stride)) stride = INT64_MAX;
  }
  return strides;
}

bool IsContiguous(absl::Span<const int64_t> shape, absl::Span<const int64_t> strides) {
  int64_t expected = 1;
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] == 0) return true;
  }
  for (size_t i = shape.size(); i-- > 0;) {
    if (shape[i] == 1) continue;
    if (strides[i] != expected || !CheckedMul(expected, shape[i], &expected)) return false;
  }
  return true;
}

bool IsNonOverlappingAndDense(absl::Span<const int64_t> shape, absl::Span<const int64_t> strides) {
  const size_t rank = shape.size();
  // torch counts every contiguous tensor, empty ones included, as dense.
  if (IsContiguous(shape, strides)) return true;
  if (rank == 1) return shape[0] < 2 || strides[0] == 1;
  std::vector<size_t> perm(rank);
  std::iota(perm.begin(), perm.end(), 0);
  // Size-0 and size-1 dims go last: they constrain nothing.
  std::sort(perm.begin(), perm.end(), [&](size_t a, size_t b) {
    if (shape[a] < 2) return false;
    if (shape[b] < 2) return true;
    return strides[a] < strides[b];
  });
  int64_t required = 1;
  for (size_t i : perm) {
    if (shape[i] < 2) return true;
    if (strides[i] != required || !CheckedMul(required, shape[i], &required)) return false;
  }
  return true;
}

bool HasNegativeStride(absl::Span<const int64_t> strides) {
  return std::any_of(strides.begin(), strides.end(), [](int64_t s) { return s < 0; });
}

Dims DenseStridesLike(absl::Span<const int64_t> shape, absl::Span<const int64_t> strides) {
  const size_t rank = shape.size();
  if (rank == 0) return {};
  if (rank == 1) return {1};
  // perm[0] is the fastest-moving dim. Start from the contiguous order and
  // insertion-sort by stride exactly as torch does: a zero stride compares as
  // "ambiguous" and so never moves, ties go to the smaller size first.
  std::vector<size_t> perm(rank);
  for (size_t i = 0; i < rank; ++i) perm[i] = rank - 1 - i;
  auto should_swap = [&](size_t d0, size_t d1) {
    const int64_t s0 = strides[d0], s1 = strides[d1];
    if (s0 == 0 || s1 == 0) return 0;
    if (s0 < s1) return -1;
    if (s0 > s1) return 1;
    return shape[d0] > shape[d1] ? 1 : 0;
  };
  for (size_t i = 1; i < rank; ++i) {
    size_t d1 = i;
    for (size_t j = 1; j <= i; ++j) {
      const size_t d0 = i - j;
      const int cmp = should_swap(perm[d0], perm[d1]);
      if (cmp > 0) {
        std::swap(perm[d0], perm[d1]);
        d1 = d0;
      } else if (cmp < 0) {
        break;
      }
    }
  }
  Dims out(rank);
  int64_t stride = 1;
  for (size_t idx : perm) {
    out[idx] = stride;
    if (shape[idx] > 1 && !CheckedMul(stride, shape[idx], &stride)) stride = INT64_MAX;
  }
  return out;
}

Dims CopyStrides(absl::Span<const int64_t> shape, absl::Span<const int64_t> strides) {
  if (IsNonOverlappingAndDense(shape, strides)) return Dims(strides.begin(), strides.end());
  return DenseStridesLike(shape, strides);
}

}  // namespace asarray
