#include <algorithm>
#include <cstdint>

#include "core/dtype_dispatch.h"
#include "core/element_convert.h"
#include "core/layout.h"
#include "server/cuda/cast_kernels.h"

namespace asarray::server {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

// The loop, by value: a kernel parameter (about 1.5 KiB at kMaxRank).
struct KernelLoop {
  int rank;
  int64_t size[kMaxRank];
  int64_t src[kMaxRank];
  int64_t dst[kMaxRank];
};

template <typename T, int K>
struct alignas(sizeof(T) * K) Vec {
  T v[K];
};

__device__ __forceinline__ int64_t ThreadIndex() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t GridSize() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// Any layout: each thread finds its element's offsets from its linear index.
template <typename S, typename D>
__global__ void CastStridedKernel(const S* __restrict__ src, D* __restrict__ dst, KernelLoop loop,
                                  int64_t begin, int64_t count, int64_t dst_origin) {
  for (int64_t i = ThreadIndex(); i < count; i += GridSize()) {
    int64_t rest = begin + i, s = 0, d = 0;
    for (int k = loop.rank - 1; k >= 0; --k) {
      const int64_t index = rest % loop.size[k];
      rest /= loop.size[k];
      s += index * loop.src[k];
      d += index * loop.dst[k];
    }
    dst[d - dst_origin] = Convert<D>(src[s]);
  }
}

// Both sides contiguous and aligned to K elements: K elements a thread, in
// one vector load and one vector store.
template <typename S, typename D, int K>
__global__ void CastContiguousKernel(const S* __restrict__ src, D* __restrict__ dst, int64_t n) {
  const int64_t vectors = n / K;
  const auto* in = reinterpret_cast<const Vec<S, K>*>(src);
  auto* out = reinterpret_cast<Vec<D, K>*>(dst);
  for (int64_t i = ThreadIndex(); i < vectors; i += GridSize()) {
    const Vec<S, K> a = in[i];
    Vec<D, K> b;
#pragma unroll
    for (int j = 0; j < K; ++j) b.v[j] = Convert<D>(a.v[j]);
    out[i] = b;
  }
  const int64_t tail = vectors * K + ThreadIndex();
  if (tail < n) dst[tail] = Convert<D>(src[tail]);
}

int Blocks(int64_t work) {
  return static_cast<int>(std::clamp<int64_t>((work + kThreads - 1) / kThreads, 1, kMaxBlocks));
}

bool Aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

template <typename S, typename D>
void Launch(const S* src, D* dst, const std::vector<LoopDim>& loop, int64_t begin, int64_t count,
            int64_t dst_origin, cudaStream_t stream) {
  constexpr size_t kWidest = sizeof(S) > sizeof(D) ? sizeof(S) : sizeof(D);
  constexpr int K = kWidest >= 16 ? 1 : static_cast<int>(16 / kWidest);
  const bool contiguous = loop.size() == 1 && loop[0].src == 1 && loop[0].dst == 1;
  if (contiguous) {
    const S* s = src + begin;
    D* d = dst + (begin - dst_origin);
    if (Aligned(s, sizeof(S) * K) && Aligned(d, sizeof(D) * K)) {
      CastContiguousKernel<S, D, K><<<Blocks(count / K), kThreads, 0, stream>>>(s, d, count);
      return;
    }
  }
  KernelLoop args{};
  args.rank = static_cast<int>(loop.size());
  for (size_t k = 0; k < loop.size(); ++k) {
    args.size[k] = loop[k].size;
    args.src[k] = loop[k].src;
    args.dst[k] = loop[k].dst;
  }
  CastStridedKernel<S, D>
      <<<Blocks(count), kThreads, 0, stream>>>(src, dst, args, begin, count, dst_origin);
}

}  // namespace

cudaError_t LaunchCast(DType src_dtype, const void* src, DType dst_dtype, void* dst,
                       const std::vector<LoopDim>& loop, int64_t begin, int64_t count,
                       int64_t dst_origin, cudaStream_t stream) {
  if (count <= 0) return cudaSuccess;
  if (loop.size() > static_cast<size_t>(kMaxRank)) return cudaErrorInvalidValue;
  DispatchDType(src_dtype, [&](auto src_tag) {
    using S = typename decltype(src_tag)::type;
    DispatchDType(dst_dtype, [&](auto dst_tag) {
      using D = typename decltype(dst_tag)::type;
      Launch(static_cast<const S*>(src), static_cast<D*>(dst), loop, begin, count, dst_origin,
             stream);
    });
  });
  return cudaGetLastError();
}

}  // namespace asarray::server
