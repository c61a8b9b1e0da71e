// Splits a range of independent work items across the machine's cores.
// Thread-safe: concurrent callers each get their own threads, so one large
// conversion never waits behind another caller's queue.
#ifndef ASARRAY_CORE_PARALLEL_H_
#define ASARRAY_CORE_PARALLEL_H_

#include <cstdint>

#include "absl/functional/function_ref.h"

namespace asarray {

// Number of threads ParallelFor uses at most (the hardware concurrency,
// overridable with the environment variable ASARRAY_NUM_THREADS).
int MaxParallelism();

// Calls fn(begin, end) on disjoint pieces that cover [0, total). Pieces are at
// least `min_grain` items, so small ranges run inline on the calling thread.
// Returns when every piece is done.
void ParallelFor(int64_t total, int64_t min_grain,
                 absl::FunctionRef<void(int64_t begin, int64_t end)> fn);

}  // namespace asarray

#endif  // ASARRAY_CORE_PARALLEL_H_
