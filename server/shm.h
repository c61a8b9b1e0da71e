// POSIX shared memory: segments the server creates and owns, and segments
// that clients own and the server maps. Each object owns exactly
// one file descriptor and one mapping and releases both (and, for a segment
// the server created, its name) in its destructor. Not copyable; a const
// object is safe to share between threads (the bytes themselves are not
// synchronized).
#ifndef ASARRAY_SERVER_SHM_H_
#define ASARRAY_SERVER_SHM_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace asarray::server {

// Memory a tensor can live in: a mapping plus where clients find it.
class HostMemory {
 public:
  virtual ~HostMemory() = default;
  // The mapped bytes; null when size() is 0, or before Map() for memory
  // that is mapped on first need.
  virtual unsigned char* data() const = 0;
  // Makes data() valid. A client's segment is mapped only when its bytes are
  // needed: a handle that aliases it needs none. Idempotent and thread-safe.
  virtual absl::Status Map() const { return absl::OkStatus(); }
  virtual size_t size() const = 0;
  // The segment name clients shm_open ("" for memory that has no name, a
  // memfd), and the byte offset of data() in it.
  virtual const std::string& name() const = 0;
  // The file descriptor of the whole file (sent to local clients for a memfd).
  virtual int fd() const = 0;
  virtual uint64_t offset_in_segment() const = 0;
  // Whether the server created this memory (and counts it against its quota).
  virtual bool server_owned() const = 0;
};

// Checks a client-supplied segment name: one leading '/', then 1 to 254
// bytes of [A-Za-z0-9._-] without "..". INVALID_ARGUMENT otherwise.
absl::Status ValidateSegmentName(absl::string_view name);

// Memory the server creates, its bytes reserved up front so that a full
// /dev/shm or memory cgroup fails here (RESOURCE_EXHAUSTED), never later as
// SIGBUS. One of three kinds:
//   - kNamed: shm_open with O_EXCL, mode 0600; for gRPC callers on the Unix
//     socket, who map it by name;
//   - kMemfd: a memfd with no name at all, for the local transport, which
//     sends its descriptor; sealed with F_SEAL_SHRINK, F_SEAL_GROW and
//     F_SEAL_SEAL so that its size never changes under any mapping;
//   - kPrivate: anonymous memory only the server maps, for TCP callers, who
//     read the bytes and map nothing. It has no descriptor (fd() is -1).
// Every kind asks for transparent huge pages, so that filling it costs a page
// fault per 2 MiB instead of one per 4 KiB where the kernel gives them (for
// shared memory, only where /sys/kernel/mm/transparent_hugepage/shmem_enabled
// says advise or within_size). The destructor unmaps it, closes it and unlinks a name; mappings and
// descriptors clients still hold stay valid.
class ShmSegment final : public HostMemory {
 public:
  enum class Kind { kNamed, kMemfd, kPrivate };
  // A segment of `kind` and `size` bytes (0 is allowed: nothing is mapped).
  // `name` names a kNamed one (ALREADY_EXISTS if taken) and must be empty
  // for the other kinds.
  static absl::StatusOr<std::unique_ptr<ShmSegment>> Create(Kind kind, size_t size,
                                                            const std::string& name = "");
  // The same, mapped but not yet reserved: the pages must go through
  // Prepare() before anything touches them. For the segment pool, which
  // prepares a segment in steps and hands it out only when done.
  static absl::StatusOr<std::unique_ptr<ShmSegment>> CreateUnreserved(Kind kind, size_t size,
                                                                      const std::string& name = "");
  // Reserves the pages of [offset, offset + size) and writes each once, so
  // that later writes there cost no page faults. RESOURCE_EXHAUSTED when
  // /dev/shm or memory is short. REQUIRES: the range lies within size().
  absl::Status Prepare(size_t offset, size_t size);
  ~ShmSegment() override;
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;

  unsigned char* data() const override { return data_; }
  size_t size() const override { return size_; }
  const std::string& name() const override { return name_; }
  int fd() const override { return fd_; }
  uint64_t offset_in_segment() const override { return 0; }
  bool server_owned() const override { return true; }
  Kind kind() const { return kind_; }

  // Whether every page has been written once already (a pooled segment), so
  // that filling it costs no page faults.
  bool touched() const { return touched_; }
  void set_touched() { touched_ = true; }

 private:
  static absl::StatusOr<std::unique_ptr<ShmSegment>> CreateMapped(Kind kind, size_t size,
                                                                  const std::string& name,
                                                                  bool reserve);
  ShmSegment(Kind kind, std::string name, int fd, unsigned char* data, size_t size)
      : kind_(kind), name_(std::move(name)), fd_(fd), data_(data), size_(size) {}
  Kind kind_;
  std::string name_;
  int fd_;
  unsigned char* data_;
  size_t size_;
  bool touched_ = false;
};

// The bytes [offset, offset + size) of other host memory, which it keeps:
// the tensors of a batch's arena (slices of one segment), or a view into a
// held tensor's memory (TensorView). Clients find it where they find its
// parent, at the offset within.
class MemorySlice final : public HostMemory {
 public:
  // REQUIRES: the range lies within `parent`.
  MemorySlice(std::shared_ptr<HostMemory> parent, uint64_t offset, size_t size)
      : parent_(std::move(parent)), offset_(offset), size_(size) {}

  unsigned char* data() const override {
    unsigned char* const base = parent_->data();
    return size_ == 0 || base == nullptr ? nullptr : base + offset_;
  }
  absl::Status Map() const override { return parent_->Map(); }
  size_t size() const override { return size_; }
  const std::string& name() const override { return parent_->name(); }
  int fd() const override { return parent_->fd(); }
  uint64_t offset_in_segment() const override { return parent_->offset_in_segment() + offset_; }
  bool server_owned() const override { return parent_->server_owned(); }

