#include "server/shm.h"

#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/parallel.h"
#include "core/quote.h"
#include "server/peer.h"
#include "wire/posix_util.h"

namespace asarray::server {
namespace {

// Where Linux keeps POSIX shared memory: shm_open(name) opens kShmDir + name.
constexpr char kShmDir[] = "/dev/shm";

}  // namespace

absl::Status ValidateSegmentName(absl::string_view name) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("shared-memory name ", Quote(name), " ", why));
  };
  if (name.size() < 2 || name[0] != '/') return bad("must start with '/' and name a segment");
  if (name.size() > 255) return bad("is longer than 255 bytes");
  if (absl::StrContains(name, "..")) return bad("must not contain '..'");
  if (name == "/.") return bad("names the shared-memory directory, not a segment");
  for (char ch : name.substr(1)) {
    const bool ok =
        absl::ascii_isalnum(static_cast<unsigned char>(ch)) || ch == '.' || ch == '_' || ch == '-';
    if (!ok) return bad("may hold only letters, digits, '.', '_' and '-' after its leading '/'");
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ShmSegment>> ShmSegment::Create(Kind kind, size_t size,
                                                               const std::string& name) {
  return CreateMapped(kind, size, name, /*reserve=*/true);
}

absl::StatusOr<std::unique_ptr<ShmSegment>> ShmSegment::CreateUnreserved(Kind kind, size_t size,
                                                                         const std::string& name) {
  return CreateMapped(kind, size, name, /*reserve=*/false);
}

namespace {

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels answer EINVAL
#endif

// Puts every page of [data + offset, data + offset + size) in place, ready
// for writing, so that a shortage shows here as an errno (ENOSPC, ENOMEM)
// and never later as SIGBUS. `fd` is the file behind a shared mapping, -1
// for anonymous memory. MADV_POPULATE_WRITE does it in one call; where the
// kernel lacks it, posix_fallocate reserves a file's pages and each page is
// written once.
int Populate(int fd, unsigned char* data, size_t offset, size_t size) {
  if (size == 0) return 0;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  const size_t begin = offset / page * page;
  if (madvise(data + begin, offset + size - begin, MADV_POPULATE_WRITE) == 0) return 0;
  // EFAULT is a page that would SIGBUS: the file system has no room for it.
  if (errno == EFAULT) return ENOSPC;
  if (errno != EINVAL) return errno;
  if (fd >= 0) {
    const int err = posix_fallocate(fd, static_cast<off_t>(offset), static_cast<off_t>(size));
    if (err != 0) return err;
  }
  volatile unsigned char* p = data;
  for (size_t at = begin; at < offset + size; at += page) p[at] = 0;
  return 0;
}

// Populate() over the whole of [data, data + size), split across the cores:
// the kernel's cost is per page (allocating, zeroing, mapping), and pages of
// different pieces take no common lock for long. 0 or the first errno.
int PopulateAll(int fd, unsigned char* data, size_t size) {
  constexpr size_t kPiece = size_t{2} << 20;  // a huge page, where there are any
  const int64_t pieces = static_cast<int64_t>(size / kPiece + (size % kPiece != 0 ? 1 : 0));
  std::atomic<int> first_error{0};
  ParallelFor(pieces, /*min_grain=*/8, [&](int64_t begin, int64_t end) {
    const size_t from = static_cast<size_t>(begin) * kPiece;
    const size_t to = std::min(size, static_cast<size_t>(end) * kPiece);
    const int err = Populate(fd, data, from, to - from);
    int none = 0;
    if (err != 0) first_error.compare_exchange_strong(none, err);
  });
  return first_error.load();
}

// How messages name a segment of `kind`.
std::string Describe(ShmSegment::Kind kind, const std::string& name) {
  switch (kind) {
    case ShmSegment::Kind::kNamed:
      return absl::StrCat("segment ", name);
    case ShmSegment::Kind::kMemfd:
      return "a memfd";
    case ShmSegment::Kind::kPrivate:
      break;
  }
  return "private memory";
}

}  // namespace

absl::StatusOr<std::unique_ptr<ShmSegment>> ShmSegment::CreateMapped(Kind kind, size_t size,
                                                                     const std::string& name,
                                                                     bool reserve) {
  if ((kind == Kind::kNamed) == name.empty()) {
    return absl::InternalError("a segment has a name exactly when it is of the named kind");
  }
  const bool named = kind == Kind::kNamed;
  const bool shared = kind != Kind::kPrivate;
  const std::string what = Describe(kind, name);
  int fd = -1;
  if (shared) {
    fd = named ? shm_open(name.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600)
               : memfd_create("asarrayd", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("creating ", what));
  }
  unsigned char* data = nullptr;
  auto fail = [&](int err, absl::string_view step) {
    if (data != nullptr) munmap(data, size);
    if (fd >= 0) close(fd);
    if (named) shm_unlink(name.c_str());
    return ErrnoStatus(err, absl::StrCat(step, " ", size, " bytes for ", what));
  };
  if (shared) {
    if (ftruncate(fd, static_cast<off_t>(size)) != 0) return fail(errno, "sizing");
    // Its size is final: no client can shrink it under a mapping (SIGBUS) or
    // grow it into the server's memory.
    if (!named && fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_SEAL) != 0) {
      return fail(errno, "sealing");
    }
  }
  if (size > 0) {
    void* p = shared
                  ? mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
                  : mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return fail(errno, "mapping");
    data = static_cast<unsigned char*>(p);
    // A hint: where the kernel gives huge pages (always, for anonymous memory
    // with THP in madvise mode; for shared memory only where shmem_enabled
    // says advise or within_size), filling the segment costs a fault per
    // 2 MiB instead of one per 4 KiB. Without them it works the same.
    madvise(p, size, MADV_HUGEPAGE);
    // Reserved, every page is in now: ENOSPC or ENOMEM here instead of
    // SIGBUS when a client first touches a page. Unreserved, the segment is
    // only sized, and Prepare() reserves it piece by piece.
    if (reserve) {
      const int err = PopulateAll(fd, data, size);
      if (err != 0) return fail(err, "reserving");
    }
  }
  std::unique_ptr<ShmSegment> segment(new ShmSegment(kind, name, fd, data, size));
  if (reserve) segment->set_touched();
  return segment;
}

