// The client's mappings of handle memory, shared by file. A handle's memory
// is a file: a memfd the server sent, or a named segment. A small file is
// mapped whole, once, and every handle in it (live or later) views that one
// mapping: a consumer that takes the same producer buffer again and again,
// or many small results the server placed in one file, maps it once. Files
// are told apart by (st_dev, st_ino), never by name or descriptor number,
// so a descriptor can be closed as soon as it is mapped.
#ifndef ASARRAY_CLIENT_MAPPINGS_H_
#define ASARRAY_CLIENT_MAPPINGS_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace asarray {

// Files up to this size are mapped whole (and populated when mapped).
inline constexpr uint64_t kWholeFileMaxBytes = 1 << 20;

// Which file a mapping shows, and how.
struct FileKey {
  dev_t dev = 0;
  ino_t ino = 0;
  off_t size = 0;
  bool writable = false;

  bool operator==(const FileKey& o) const {
    return dev == o.dev && ino == o.ino && size == o.size && writable == o.writable;
  }
  template <typename H>
  friend H AbslHashValue(H h, const FileKey& k) {
    return H::combine(std::move(h), k.dev, k.ino, k.size, k.writable);
  }
};

// One mmap of a file: the whole file, or the pages one handle needs.
// Unmapped when the last holder lets go.
class FileMapping {
 public:
  FileMapping(unsigned char* data, size_t length, uint64_t file_offset, bool whole)
      : data_(data), length_(length), file_offset_(file_offset), whole_(whole) {}
  ~FileMapping();
  FileMapping(const FileMapping&) = delete;
  FileMapping& operator=(const FileMapping&) = delete;

  // Where byte `offset` of the file is; it must lie in the mapping.
  unsigned char* at(uint64_t offset) const { return data_ + (offset - file_offset_); }
  bool whole() const { return whole_; }

 private:
  unsigned char* const data_;
  const size_t length_;
  const uint64_t file_offset_;  // of data_[0]
  const bool whole_;
};

// Thread-safe. Shared by a Client and the MappedTensors it made, which may
// outlive it.
class MappingCache {
 public:
  // Idle whole-file mappings kept for later handles, most recent last.
  static constexpr size_t kIdleMax = 16;

  // A mapping of `fd` (which stays the caller's) that holds
  // [offset, offset + size): the live or idle one of the same file when
  // there is one, else a new one. `what` names the memory in errors.
  absl::StatusOr<std::shared_ptr<FileMapping>> Map(int fd, uint64_t offset, uint64_t size,
                                                   bool writable, const std::string& what);
  // A holder is done with `mapping`: a whole-file one stays idle (the oldest
  // idle one beyond kIdleMax goes); any other goes with its last holder.
  void Done(std::shared_ptr<FileMapping> mapping);

  // Mappings made so far, and idle ones now (for tests).
  uint64_t mapped() const;
  size_t idle() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<FileKey, std::weak_ptr<FileMapping>> whole_ ABSL_GUARDED_BY(mu_);
  std::deque<std::shared_ptr<FileMapping>> idle_ ABSL_GUARDED_BY(mu_);
  uint64_t mapped_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace asarray

#endif  // ASARRAY_CLIENT_MAPPINGS_H_