 private:
  const std::shared_ptr<HostMemory> parent_;
  const uint64_t offset_;
  const size_t size_;
};

// A segment a client owns: one file descriptor, and from the first Map()
// on one mapping of it whole, read-write; both released on destruction. The
// server never unlinks it. Aliasing it needs no mapping, so a handle that
// only aliases costs no mmap and no munmap (which interrupts every core the
// server's threads ran on). Shared by every region of it the server uses,
// and kept a while for reuse (TensorStore's cache), so that a client's
// recurring buffers are mapped, and page-locked for DMA, once.
class ClientSegment {
 public:
  // Takes `fd`, opened on `name` (empty for a descriptor the client sent:
  // the server's own open file description of it, see OpenClientFd), whose
  // fstat is `st`.
  ClientSegment(std::string name, int fd, const struct stat& st)
      : name_(std::move(name)),
        fd_(fd),
        size_(static_cast<size_t>(st.st_size)),
        dev_(st.st_dev),
        ino_(st.st_ino) {}
  ~ClientSegment();
  ClientSegment(const ClientSegment&) = delete;
  ClientSegment& operator=(const ClientSegment&) = delete;

  // Maps the segment, once. OK at once when it is mapped or empty.
  absl::Status Map();
  // The mapping; null before Map() and when size() is 0.
  unsigned char* data() const { return data_.load(std::memory_order_acquire); }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }
  int fd() const { return fd_; }
  // How messages name it: its name, or "the client's memfd".
  std::string Describe() const;
  // Whether `st` describes the same file at the same size (not a segment
  // that was unlinked and created again under the name).
  bool SameFile(const struct stat& st) const;
  // Whether the client has unlinked it (nothing but mappings keep it).
  bool Unlinked() const;

  // A region of it the server holds (an alias, or a copy in progress)
  // begins and ends. While any is held, the descriptor holds a shared
  // flock: the owner may recycle a segment (rename it and reuse its memory
  // for new data) only once it can lock it exclusively. NOT_FOUND when the
  // owner is recycling it, or has, so that its name no longer names this
  // file: a reference that outlived its array.
  absl::Status BeginUse();
  void EndUse();

  // Counts uses; a segment used more than once is worth page-locking.
  int AddUse() { return ++uses_; }
  int uses() const { return uses_.load(); }
  // Page-locks the mapping once, with `pin` (the CUDA backend's host
  // registration, undone when the token it returns is destroyed, before the
  // unmap). OK once pinned. REQUIRES: Map() returned OK.
  using PinFn = std::function<absl::StatusOr<std::shared_ptr<void>>(void*, size_t)>;
  absl::Status Pin(const PinFn& pin);

 private:
  const std::string name_;
  const int fd_;
  absl::Mutex map_mu_;                         // serializes the one mmap
  std::atomic<unsigned char*> data_{nullptr};  // set once, under map_mu_; read without it
  const size_t size_;
  const dev_t dev_;
  const ino_t ino_;
  std::atomic<int> uses_{0};
  absl::Mutex held_mu_;
  // Regions held; the shared flock is on while it is above 0.
  int held_ ABSL_GUARDED_BY(held_mu_) = 0;
  absl::Mutex pin_mu_;
  std::shared_ptr<void> pin_ ABSL_GUARDED_BY(pin_mu_);  // released first on destruction
};

// The bytes [offset, offset + size) of a client's segment.
class ClientRegion final : public HostMemory {
 public:
  // INVALID_ARGUMENT when the range lies outside the segment (overflow-safe).
  static absl::StatusOr<std::unique_ptr<ClientRegion>> Of(std::shared_ptr<ClientSegment> segment,
                                                          uint64_t offset, uint64_t size);
  ~ClientRegion() override { segment_->EndUse(); }

  unsigned char* data() const override {
    unsigned char* const base = segment_->data();
    return size_ == 0 || base == nullptr ? nullptr : base + offset_;
  }
  absl::Status Map() const override { return segment_->Map(); }
  size_t size() const override { return size_; }
  const std::string& name() const override { return segment_->name(); }
  int fd() const override { return segment_->fd(); }
  uint64_t offset_in_segment() const override { return offset_; }
  bool server_owned() const override { return false; }
  ClientSegment& segment() const { return *segment_; }

 private:
  ClientRegion(std::shared_ptr<ClientSegment> segment, uint64_t offset, size_t size)
      : segment_(std::move(segment)), offset_(offset), size_(size) {}
  const std::shared_ptr<ClientSegment> segment_;
  const uint64_t offset_;
  const size_t size_;
};

// Opens a client's segment by name for reading and writing, and its fstat.
// INVALID_ARGUMENT for a malformed name, NOT_FOUND when it does not exist,
// PERMISSION_DENIED when it cannot be opened or does not belong to uid
// `owner` (the caller's; checked on the open descriptor).
absl::StatusOr<int> OpenClientSegment(const std::string& name, uid_t owner, struct stat* st);

// Checks a descriptor a client sent over the local transport, and fills in
// its fstat. The descriptor must be a memfd open for reading and writing, sealed with
// F_SEAL_SHRINK and F_SEAL_GROW and not against writing: INVALID_ARGUMENT
// for anything that is not a memfd (a pipe, socket, directory, eventfd, an
// O_PATH descriptor, a file on disk), PERMISSION_DENIED for one open
// read-only, FAILED_PRECONDITION for a missing seal or a write seal.
absl::Status CheckClientFd(int fd, struct stat* st);
// After CheckClientFd: the server's own open file description of the same
// file, so that the flock BeginUse takes is not the sender's (a passed
// descriptor shares the sender's description).
absl::StatusOr<int> ReopenClientFd(int fd, const struct stat& st);

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_SHM_H_
