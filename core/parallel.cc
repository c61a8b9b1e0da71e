#include "core/parallel.h"

#include <algorithm>
#include <cstdlib>
#include <system_error>
#include <thread>
#include <vector>

namespace asarray {

int MaxParallelism() {
  static const int threads = [] {
    if (const char* env = std::getenv("ASARRAY_NUM_THREADS")) {
      const int n = std::atoi(env);
      if (n > 0) return n;
    }
    return std::max(1, static_cast<int>(std::thread::hardware_concurrency()));
  }();
  return threads;
}

void ParallelFor(int64_t total, int64_t min_grain, absl::FunctionRef<void(int64_t, int64_t)> fn) {
  if (total <= 0) return;
  const int64_t grain = std::max<int64_t>(1, min_grain);
  // ceil(total / grain) without the overflow of total + grain - 1.
  const int64_t pieces =
      std::min<int64_t>(MaxParallelism(), total / grain + (total % grain != 0 ? 1 : 0));
  if (pieces <= 1) {
    fn(0, total);
    return;
  }
  const int64_t step = total / pieces + (total % pieces != 0 ? 1 : 0);  // no overflow
  std::vector<std::thread> workers;
  workers.reserve(pieces - 1);
  for (int64_t p = 1; p < pieces; ++p) {
    const int64_t begin = p * step;  // < total, so no overflow
    const int64_t end = total - begin > step ? begin + step : total;
    if (begin >= end) continue;
    try {
      workers.emplace_back([=] { fn(begin, end); });
    } catch (const std::system_error&) {
      fn(begin, end);  // no thread to be had: do the piece here
    }
  }
  fn(0, std::min(total, step));
  for (std::thread& t : workers) t.join();
}

}  // namespace asarray
