#include "server/client_segment_cache.h"

#include <algorithm>
#include <utility>

namespace asarray::server {

std::shared_ptr<ClientSegment> ClientSegmentCache::Find(const std::string& name,
                                                        const struct stat& st) const {
  absl::MutexLock lock(&mu_);
  auto it = segments_.find(name);
  if (it != segments_.end() && it->second->SameFile(st)) return it->second;
  return nullptr;
}

void ClientSegmentCache::Insert(const std::string& name, std::shared_ptr<ClientSegment> segment) {
  absl::MutexLock lock(&mu_);
  if (segments_.size() >= kMaxEntries) segments_.erase(segments_.begin());
  segments_[name] = std::move(segment);
}

void ClientSegmentCache::ForgetUnlinked() {
  std::vector<std::shared_ptr<ClientSegment>> unlinked;  // unmapped outside the lock
  absl::MutexLock lock(&mu_);
  for (auto it = segments_.begin(); it != segments_.end();) {
    if (it->second->Unlinked()) {
      unlinked.push_back(std::move(it->second));
      segments_.erase(it++);
    } else {
      ++it;
    }
  }
}

void ClientSegmentCache::Clear() {
  absl::MutexLock lock(&mu_);
  segments_.clear();
}

size_t ClientSegmentCache::size() const {
  absl::MutexLock lock(&mu_);
  return segments_.size();
}

std::shared_ptr<ClientSegment> ClientFdCache::Find(const struct stat& st) const {
  for (const Entry& e : entries_) {
    if (e.dev == st.st_dev && e.ino == st.st_ino) return e.segment.lock();
  }
  return nullptr;
}

void ClientFdCache::Insert(const struct stat& st, const std::shared_ptr<ClientSegment>& segment) {
  // Entries of big memfds that no handle uses any more go first.
  entries_.erase(std::remove_if(entries_.begin(), entries_.end(),
                                [&](const Entry& e) {
                                  return e.segment.expired() ||
                                         (e.dev == st.st_dev && e.ino == st.st_ino);
                                }),
                 entries_.end());
  if (entries_.size() >= kMaxEntries) entries_.erase(entries_.begin());
  const bool keep = static_cast<uint64_t>(st.st_size) <= kKeptMaxBytes;
  entries_.push_back(Entry{st.st_dev, st.st_ino, keep ? segment : nullptr, segment});
}

}  // namespace asarray::server
