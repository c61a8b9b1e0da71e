// NumPy .npy files: versions 1.0, 2.0 and 3.0, little-endian, C or Fortran
// order. bfloat16, which NumPy lacks, is stored as '<u2' holding the raw 16
// bits, and a '<u2' file reads back as bfloat16 (asarrayd has no uint16).
// Pure functions; thread-safe.
#ifndef ASARRAY_CLIENT_NPY_H_
#define ASARRAY_CLIENT_NPY_H_

#include <cstddef>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/dtype.h"
#include "core/layout.h"

namespace asarray {

struct NpyHeader {
  DType dtype = DType::kFloat32;
  Layout layout;           // row-major, or column-major for Fortran order
  size_t data_offset = 0;  // where the elements start in the file
  size_t data_bytes = 0;   // numel * item size
};

// Parses the header at the start of `file` (the whole file, or at least its
// header). INVALID_ARGUMENT says what is wrong: not .npy, an unsupported
// version, big-endian data, an object or other unsupported dtype, or a
// malformed header. The caller checks that data_bytes follow data_offset.
absl::StatusOr<NpyHeader> ParseNpyHeader(absl::string_view file);

// A version 1.0 .npy image of a row-major array.
absl::StatusOr<std::string> EncodeNpy(DType dtype, const Dims& shape, absl::string_view data);

}  // namespace asarray

#endif  // ASARRAY_CLIENT_NPY_H_
