#include "client/mappings.h"

#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "wire/posix_util.h"

namespace asarray {

FileMapping::~FileMapping() { munmap(data_, length_); }

absl::StatusOr<std::shared_ptr<FileMapping>> MappingCache::Map(int fd, uint64_t offset,
                                                               uint64_t size, bool writable,
                                                               const std::string& what) {
  if (size > UINT64_MAX - offset) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": offset ", offset, " + size ", size, " overflows"));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) return ErrnoStatus(errno, "examining " + what);
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  const FileKey key{st.st_dev, st.st_ino, st.st_size, writable};
  const bool whole = file_size > 0 && file_size <= kWholeFileMaxBytes && offset + size <= file_size;
  if (whole) {
    absl::MutexLock lock(&mu_);
    auto it = whole_.find(key);
    if (it != whole_.end()) {
      if (std::shared_ptr<FileMapping> live = it->second.lock()) return live;
    }
  }
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t start = whole ? 0 : offset / page * page;
  const uint64_t length = whole ? file_size : offset - start + size;
  if (length == 0) return absl::InvalidArgumentError(what + ": nothing to map");
  // A small mapping is populated in the same call: one pass in the kernel is
  // cheaper than the page fault of the first access.
  const int populate = length <= kWholeFileMaxBytes ? MAP_POPULATE : 0;
  void* p = mmap(nullptr, length, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                 MAP_SHARED | populate, fd, static_cast<off_t>(start));
  if (p == MAP_FAILED) return ErrnoStatus(errno, "mapping " + what);
  auto mapping =
      std::make_shared<FileMapping>(static_cast<unsigned char*>(p), length, start, whole);
  std::vector<FileKey> expired;
  absl::MutexLock lock(&mu_);
  ++mapped_;
  if (whole) {
    // Another thread may have mapped the same file meanwhile; either serves.
    whole_[key] = mapping;
    if (whole_.size() > 4 * kIdleMax) {
      for (const auto& [k, weak] : whole_) {
        if (weak.expired()) expired.push_back(k);
      }
      for (const FileKey& k : expired) whole_.erase(k);
    }
  }
  return mapping;
}

void MappingCache::Done(std::shared_ptr<FileMapping> mapping) {
  if (mapping == nullptr || !mapping->whole()) return;  // unmapped with its last holder
  std::shared_ptr<FileMapping> evicted;
  {
    absl::MutexLock lock(&mu_);
    for (auto it = idle_.begin(); it != idle_.end(); ++it) {
      if (*it == mapping) {
        idle_.erase(it);
        break;
      }
    }
    idle_.push_back(std::move(mapping));
    if (idle_.size() > kIdleMax) {
      evicted = std::move(idle_.front());
      idle_.pop_front();
    }
  }
  // `evicted` unmaps here, outside the lock, if nothing else holds it.
}

uint64_t MappingCache::mapped() const {
  absl::MutexLock lock(&mu_);
  return mapped_;
}

size_t MappingCache::idle() const {
  absl::MutexLock lock(&mu_);
  return idle_.size();
}

}  // namespace asarray
