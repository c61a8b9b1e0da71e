#include "client/npz.h"

#include <unistd.h>
#include <zip.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <random>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/checked_math.h"
#include "core/quote.h"
#include "core/status_macros.h"

namespace asarray {
namespace {

constexpr absl::string_view kSuffix = ".npy";
// A deflated member may declare this much beyond kNpzMaxDeflateRatio times
// its compressed size: the fixed cost of a tiny stream.
constexpr uint64_t kDeflateSlack = 1 << 16;

struct ZipDiscard {
  void operator()(zip_t* zip) const { zip_discard(zip); }
};
using ZipPtr = std::unique_ptr<zip_t, ZipDiscard>;
struct ZipFileClose {
  void operator()(zip_file_t* file) const { zip_fclose(file); }
};
using ZipFilePtr = std::unique_ptr<zip_file_t, ZipFileClose>;

// libzip's text for an error (with the system's, where it has one).
std::string ErrorText(zip_error_t* error) {
  std::string text = zip_error_strerror(error);
  zip_error_fini(error);
  return text;
}

// Opens an archive from `source`, which it takes on success. `where` is
// "PATH: " or "".
absl::StatusOr<ZipPtr> OpenArchive(zip_source_t* source, absl::string_view where) {
  zip_stat_t st;
  zip_stat_init(&st);
  if (zip_source_stat(source, &st) == 0 && (st.valid & ZIP_STAT_SIZE) && st.size == 0) {
    // libzip takes an empty file for an empty archive; numpy does not.
    zip_source_free(source);
    return absl::InvalidArgumentError(absl::StrCat(where, "empty, not a zip archive"));
  }
  zip_error_t error;
  zip_error_init(&error);
  zip_t* zip = zip_open_from_source(source, ZIP_RDONLY, &error);
  if (zip == nullptr) {
    zip_source_free(source);
    const int code = zip_error_code_zip(&error);
    const std::string text = ErrorText(&error);
    if (code == ZIP_ER_NOENT || code == ZIP_ER_OPEN) {
      return absl::NotFoundError(absl::StrCat(where, "cannot open: ", text));
    }
    if (code == ZIP_ER_NOZIP) {
      return absl::InvalidArgumentError(absl::StrCat(where, "not a zip archive, as an .npz is"));
    }
    return absl::InvalidArgumentError(absl::StrCat(where, "not a readable zip archive: ", text));
  }
  return ZipPtr(zip);
}

// Reads one member whole, checking it inflates to exactly st.size bytes and
// passes its CRC. `bad` makes the member's error.
template <typename Bad>
absl::StatusOr<std::string> ReadMember(zip_t* zip, const zip_stat_t& st, const Bad& bad) {
  ZipFilePtr file(zip_fopen_index(zip, st.index, 0));
  if (file == nullptr) return bad(absl::StrCat("cannot be opened: ", zip_strerror(zip)));
  std::string bytes(static_cast<size_t>(st.size), '\0');
  uint64_t done = 0;
  while (done < st.size) {
    const zip_int64_t got = zip_fread(file.get(), bytes.data() + done, st.size - done);
    if (got < 0) return bad(absl::StrCat("cannot be read: ", zip_file_strerror(file.get())));
    if (got == 0) {
      return bad(absl::StrCat("holds ", done, " bytes, fewer than the ", st.size,
                              " its zip entry declares"));
    }
    done += static_cast<uint64_t>(got);
  }
  // Reading on to the end checks the CRC, and that nothing follows.
  char extra;
  const zip_int64_t got = zip_fread(file.get(), &extra, 1);
  if (got < 0) return bad(absl::StrCat("cannot be read: ", zip_file_strerror(file.get())));
  if (got > 0) {
    return bad(absl::StrCat("holds more than the ", st.size, " bytes its zip entry declares"));
  }
  return bytes;
}

absl::StatusOr<std::vector<NpzMember>> ReadArchive(zip_t* zip, absl::string_view where,
                                                   const NpzLimits& limits) {
  const zip_int64_t count = zip_get_num_entries(zip, 0);
  if (count < 0) return absl::InternalError(absl::StrCat(where, "cannot count the members"));
  if (static_cast<uint64_t>(count) > limits.max_members) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, "holds ", count, " members, past the limit of ", limits.max_members));
  }
  // Every entry is checked before any is inflated.
  std::vector<zip_stat_t> stats(static_cast<size_t>(count));
  std::vector<NpzMember> members(stats.size());
  absl::flat_hash_set<absl::string_view> names;
  uint64_t total = 0;
  for (size_t i = 0; i < stats.size(); ++i) {
    zip_stat_t& st = stats[i];
    zip_stat_init(&st);
    constexpr zip_uint64_t kNeeded = ZIP_STAT_NAME | ZIP_STAT_INDEX | ZIP_STAT_SIZE |
                                     ZIP_STAT_COMP_SIZE | ZIP_STAT_COMP_METHOD |
                                     ZIP_STAT_ENCRYPTION_METHOD;
    if (zip_stat_index(zip, i, 0, &st) != 0 || (st.valid & kNeeded) != kNeeded) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "member ", i, " has an unreadable zip entry: ", zip_strerror(zip)));
    }
    const absl::string_view name = st.name;
    const auto bad = [&](absl::string_view what) {
      return absl::InvalidArgumentError(absl::StrCat(where, "member ", Quote(name), " ", what));
    };
    if (!absl::EndsWith(name, kSuffix)) {
      return bad("is not a .npy file (np.savez names each array KEY.npy)");
    }
    NpzMember& member = members[i];
    member.name = std::string(name.substr(0, name.size() - kSuffix.size()));
    if (member.name.empty()) return bad("has no key before .npy");
    if (!names.insert(member.name).second) return bad("appears twice in the archive");
    if (st.encryption_method != ZIP_EM_NONE) return bad("is encrypted");
    if (st.comp_method != ZIP_CM_STORE && st.comp_method != ZIP_CM_DEFLATE) {
      return bad(absl::StrCat("is compressed by method ", st.comp_method,
                              "; only stored and deflated members (as np.savez and "
                              "np.savez_compressed write them) are read"));
    }
    if (st.size > limits.max_bytes - total) {
      return bad(absl::StrCat("declares ", st.size, " bytes, which with the ", total,
                              " of the members before it pass the limit of ", limits.max_bytes));
    }
    total += st.size;
    if (st.comp_method == ZIP_CM_STORE && st.size != st.comp_size) {
      return bad(absl::StrCat("is stored in ", st.comp_size, " bytes but declares ", st.size));
    }
    if (st.comp_method == ZIP_CM_DEFLATE && st.size > kDeflateSlack &&
        (st.size - kDeflateSlack) / kNpzMaxDeflateRatio > st.comp_size) {
      return bad(absl::StrCat("declares ", st.size, " bytes deflated into only ", st.comp_size,
                              ", more than deflate can compress (a zip bomb)"));
    }
  }
  for (size_t i = 0; i < stats.size(); ++i) {
    NpzMember& member = members[i];
    const auto bad = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "member ", Quote(stats[i].name), " ", what));
    };
    ASARRAY_ASSIGN_OR_RETURN(member.npy, ReadMember(zip, stats[i], bad));
    absl::StatusOr<NpyHeader> header = ParseNpyHeader(member.npy);
    if (!header.ok()) return bad(absl::StrCat("is ", header.status().message()));
    member.header = *header;
    // ParseNpyHeader leaves data_offset within the image.
    const size_t follow = member.npy.size() - header->data_offset;
    if (follow < header->data_bytes) {
      return bad(absl::StrCat("is truncated: its header declares ", header->data_bytes,
                              " data bytes and ", follow, " follow it"));
    }
    if (follow > header->data_bytes) {
      return bad(absl::StrCat("holds ", follow - header->data_bytes,
                              " bytes past the data its header declares"));
    }
  }
  return members;
}

