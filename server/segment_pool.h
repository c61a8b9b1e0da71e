// Keeps fresh segments of recently requested sizes created, mapped and with
// every page touched, ahead of demand, so that a conversion that takes one
// pays no page faults (on virtual machines the first write to a fresh page
// costs far more than the copy itself). A pooled segment has never been
// handed out: its name is new to every client, so no old mapping can see
// what is written into it. Thread-safe; one thread of its own refills it,
// in steps of kStepBytes, and only while no foreground transfer is marked:
// preparing pages competes with a transfer for the CPUs and the memory
// bandwidth it needs.
#ifndef ASARRAY_SERVER_SEGMENT_POOL_H_
#define ASARRAY_SERVER_SEGMENT_POOL_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/shm.h"

namespace asarray::server {

class SegmentPool {
 public:
  // Sizes below this are cheap to make on demand and are never pooled.
  static constexpr uint64_t kMinBytes = 1 << 20;
  // Refilling pauses between steps of this many bytes while a transfer runs.
  static constexpr uint64_t kStepBytes = 2 << 20;

  // Marks a transfer in progress for as long as it lives (see above).
  class Foreground {
   public:
    Foreground(Foreground&& other) noexcept : pool_(other.pool_) { other.pool_ = nullptr; }
    Foreground& operator=(Foreground&&) = delete;
    Foreground(const Foreground&) = delete;
    ~Foreground();

   private:
    friend class SegmentPool;
    explicit Foreground(SegmentPool* pool) : pool_(pool) {}
    SegmentPool* pool_;
  };

  // Holds at most `max_bytes` of warm segments; names come from `make_name`.
  SegmentPool(uint64_t max_bytes, std::function<std::string()> make_name);
  // Stops refilling; every pooled segment is unlinked.
  ~SegmentPool();
  SegmentPool(const SegmentPool&) = delete;
  SegmentPool& operator=(const SegmentPool&) = delete;

  // A warm segment of exactly `bytes` and of `kind`, or null when none is
  // ready. Either way, one like it is prepared for next time (if it fits).
  std::unique_ptr<ShmSegment> Take(uint64_t bytes,
                                   ShmSegment::Kind kind = ShmSegment::Kind::kNamed);

  Foreground EnterForeground();

  uint64_t bytes() const;  // held now
  // Whether a warm segment of exactly `bytes` and of `kind` is ready.
  bool Holds(uint64_t bytes, ShmSegment::Kind kind) const;
  uint64_t hits() const;  // Take() calls that got a segment

 private:
  void Run();
  // Waits until no transfer runs; false once stopping.
  bool WaitForBackground();
  // The conditions the pool's waits wait for (absl::Mutex::Await).
  bool StoppingOrIdle() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || foreground_ == 0;
  }
  bool StoppingOrWanted() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return stopping_ || (!wanted_.empty() && foreground_ == 0);
  }

  const uint64_t max_bytes_;
  const std::function<std::string()> make_name_;

  // Waiters wait with Await, which absl::Mutex wakes as the state changes:
  // there is no condition variable to notify.
  mutable absl::Mutex mu_;
  using Key = std::pair<uint64_t, ShmSegment::Kind>;  // size, kind
  std::map<Key, std::vector<std::unique_ptr<ShmSegment>>> ready_ ABSL_GUARDED_BY(mu_);
  std::deque<Key> wanted_ ABSL_GUARDED_BY(mu_);
  uint64_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  int foreground_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread thread_;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_SEGMENT_POOL_H_
