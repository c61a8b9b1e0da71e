// The caches of client memory the server has opened and mapped, so that a
// client's recurring memory is opened and mapped once: ClientSegmentCache
// for named segments (the store's, shared by every call), ClientFdCache for
// the memfds of one local connection.
#ifndef ASARRAY_SERVER_CLIENT_SEGMENT_CACHE_H_
#define ASARRAY_SERVER_CLIENT_SEGMENT_CACHE_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "server/shm.h"

namespace asarray::server {

// Client segments mapped recently, by name: a mapping is kept for reuse
// until the client unlinks its segment (ForgetUnlinked) or the cache is
// full (an arbitrary entry then goes). Thread-safe.
class ClientSegmentCache {
 public:
  static constexpr size_t kMaxEntries = 256;

  ClientSegmentCache() = default;
  ClientSegmentCache(const ClientSegmentCache&) = delete;
  ClientSegmentCache& operator=(const ClientSegmentCache&) = delete;

  // The segment cached as `name` if it is still the file `st` describes
  // (not one unlinked and created again under the name); else null.
  std::shared_ptr<ClientSegment> Find(const std::string& name, const struct stat& st) const;
  // Caches `segment` as `name`, in place of what was cached as `name`.
  void Insert(const std::string& name, std::shared_ptr<ClientSegment> segment);
  // Forgets the segments their owners unlinked: a cached mapping must not
  // keep one alive.
  void ForgetUnlinked();
  void Clear();
  size_t size() const;

 private:
  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, std::shared_ptr<ClientSegment>> segments_ ABSL_GUARDED_BY(mu_);
};

// The memfds one local connection sent, checked and mapped, by file
// (st_dev, st_ino), so that a client's recurring regions are opened and
// mapped once per connection. At most kMaxEntries (the oldest go first);
// dropped with the connection. Only a small memfd (up to kKeptMaxBytes) is
// kept open while no handle uses it: a big one is found while in use and
// closed with its last handle, so that memory the client let go is not held
// here (32 such regions of 1 GiB would be 32 GiB). Not thread-safe: one
// thread serves a connection.
class ClientFdCache {
 public:
  static constexpr size_t kMaxEntries = 32;
  static constexpr uint64_t kKeptMaxBytes = 1 << 20;
  std::shared_ptr<ClientSegment> Find(const struct stat& st) const;
  void Insert(const struct stat& st, const std::shared_ptr<ClientSegment>& segment);
  void Clear() { entries_.clear(); }
  size_t size() const { return entries_.size(); }

 private:
  struct Entry {
    dev_t dev;
    ino_t ino;
    std::shared_ptr<ClientSegment> kept;  // null for a big one
    std::weak_ptr<ClientSegment> segment;
  };
  std::vector<Entry> entries_;  // oldest first
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_CLIENT_SEGMENT_CACHE_H_