// Where to write the archive before it is renamed to `path`: a fresh name
// in the same directory.
std::string TemporaryPath(const std::string& path) {
  const size_t slash = path.rfind('/');
  const std::string dir = slash == std::string::npos ? "" : path.substr(0, slash + 1);
  const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
  static thread_local std::mt19937_64 random{std::random_device{}()};
  char suffix[17];
  std::snprintf(suffix, sizeof(suffix), "%016llx", static_cast<unsigned long long>(random()));
  return absl::StrCat(dir, ".", base.substr(0, 64), ".", getpid(), ".", suffix, ".tmp");
}

absl::Status CannotWrite(const std::string& path, absl::string_view why) {
  return absl::PermissionDeniedError(absl::StrCat("cannot write ", path, ": ", why));
}

}  // namespace

absl::StatusOr<std::vector<NpzMember>> ReadNpz(const std::string& path, const NpzLimits& limits) {
  const std::string where = absl::StrCat(path, ": ");
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* source = zip_source_file_create(path.c_str(), 0, -1, &error);
  if (source == nullptr) {
    return absl::NotFoundError(absl::StrCat(where, "cannot open: ", ErrorText(&error)));
  }
  zip_error_fini(&error);
  ASARRAY_ASSIGN_OR_RETURN(const ZipPtr zip, OpenArchive(source, where));
  return ReadArchive(zip.get(), where, limits);
}

