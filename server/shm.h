// POSIX shared memory: segments the server creates and owns, and regions of
// segments that clients own and the server maps. Each object owns exactly
// one file descriptor and one mapping and releases both (and, for a segment
// the server created, its name) in its destructor. Not copyable; a const
// object is safe to share between threads (the bytes themselves are not
// synchronized).
#ifndef ASARRAY_SERVER_SHM_H_
#define ASARRAY_SERVER_SHM_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace asarray::server {

// Memory a tensor can live in: a mapping plus where clients find it.
class HostMemory {
 public:
  virtual ~HostMemory() = default;
  // The mapped bytes; null when size() is 0.
  virtual unsigned char* data() const = 0;
  virtual size_t size() const = 0;
  // The segment name clients shm_open, and the byte offset of data() in it.
  virtual const std::string& name() const = 0;
  virtual uint64_t offset_in_segment() const = 0;
  // Whether the server created this memory (and counts it against its quota).
  virtual bool server_owned() const = 0;
};

// Checks a client-supplied segment name: one leading '/', then 1 to 254
// bytes of [A-Za-z0-9._-] without "..". INVALID_ARGUMENT otherwise.
absl::Status ValidateSegmentName(absl::string_view name);

// A segment the server creates: O_EXCL, mode 0600, its bytes reserved up
// front so that a full /dev/shm fails here (RESOURCE_EXHAUSTED), never later
// as SIGBUS. The destructor unmaps and unlinks it; mappings clients still
// hold stay valid, as POSIX guarantees.
class ShmSegment final : public HostMemory {
 public:
  // Creates `name` with `size` bytes (0 is allowed: nothing is mapped).
  // ALREADY_EXISTS if the name is taken.
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Create(const std::string& name,
                                                            size_t size);
  ~ShmSegment() override;
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;

  unsigned char* data() const override { return data_; }
  size_t size() const override { return size_; }
  const std::string& name() const override { return name_; }
  uint64_t offset_in_segment() const override { return 0; }
  bool server_owned() const override { return true; }

  // Whether every page has been written once already (a pooled segment), so
  // that filling it costs no page faults.
  bool touched() const { return touched_; }
  void set_touched() { touched_ = true; }

 private:
  ShmSegment(std::string name, int fd, unsigned char* data, size_t size)
      : name_(std::move(name)), fd_(fd), data_(data), size_(size) {}
  std::string name_;
  int fd_;
  unsigned char* data_;
  size_t size_;
  bool touched_ = false;
};

// The bytes [offset, offset + size) of a segment a client owns, mapped
// read-write. The server never unlinks it. The destructor unmaps and closes.
class ClientRegion final : public HostMemory {
 public:
  // NOT_FOUND when the segment does not exist, INVALID_ARGUMENT when the
  // name is malformed or the range lies outside the segment (checked with
  // fstat, overflow-safe), PERMISSION_DENIED when it cannot be opened or the
  // opened segment does not belong to uid `owner` (the caller's).
  static absl::StatusOr<std::unique_ptr<ClientRegion>> Open(const std::string& name,
                                                            uint64_t offset, uint64_t size,
                                                            uid_t owner);
  ~ClientRegion() override;
  ClientRegion(const ClientRegion&) = delete;
  ClientRegion& operator=(const ClientRegion&) = delete;

  unsigned char* data() const override { return size_ == 0 ? nullptr : map_ + (offset_ - map_offset_); }
  size_t size() const override { return size_; }
  const std::string& name() const override { return name_; }
  uint64_t offset_in_segment() const override { return offset_; }
  bool server_owned() const override { return false; }

 private:
  ClientRegion(std::string name, int fd, unsigned char* map, size_t map_len, uint64_t map_offset,
               uint64_t offset, size_t size)
      : name_(std::move(name)), fd_(fd), map_(map), map_len_(map_len), map_offset_(map_offset),
        offset_(offset), size_(size) {}
  std::string name_;
  int fd_;
  unsigned char* map_;  // page-aligned start of the mapping
  size_t map_len_;
  uint64_t map_offset_;  // segment offset of map_
  uint64_t offset_;
  size_t size_;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_SHM_H_
