// The registry of tensors the server holds: their memory, leases and the
// byte quota. Every result segment is created here, named
// "/<prefix>-<instance>-<128 random bits>", and unlinked when the last
// tensor that references it is gone. Thread-safe.
#ifndef ASARRAY_SERVER_TENSOR_STORE_H_
#define ASARRAY_SERVER_TENSOR_STORE_H_

#include <sys/stat.h>
#include <sys/types.h>

#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "core/dtype.h"
#include "core/layout.h"
#include "core/plan.h"
#include "server/client_segment_cache.h"
#include "server/cuda_backend.h"
#include "server/peer.h"
#include "server/segment_pool.h"
#include "server/shm.h"

namespace asarray::server {

// A tensor the server holds. Immutable once registered.
struct Tensor {
  std::string id;
  DType dtype = DType::kFloat32;
  Layout layout;  // element offsets from memory->data()
  Device device;
  bool requires_grad = false;
  bool shares_memory = false;  // aliases the caller's memory
  std::vector<std::string> warnings;
  // Exactly one of the two: host memory for the CPU, device memory for CUDA.
  std::shared_ptr<HostMemory> memory;
  std::shared_ptr<DeviceMemory> device_memory;
  Caller owner;
};

struct StoreOptions {
  std::string prefix = "asarrayd";
  absl::Duration default_ttl = absl::Minutes(10);
  absl::Duration max_ttl = absl::Hours(24);
  uint64_t max_bytes = 0;  // 0: no quota
  // Warm segments kept ready for recently requested sizes (see SegmentPool);
  // not counted against max_bytes; 0 disables the pool.
  uint64_t pool_bytes = 0;
};

struct StoreStats {
  uint64_t tensors = 0;
  uint64_t segments = 0;
  uint64_t bytes_in_use = 0;
  uint64_t client_regions = 0;
  uint64_t expired = 0;
  uint64_t pool_bytes = 0;
  uint64_t pool_hits = 0;
  uint64_t client_segments_cached = 0;
  uint64_t connection_leases = 0;
};

class TensorStore {
 public:
  explicit TensorStore(StoreOptions options);
  // Releases every tensor; every segment this store created is unlinked once
  // nothing else holds it.
  ~TensorStore();
  TensorStore(const TensorStore&) = delete;
  TensorStore& operator=(const TensorStore&) = delete;

  // A new segment of `bytes` and `kind`, counted against the quota until
  // destroyed. RESOURCE_EXHAUSTED when the quota, /dev/shm or the memory
  // cgroup cannot take it. A warm one from the pool when it has one; else a
  // fresh one, reserved, or with `reserve` false only sized and mapped (for
  // a writer that puts every byte in itself, checking each write).
  absl::StatusOr<std::shared_ptr<ShmSegment>> NewSegment(
      uint64_t bytes, ShmSegment::Kind kind = ShmSegment::Kind::kNamed, bool reserve = true);
  // Held by a large transfer (an upload, a big copy) while it runs: the
  // segment pool does not refill meanwhile.
  SegmentPool::Foreground MarkForeground() { return pool_->EnterForeground(); }

  // Maps a region of a segment that uid `owner` owns (PERMISSION_DENIED
  // otherwise); it counts as a client region while referenced. The
  // segment's mapping is kept for reuse until the client unlinks it (the
  // sweeper notices within its interval) or the cache fills up.
  absl::StatusOr<std::shared_ptr<ClientRegion>> OpenClientRegion(const std::string& name,
                                                                 uint64_t offset, uint64_t size,
                                                                 uid_t owner);

  // A memfd a local client sent (`fd`, still the transport's), checked as
  // CheckClientFd says, and opened as the server's own, or found in `cache`
  // (the connection's mapped memfds).
  absl::StatusOr<std::shared_ptr<ClientSegment>> OpenClientFd(int fd, ClientFdCache* cache);
  // A region of such a memfd; it counts as a client region while referenced.
  absl::StatusOr<std::shared_ptr<ClientRegion>> ClientFdRegion(
      std::shared_ptr<ClientSegment> segment, uint64_t offset, uint64_t size) {
    return CountedRegion(std::move(segment), offset, size);
  }