absl::StatusOr<std::vector<NpzMember>> ReadNpzBytes(absl::string_view archive,
                                                    const NpzLimits& limits) {
  zip_error_t error;
  zip_error_init(&error);
  zip_source_t* source = zip_source_buffer_create(archive.data(), archive.size(), 0, &error);
  if (source == nullptr) return absl::InternalError(ErrorText(&error));
  zip_error_fini(&error);
  ASARRAY_ASSIGN_OR_RETURN(const ZipPtr zip, OpenArchive(source, ""));
  return ReadArchive(zip.get(), "", limits);
}

absl::Status WriteNpz(const std::string& path, const std::vector<NpzArray>& arrays) {
  if (arrays.empty()) {
    return absl::InvalidArgumentError(absl::StrCat("no arrays to write to ", path));
  }
  // Every array is checked, and its header made, before anything is written.
  std::vector<std::string> headers;
  headers.reserve(arrays.size());
  absl::flat_hash_set<absl::string_view> names;
  for (const NpzArray& array : arrays) {
    const auto bad = [&](absl::string_view what) {
      return absl::InvalidArgumentError(
          absl::StrCat("cannot write ", path, ": array ", Quote(array.name), " ", what));
    };
    if (array.name.empty()) return bad("has no name");
    if (array.name.find('\0') != std::string::npos) return bad("has a NUL in its name");
    if (!names.insert(array.name).second) return bad("is named twice");
    absl::StatusOr<int64_t> numel = NumElements(array.shape);
    if (!numel.ok()) return bad(numel.status().message());
    int64_t nbytes;
    if (!CheckedMul(*numel, static_cast<int64_t>(ItemSize(array.dtype)), &nbytes)) {
      return bad(absl::StrCat("has shape ", DimsToString(array.shape), ", too large"));
    }
    if (static_cast<uint64_t>(nbytes) != array.data.size()) {
      return bad(absl::StrCat("has ", array.data.size(), " bytes of data, not the ", nbytes,
                              " its shape ", DimsToString(array.shape), " of ",
                              DTypeName(array.dtype), " takes"));
    }
    absl::StatusOr<std::string> header = EncodeNpy(array.dtype, array.shape, "");
    if (!header.ok()) return bad(header.status().message());
    headers.push_back(*std::move(header));
  }

  // libzip writes nothing until zip_close, then writes a file of its own
  // beside `temporary` and renames it there; we rename that into place.
  std::string temporary;
  ZipPtr zip;
  for (int attempt = 0; zip == nullptr; ++attempt) {
    temporary = TemporaryPath(path);
    int code = 0;
    zip.reset(zip_open(temporary.c_str(), ZIP_CREATE | ZIP_EXCL, &code));
    if (zip == nullptr && (code != ZIP_ER_EXISTS || attempt == 8)) {
      zip_error_t error;
      zip_error_init_with_code(&error, code);
      return CannotWrite(path, ErrorText(&error));
    }
  }
  for (size_t i = 0; i < arrays.size(); ++i) {
    const zip_buffer_fragment_t fragments[2] = {
        {reinterpret_cast<zip_uint8_t*>(headers[i].data()), headers[i].size()},
        {reinterpret_cast<zip_uint8_t*>(const_cast<char*>(arrays[i].data.data())),
         arrays[i].data.size()}};
    zip_source_t* source =
        zip_source_buffer_fragment(zip.get(), fragments, arrays[i].data.empty() ? 1 : 2, 0);
    if (source == nullptr) return CannotWrite(path, zip_strerror(zip.get()));
    const std::string name = absl::StrCat(arrays[i].name, kSuffix);
    const zip_int64_t index = zip_file_add(zip.get(), name.c_str(), source, ZIP_FL_ENC_GUESS);
    if (index < 0) {
      zip_source_free(source);
      return CannotWrite(path, zip_strerror(zip.get()));
    }
    if (zip_set_file_compression(zip.get(), static_cast<zip_uint64_t>(index), ZIP_CM_STORE, 0) !=
        0) {
      return CannotWrite(path, zip_strerror(zip.get()));
    }
  }
  if (zip_close(zip.get()) != 0) {
    const absl::Status status = CannotWrite(path, zip_strerror(zip.get()));
    unlink(temporary.c_str());  // libzip removes its own file; this is in case
    return status;
  }
  zip.release();  // zip_close freed it
  if (std::rename(temporary.c_str(), path.c_str()) != 0) {
    const absl::Status status = CannotWrite(path, std::strerror(errno));
    unlink(temporary.c_str());
    return status;
  }
  return absl::OkStatus();
}

}  // namespace asarray
