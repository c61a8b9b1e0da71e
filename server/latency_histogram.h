// Latencies in nanoseconds, counted into buckets 1/8 of a power of two wide
// (values below 8 exactly), so that a quantile is known to within 12.5%.
// Lock-free: Record() is two relaxed atomic increments. Thread-safe.
#ifndef ASARRAY_SERVER_LATENCY_HISTOGRAM_H_
#define ASARRAY_SERVER_LATENCY_HISTOGRAM_H_

#include <array>
#include <atomic>
#include <cstdint>

namespace asarray::server {

class LatencyHistogram {
 public:
  void Record(uint64_t ns) {
    buckets_[Bucket(ns)].fetch_add(1, std::memory_order_relaxed);
    count_.fetch_add(1, std::memory_order_relaxed);
  }
  uint64_t count() const { return count_.load(std::memory_order_relaxed); }
  // The upper bound of the bucket that holds quantile `q` (0 < q <= 1) of
  // what was recorded; 0 when nothing was.
  uint64_t Quantile(double q) const {
    uint64_t total = 0;
    for (const auto& b : buckets_) total += b.load(std::memory_order_relaxed);
    if (total == 0) return 0;
    const auto rank = static_cast<uint64_t>(q * static_cast<double>(total) + 0.5);
    uint64_t seen = 0;
    for (int i = 0; i < kBuckets; ++i) {
      seen += buckets_[i].load(std::memory_order_relaxed);
      if (seen >= rank && seen > 0) return UpperBound(i);
    }
    return UpperBound(kBuckets - 1);
  }

  // Exposed for tests.
  static int Bucket(uint64_t ns) {
    if (ns < 8) return static_cast<int>(ns);
    const int e = 63 - __builtin_clzll(ns);  // 2^e <= ns < 2^(e+1), e >= 3
    const int index = (e - 2) * 8 + static_cast<int>((ns >> (e - 3)) & 7);
    return index < kBuckets ? index : kBuckets - 1;
  }
  static uint64_t UpperBound(int bucket) {
    if (bucket < 8) return static_cast<uint64_t>(bucket);
    const int e = bucket / 8 + 2;
    const uint64_t sub = static_cast<uint64_t>(bucket % 8);
    return ((8 + sub + 1) << (e - 3)) - 1;
  }

 private:
  static constexpr int kBuckets = 8 * 40;  // to about 2^42 ns, over an hour
  std::array<std::atomic<uint64_t>, kBuckets> buckets_{};
  std::atomic<uint64_t> count_{0};
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_LATENCY_HISTOGRAM_H_
