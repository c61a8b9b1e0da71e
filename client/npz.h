// NumPy .npz archives: a zip of .npy members, one per array, named KEY.npy.
// np.savez stores the members, np.savez_compressed deflates them; both are
// read. Members are written stored (uncompressed), each a version 1.0 .npy
// (EncodeNpy), which np.load reads. The zip format itself is libzip's.
// Thread-safe: every call works on its own archive.
#ifndef ASARRAY_CLIENT_NPZ_H_
#define ASARRAY_CLIENT_NPZ_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/npy.h"
#include "core/dtype.h"
#include "core/layout.h"

namespace asarray {

// One array of an archive.
struct NpzMember {
  std::string name;  // the key np.load gives: the member's file name less ".npy"
  NpyHeader header;  // its data_offset is into `npy`
  std::string npy;   // the member's whole .npy image, header included

  // The elements, in the header's layout (row- or column-major).
  absl::string_view data() const {
    return absl::string_view(npy).substr(header.data_offset, header.data_bytes);
  }
};

// What a reader takes in at most. Every member is inflated into memory, so
// the declared (uncompressed) sizes are checked against these before any is
// read, and a member's data may not run past the size it declares.
struct NpzLimits {
  // All members' uncompressed bytes together.
  uint64_t max_bytes = uint64_t{32} << 30;  // 32 GiB
  size_t max_members = 65536;
};

// Deflate cannot shrink data by more than about 1032 to 1, so a deflated
// member declaring more than this many times its compressed size (beyond a
// little slack for tiny members) is not a real one.
inline constexpr uint64_t kNpzMaxDeflateRatio = 1100;

// The members of the .npz at `path`, in archive order. NOT_FOUND when the
// file cannot be opened. INVALID_ARGUMENT, prefixed with the path and
// naming the member, for: a file that is not a zip archive, a member whose
// name does not end in ".npy" (or is nothing else), a name given twice, an
// encrypted member or one compressed other than stored or deflated, a
// declared size past the limits or past what its compressed size can hold,
// data that inflates to fewer or more bytes than declared or fails its CRC,
// a header ParseNpyHeader refuses, and data shorter or longer than the
// header declares. An empty archive has no members.
absl::StatusOr<std::vector<NpzMember>> ReadNpz(const std::string& path,
                                               const NpzLimits& limits = {});
// The same for an archive in memory; messages begin with "member 'NAME'".
absl::StatusOr<std::vector<NpzMember>> ReadNpzBytes(absl::string_view archive,
                                                    const NpzLimits& limits = {});

// One array to write: `data` holds its elements row-major, and must stay
// valid until WriteNpz returns.
struct NpzArray {
  std::string name;  // the key; the member is NAME.npy
  DType dtype = DType::kFloat32;
  Dims shape;
  absl::string_view data;
};

// Writes `arrays` as the .npz at `path`, replacing any file there: the
// archive is written to a new file beside it and renamed into place, so a
// failure leaves `path` as it was and nothing half-written. INVALID_ARGUMENT
// (nothing written) for no arrays, an empty or repeated name, or data whose
// size is not the shape's; PERMISSION_DENIED, with libzip's or the
// system's reason, when the file cannot be written.
absl::Status WriteNpz(const std::string& path, const std::vector<NpzArray>& arrays);

}  // namespace asarray

#endif  // ASARRAY_CLIENT_NPZ_H_