absl::Status ShmSegment::Prepare(size_t offset, size_t size) {
  const int err = Populate(fd_, data_, offset, size);
  if (err != 0) {
    return ErrnoStatus(err, absl::StrCat("reserving ", size, " bytes of ", Describe(kind_, name_)));
  }
  return absl::OkStatus();
}

ShmSegment::~ShmSegment() {
  if (data_ != nullptr) munmap(data_, size_);
  if (!name_.empty()) shm_unlink(name_.c_str());
  if (fd_ >= 0) close(fd_);
}

namespace {

const char* FileKind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISLNK(mode)) return "a symbolic link";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode) || S_ISBLK(mode)) return "a device";
  return "not a regular file";
}

}  // namespace

absl::StatusOr<int> OpenClientSegment(const std::string& name, uid_t owner, struct stat* st) {
  absl::Status valid = ValidateSegmentName(name);
  if (!valid.ok()) return valid;
  // Opened as shm_open would, but never through a symbolic link, and never
  // blocking (on a FIFO, say): the name is the caller's, and so is whatever
  // it names. Everything the open can fail with is the caller's fault.
  const std::string path = absl::StrCat(kShmDir, name);
  const int fd = open(path.c_str(), O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) {
    const int err = errno;
    struct stat link;
    if (err == ELOOP && lstat(path.c_str(), &link) == 0 && S_ISLNK(link.st_mode)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "client segment ", Quote(name), " is a symbolic link, not a shared-memory segment"));
    }
    return CallerErrnoStatus(err, absl::StrCat("opening client segment ", Quote(name)));
  }
  if (fstat(fd, st) != 0) {
    const int err = errno;
    close(fd);
    return CallerErrnoStatus(err, absl::StrCat("inspecting client segment ", Quote(name)));
  }
  // Checked on the open descriptor, so a rename in between cannot fool it.
  if (!S_ISREG(st->st_mode)) {
    close(fd);
    return absl::InvalidArgumentError(absl::StrCat("client segment ", Quote(name), " is ",
                                                   FileKind(st->st_mode),
                                                   ", not a shared-memory segment"));
  }
  if (st->st_uid != owner) {
    close(fd);
    return absl::PermissionDeniedError(absl::StrCat(
        "client segment ", Quote(name), " belongs to uid ", st->st_uid,
        ", not to the caller's uid ",
        owner == kNoLocalUid ? std::string("(none: a TCP caller)") : absl::StrCat(owner)));
  }
  return fd;
}

absl::Status CheckClientFd(int fd, struct stat* st) {
  const int flags = fcntl(fd, F_GETFL);
  if (flags < 0) return CallerErrnoStatus(errno, "inspecting the attached descriptor");
  if ((flags & O_PATH) != 0) {
    return absl::InvalidArgumentError(
        "the attached descriptor was opened with O_PATH, which cannot be mapped; send a memfd");
  }
  if (fstat(fd, st) != 0) return CallerErrnoStatus(errno, "inspecting the attached descriptor");
  if (!S_ISREG(st->st_mode)) {
    return absl::InvalidArgumentError(
        absl::StrCat("the attached descriptor is ", FileKind(st->st_mode), ", not a memfd"));
  }
  const int seals = fcntl(fd, F_GET_SEALS);
  if (seals < 0) {
    return absl::InvalidArgumentError(
        "the attached descriptor is a file that cannot be sealed, not a memfd made with "
        "MFD_ALLOW_SEALING");
  }
  if ((flags & O_ACCMODE) != O_RDWR) {
    return absl::PermissionDeniedError(
        "the attached memfd is open read-only; send a descriptor open for reading and writing");
  }
  for (const auto& [seal, seal_name] :
       {std::pair{F_SEAL_SHRINK, "F_SEAL_SHRINK"}, std::pair{F_SEAL_GROW, "F_SEAL_GROW"}}) {
    if ((seals & seal) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the attached memfd is not sealed with ", seal_name,
          ": seal it with F_SEAL_SHRINK | F_SEAL_GROW so that its size cannot change under a "
          "mapping"));
    }
  }
  if ((seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE)) != 0) {
    return absl::FailedPreconditionError(
        "the attached memfd is sealed against writing; tensors over it must be writable");
  }
  return absl::OkStatus();
}

