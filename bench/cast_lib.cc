// The core's casts and the server's result memory behind a C ABI, for
// bench/cast_bench.py, which loads this library into the same process as
// numpy and torch so that all contenders run interleaved, rep by rep, and are
// measured by the same code. Nothing here is timed: the caller times.
#include <sys/mman.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/strings/str_cat.h"
#include "core/cast.h"
#include "core/dtype.h"
#include "core/parallel.h"
#include "server/segment_pool.h"
#include "server/shm.h"
#include "wire/posix_util.h"

namespace {

using asarray::server::SegmentPool;
using asarray::server::ShmSegment;

// Where a cast writes: what each kind of destination stands for.
enum Destination : int {
  kFreshAnonymous = 0,  // mmap + MADV_HUGEPAGE, faulted by the writer (as numpy's output)
  kSegmentCold = 1,     // a result memfd as the server makes one on a pool miss
  kSegmentPooled = 2,   // a result memfd the segment pool prepared ahead
  kPrefaulted = 3,      // anonymous memory whose every page is in already
};

// The segment pool, as the server runs it. Its refill thread stays paused
// (a foreground mark is held) except inside ab_pool_fill, so that it never
// runs beside a timed contender.
struct Pool {
  SegmentPool pool{
      uint64_t{2} << 30,
      [] { return absl::StrCat("/asarrayd-castbench-", getpid(), "-", asarray::RandomHex128()); }};
  std::optional<SegmentPool::Foreground> paused{pool.EnterForeground()};
};

Pool& ThePool() {
  static Pool* pool = new Pool();  // never destroyed: the process exits with it
  return *pool;
}

}  // namespace

extern "C" {

// The threads the core's casts use at most.
int ab_threads() { return asarray::MaxParallelism(); }

// Fresh memory of `bytes` for a destination kind; null on failure. Pass the
// result to ab_data and ab_free.
void* ab_alloc(int kind, uint64_t bytes) {
  absl::StatusOr<std::unique_ptr<ShmSegment>> segment = nullptr;
  switch (kind) {
    case kFreshAnonymous:
      segment = ShmSegment::CreateUnreserved(ShmSegment::Kind::kPrivate, bytes);
      break;
    case kPrefaulted:
      segment = ShmSegment::Create(ShmSegment::Kind::kPrivate, bytes);
      break;
    case kSegmentCold:
      segment = ShmSegment::Create(ShmSegment::Kind::kMemfd, bytes);
      break;
    case kSegmentPooled:
      segment = ThePool().pool.Take(bytes, ShmSegment::Kind::kMemfd);
      break;
    default:
      break;
  }
  return segment.ok() ? segment->release() : nullptr;
}

void* ab_data(void* memory) { return static_cast<ShmSegment*>(memory)->data(); }

void ab_free(void* memory) { delete static_cast<ShmSegment*>(memory); }

// Lets the pool prepare one memfd segment of `bytes`, and waits until it
// has (or 60 s pass); 0 when one is ready.
int ab_pool_fill(uint64_t bytes) {
  Pool& p = ThePool();
  const ShmSegment::Kind kind = ShmSegment::Kind::kMemfd;
  if (p.pool.Holds(bytes, kind)) return 0;
  // A miss tells the pool which size is wanted (a hit is dropped at once).
  p.pool.Take(bytes, kind);
  p.paused.reset();
  int rc = -1;
  for (int i = 0; i < 60000 && rc != 0; ++i) {
    if (p.pool.Holds(bytes, kind)) {
      rc = 0;
    } else {
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
  }
  p.paused.emplace(p.pool.EnterForeground());
  return rc;
}

// Casts the view (shape, strides in elements) of `src`, dtype `from`, into
// `dst` as a row-major array of dtype `to`; 0 on success.
int ab_cast(const void* src, const char* from, const int64_t* shape, const int64_t* strides,
            int rank, void* dst, const char* to) {
  absl::StatusOr<asarray::DType> s = asarray::ParseDType(from);
  absl::StatusOr<asarray::DType> d = asarray::ParseDType(to);
  if (!s.ok() || !d.ok() || rank < 0) return -1;
  asarray::Layout src_layout{asarray::Dims(shape, shape + rank),
                             asarray::Dims(strides, strides + rank), 0};
  asarray::Layout dst_layout{src_layout.shape, asarray::ContiguousStrides(src_layout.shape), 0};
  return asarray::CastCopy({src, *s, src_layout}, {dst, *d, dst_layout}).ok() ? 0 : -1;
}

// Faults in every page of [data, data + bytes) for writing, in one call.
int ab_populate(void* data, uint64_t bytes) {
  return madvise(data, bytes, 23 /* MADV_POPULATE_WRITE */) == 0 ? 0 : errno;
}

}  // extern "C"
