// Cast throughput of the core against memcpy, on 512 MiB sources converted
// into freshly allocated output each repetition (as a result segment is).
// Prints one JSON object per case; bench/run_cast_bench.py adds numpy and
// torch on the same data and reports ratios.
//   cast_bench [--mib 512] [--reps 5]
#include <sys/mman.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "core/cast.h"
#include "core/parallel.h"

namespace {

using asarray::DType;
using Clock = std::chrono::steady_clock;

// Fresh anonymous memory, as the kernel hands it out: every page faults on
// first touch. Transparent huge pages are requested, as numpy does for large
// arrays.
class FreshBuffer {
 public:
  explicit FreshBuffer(size_t bytes) : bytes_(bytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      std::perror("mmap");
      std::exit(1);
    }
    madvise(p, bytes, MADV_HUGEPAGE);
    data_ = p;
  }
  ~FreshBuffer() { munmap(data_, bytes_); }
  FreshBuffer(const FreshBuffer&) = delete;
  FreshBuffer& operator=(const FreshBuffer&) = delete;
  void* data() const { return data_; }

 private:
  size_t bytes_;
  void* data_;
};

template <typename F>
double MedianSeconds(int reps, F&& body) {
  std::vector<double> times;
  for (int i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    body();
    times.push_back(std::chrono::duration<double>(Clock::now() - start).count());
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

struct Case {
  const char* name;
  DType from;
  DType to;
  bool transpose;
};

void Fill(void* data, DType dtype, int64_t n) {
  // Values every dtype holds exactly, so no case hits a slow special path.
  for (int64_t i = 0; i < n; ++i) {
    const int v = static_cast<int>(i % 97);
    switch (dtype) {
      case DType::kFloat64: static_cast<double*>(data)[i] = v * 0.25; break;
      case DType::kFloat32: static_cast<float*>(data)[i] = v * 0.25f; break;
      case DType::kInt64: static_cast<int64_t*>(data)[i] = v - 48; break;
      case DType::kUInt8: static_cast<uint8_t*>(data)[i] = static_cast<uint8_t>(v); break;
      default: break;
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  int64_t mib = 512;
  int reps = 5;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--mib") == 0) mib = std::atoll(argv[i + 1]);
    if (std::strcmp(argv[i], "--reps") == 0) reps = std::atoi(argv[i + 1]);
  }
  const Case cases[] = {
      {"float64->float32", DType::kFloat64, DType::kFloat32, false},
      {"float32->bfloat16", DType::kFloat32, DType::kBFloat16, false},
      {"int64->float32", DType::kInt64, DType::kFloat32, false},
      {"uint8->float32", DType::kUInt8, DType::kFloat32, false},
      {"float32 transposed->contiguous", DType::kFloat32, DType::kFloat32, true},
  };
  for (const Case& c : cases) {
    const size_t src_bytes = static_cast<size_t>(mib) << 20;
    const int64_t n = static_cast<int64_t>(src_bytes / asarray::ItemSize(c.from));
    const size_t dst_bytes = n * asarray::ItemSize(c.to);
    std::vector<unsigned char> src(src_bytes);
    Fill(src.data(), c.from, n);

    asarray::Layout src_layout{{n}, {1}, 0};
    asarray::Layout dst_layout{{n}, {1}, 0};
    if (c.transpose) {
      // A square matrix viewed transposed, copied into row-major order.
      int64_t side = 1;
      while ((side * 2) * (side * 2) <= n) side *= 2;
      src_layout = {{side, side}, {1, side}, 0};
      dst_layout = {{side, side}, {side, 1}, 0};
    }
    const double ours = MedianSeconds(reps, [&] {
      FreshBuffer out(dst_bytes);
      absl::Status s = asarray::CastCopy({src.data(), c.from, src_layout},
                                         {out.data(), c.to, dst_layout});
      if (!s.ok()) std::abort();
    });
    const double copy = MedianSeconds(reps, [&] {
      FreshBuffer out(src_bytes);
      std::memcpy(out.data(), src.data(), src_bytes);
    });
    std::printf(
        "{\"case\": \"%s\", \"source_mib\": %lld, \"shape\": \"%s\", \"ours_s\": %.6f, "
        "\"memcpy_s\": %.6f, \"threads\": %d}\n",
        c.name, static_cast<long long>(mib), asarray::DimsToString(src_layout.shape).c_str(),
        ours, copy, asarray::MaxParallelism());
    std::fflush(stdout);
  }
  return 0;
}
