#include "server/segment_pool.h"

#include <pthread.h>
#include <sched.h>
#include <unistd.h>

#include <algorithm>
#include <utility>

namespace asarray::server {

SegmentPool::SegmentPool(uint64_t max_bytes, std::function<std::string()> make_name)
    : max_bytes_(max_bytes), make_name_(std::move(make_name)) {
  if (max_bytes_ >= kMinBytes) thread_ = std::thread([this] { Run(); });
}

SegmentPool::~SegmentPool() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

std::unique_ptr<ShmSegment> SegmentPool::Take(uint64_t bytes, ShmSegment::Kind kind) {
  if (bytes < kMinBytes || bytes > max_bytes_) return nullptr;
  std::unique_ptr<ShmSegment> segment;
  const Key key{bytes, kind};
  {
    absl::MutexLock lock(&mu_);
    auto it = ready_.find(key);
    if (it != ready_.end() && !it->second.empty()) {
      segment = std::move(it->second.back());
      it->second.pop_back();
      bytes_ -= bytes;
      ++hits_;
    }
    wanted_.push_back(key);
  }
  return segment;
}

SegmentPool::Foreground SegmentPool::EnterForeground() {
  absl::MutexLock lock(&mu_);
  ++foreground_;
  return Foreground(this);
}

SegmentPool::Foreground::~Foreground() {
  if (pool_ == nullptr) return;
  absl::MutexLock lock(&pool_->mu_);
  --pool_->foreground_;
}

bool SegmentPool::WaitForBackground() {
  absl::MutexLock lock(&mu_);
  mu_.Await(absl::Condition(this, &SegmentPool::StoppingOrIdle));
  return !stopping_;
}

uint64_t SegmentPool::bytes() const {
  absl::MutexLock lock(&mu_);
  return bytes_;
}

bool SegmentPool::Holds(uint64_t bytes, ShmSegment::Kind kind) const {
  absl::MutexLock lock(&mu_);
  auto it = ready_.find(Key{bytes, kind});
  return it != ready_.end() && !it->second.empty();
}

uint64_t SegmentPool::hits() const {
  absl::MutexLock lock(&mu_);
  return hits_;
}

void SegmentPool::Run() {
  // Refilling is background work: it waits for marked transfers, and runs
  // only on otherwise idle CPU time (best effort; ignored if refused).
  sched_param idle{};
  pthread_setschedparam(pthread_self(), SCHED_IDLE, &idle);
  mu_.Lock();
  for (;;) {
    mu_.Await(absl::Condition(this, &SegmentPool::StoppingOrWanted));
    if (stopping_) break;
    const Key key = wanted_.front();
    const uint64_t size = key.first;
    wanted_.pop_front();
    if (!ready_[key].empty()) continue;  // one warm segment per size and kind is enough
    // Make room by dropping segments of other sizes, least recently wanted last.
    std::vector<std::unique_ptr<ShmSegment>> evicted;
    for (auto it = ready_.begin(); bytes_ + size > max_bytes_ && it != ready_.end(); ++it) {
      while (!it->second.empty() && bytes_ + size > max_bytes_) {
        bytes_ -= it->first.first;
        evicted.push_back(std::move(it->second.back()));
        it->second.pop_back();
      }
    }
    mu_.Unlock();
    evicted.clear();
    // Reserve and touch every page once, a step at a time: the costly first
    // write happens here, not while a client waits.
    absl::StatusOr<std::unique_ptr<ShmSegment>> segment = ShmSegment::CreateUnreserved(
        key.second, size, key.second == ShmSegment::Kind::kNamed ? make_name_() : "");
    for (uint64_t at = 0; segment.ok() && at < size; at += kStepBytes) {
      if (!WaitForBackground()) {
        segment = absl::CancelledError("stopping");
        break;
      }
      absl::Status prepared = (*segment)->Prepare(at, std::min(kStepBytes, size - at));
      if (!prepared.ok()) segment = prepared;
    }
    if (segment.ok()) (*segment)->set_touched();
    mu_.Lock();
    if (segment.ok() && !stopping_) {
      bytes_ += size;
      ready_[key].push_back(*std::move(segment));
    }
  }
  ready_.clear();
  mu_.Unlock();
}

}  // namespace asarray::server