absl::StatusOr<int> ReopenClientFd(int fd, const struct stat& st) {
  const int own = open(absl::StrCat("/proc/self/fd/", fd).c_str(), O_RDWR | O_CLOEXEC);
  if (own < 0) return ErrnoStatus(errno, "reopening the attached memfd");
  struct stat again;
  if (fstat(own, &again) != 0 || again.st_dev != st.st_dev || again.st_ino != st.st_ino) {
    close(own);
    return absl::InternalError("reopening the attached memfd gave another file");
  }
  return own;
}

std::string ClientSegment::Describe() const {
  return name_.empty() ? std::string("the client's memfd")
                       : absl::StrCat("client segment ", Quote(name_));
}

absl::Status ClientSegment::Map() {
  if (size_ == 0 || data() != nullptr) return absl::OkStatus();
  absl::MutexLock lock(&map_mu_);
  if (data() != nullptr) return absl::OkStatus();
  void* p = mmap(nullptr, size_, PROT_READ | PROT_WRITE, MAP_SHARED, fd_, 0);
  if (p == MAP_FAILED) return CallerErrnoStatus(errno, absl::StrCat("mapping ", Describe()));
  data_.store(static_cast<unsigned char*>(p), std::memory_order_release);
  return absl::OkStatus();
}

ClientSegment::~ClientSegment() {
  pin_.reset();  // unlock the pages while they are still mapped
  if (data() != nullptr) munmap(data(), size_);
  close(fd_);
}

bool ClientSegment::SameFile(const struct stat& st) const {
  return st.st_dev == dev_ && st.st_ino == ino_ && static_cast<size_t>(st.st_size) == size_;
}

bool ClientSegment::Unlinked() const {
  if (name_.empty()) return false;  // a memfd never had a name
  struct stat st;
  return fstat(fd_, &st) != 0 || st.st_nlink == 0;
}

absl::Status ClientSegment::Pin(const PinFn& pin) {
  absl::MutexLock lock(&pin_mu_);
  if (pin_ != nullptr) return absl::OkStatus();
  if (data() == nullptr) {
    return absl::FailedPreconditionError("an empty or unmapped segment has nothing to pin");
  }
  absl::StatusOr<std::shared_ptr<void>> token = pin(data(), size_);
  if (!token.ok()) return token.status();
  pin_ = *std::move(token);
  return absl::OkStatus();
}

absl::Status ClientSegment::BeginUse() {
  absl::MutexLock lock(&held_mu_);
  if (held_ > 0) {
    ++held_;
    return absl::OkStatus();
  }
  if (flock(fd_, LOCK_SH | LOCK_NB) != 0) {
    if (errno != EWOULDBLOCK) {
      return CallerErrnoStatus(errno, absl::StrCat("locking ", Describe()));
    }
    return absl::NotFoundError(absl::StrCat(Describe(),
                                            " is being recycled by its owner: the reference to it "
                                            "outlived its array"));
  }
  if (name_.empty()) {  // nothing can rename a memfd
    held_ = 1;
    return absl::OkStatus();
  }
  // The owner renames a segment it recycles, with the exclusive lock held:
  // the name must still name this file now that nobody else holds that lock.
  struct stat st;
  if (stat(absl::StrCat(kShmDir, name_).c_str(), &st) != 0 || st.st_dev != dev_ ||
      st.st_ino != ino_) {
    flock(fd_, LOCK_UN);
    return absl::NotFoundError(absl::StrCat("client segment ", Quote(name_),
                                            " was recycled by its owner: the reference to it "
                                            "outlived its array"));
  }
  held_ = 1;
  return absl::OkStatus();
}

void ClientSegment::EndUse() {
  absl::MutexLock lock(&held_mu_);
  if (--held_ == 0) flock(fd_, LOCK_UN);
}

absl::StatusOr<std::unique_ptr<ClientRegion>> ClientRegion::Of(
    std::shared_ptr<ClientSegment> segment, uint64_t offset, uint64_t size) {
  const uint64_t segment_size = segment->size();
  if (offset > segment_size || size > segment_size - offset) {
    return absl::InvalidArgumentError(
        absl::StrCat("region [", offset, ", ", offset, " + ", size, ") lies outside ",
                     segment->name().empty() ? std::string("the client's memfd")
                                             : absl::StrCat("segment ", Quote(segment->name())),
                     " of ", segment_size, " bytes"));
  }
  absl::Status held = segment->BeginUse();
  if (!held.ok()) return held;
  return std::unique_ptr<ClientRegion>(new ClientRegion(std::move(segment), offset, size));
}

}  // namespace asarray::server