  // Registers a tensor under a fresh id with a lease of `ttl` (zero: the
  // default TTL; capped at the maximum).
  struct Lease {
    std::shared_ptr<const Tensor> tensor;
    absl::Time expires;  // InfiniteFuture for a connection's lease
  };
  Lease Add(Tensor tensor, absl::Duration ttl = absl::ZeroDuration());
  // Registers a tensor whose lease ends with local connection `connection`
  // (EndConnection), or earlier by Release; Renew turns it into a TTL lease.
  Lease AddForConnection(Tensor tensor, uint64_t connection);
  // Registers every tensor of a batch at once (one lock, one draw of ids),
  // in order: each as Add(tensor, ttl) would, or with `connection` nonzero
  // as AddForConnection(tensor, connection) would.
  std::vector<Lease> AddAll(std::vector<Tensor> tensors, absl::Duration ttl,
                            uint64_t connection = 0);
  // Ends every lease of `connection` still tied to it; returns how many.
  int EndConnection(uint64_t connection);

  // NOT_FOUND for an id that is unknown, released or expired, or owned by
  // another uid (whose tensors this caller must not learn about).
  absl::StatusOr<Lease> Get(const std::string& id, const Caller& caller) const;
  absl::Status Release(const std::string& id, const Caller& caller);
  // Every one of `ids` under one lock: each released as Release would; the
  // first failure is the answer, after the rest are done.
  absl::Status ReleaseAll(absl::Span<const absl::string_view> ids, const Caller& caller);
  // Extends the lease to now + ttl (default TTL when zero, capped at max).
  absl::StatusOr<absl::Time> Renew(const std::string& id, absl::Duration ttl, const Caller& caller);
  std::vector<Lease> List(const Caller& caller) const;

  // Ends every lease that expired at `now`, and forgets cached client
  // segments their owners unlinked; returns how many leases ended.
  int SweepExpired(absl::Time now);
  // Runs SweepExpired every `interval` on a thread of its own until the store
  // is destroyed.
  void StartSweeper(absl::Duration interval);

  StoreStats Stats() const;
  const std::string& instance() const { return instance_; }
  const StoreOptions& options() const { return options_; }

  // Unlinks segments under /dev/shm named "<prefix>-<instance>-..." whose
  // instance (pid and start time) is no longer running. Returns how many.
  static int SweepOrphans(const std::string& prefix);

 private:
  struct Entry {
    std::shared_ptr<const Tensor> tensor;
    absl::Time expires;
    uint64_t connection = 0;  // a connection's lease; 0 for a TTL lease
  };
  // Forgets the connection tie of an entry that is going, or turning TTL.
  void UntieLocked(absl::string_view id, Entry& entry) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // A region of `segment`, counted in the stats while it lives.
  absl::StatusOr<std::shared_ptr<ClientRegion>> CountedRegion(
      std::shared_ptr<ClientSegment> segment, uint64_t offset, uint64_t size);

  // "/<prefix>-<instance>-<128 random bits>".
  std::string NewSegmentName() const;

  const StoreOptions options_;
  const std::string instance_;

  mutable absl::Mutex mu_;
  absl::flat_hash_map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);
  uint64_t expired_ ABSL_GUARDED_BY(mu_) = 0;
  // The ids each connection's leases hold.
  absl::flat_hash_map<uint64_t, absl::flat_hash_set<std::string>> by_connection_
      ABSL_GUARDED_BY(mu_);
  uint64_t connection_leases_ ABSL_GUARDED_BY(mu_) = 0;

  // Quota and counts, shared with the deleters of segments and regions that
  // may outlive the store (a read in flight).
  struct Accounting;
  std::shared_ptr<Accounting> accounting_;

  std::unique_ptr<SegmentPool> pool_;

  ClientSegmentCache client_segments_;

  absl::Mutex sweeper_mu_;
  bool stopping_ ABSL_GUARDED_BY(sweeper_mu_) = false;  // the sweeper wakes at once
  std::thread sweeper_;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_TENSOR_STORE_H_
