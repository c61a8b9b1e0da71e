// GPU benchmarks, each against a baseline measured in the same run:
//   h2d     1 GiB float32 from a client's shared-memory region onto cuda:0
//           through asarrayd (convert, copy), vs a bare cudaMemcpy of the
//           same bytes from pinned memory;
//   cast    float32->bfloat16 and float64->float32 on the device (the cast
//           kernels), vs a device-to-device cudaMemcpy, both as bytes read
//           plus written per second;
//   handle  p50 latency of a 1 KiB conversion that allocates, fills and
//           exports a new CUDA allocation and returns its IPC handle, vs the
//           same conversion on the CPU returning a shared-memory handle.
// The server runs in this process; no handle is opened here (same-process
// CUDA IPC is not valid). Prints one JSON object per line, then a table.
//   cuda_bench [--h2d_mib=1024] [--reps=5]
#include <cuda_runtime_api.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "client/client.h"
#include "server/cuda_backend.h"
#include "server/server.h"

namespace asarray {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Runs `fn` `reps` times after one warm-up; the median seconds.
double Time(int reps, const std::function<void()>& fn) {
  fn();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    const auto start = Clock::now();
    fn();
    t.push_back(Seconds(Clock::now() - start));
  }
  return Median(t);
}

void Check(bool ok, const std::string& what) {
  if (!ok) {
    std::fprintf(stderr, "cuda_bench: %s\n", what.c_str());
    std::exit(1);
  }
}
void Check(const absl::Status& s, const std::string& what) {
  Check(s.ok(), what + ": " + s.ToString());
}
void CheckCuda(cudaError_t e, const std::string& what) {
  Check(e == cudaSuccess, what + ": " + cudaGetErrorString(e));
}

std::vector<std::string> g_table;

void Row(const std::string& name, const std::string& ours, const std::string& baseline,
         double ratio) {
  g_table.push_back(absl::StrCat("| ", name, " | ", ours, " | ", baseline, " | ",
                                 absl::StrFormat("%.2f", ratio), " |"));
}

std::string GBps(double bytes, double seconds) {
  return absl::StrFormat("%.1f GB/s", bytes / seconds / 1e9);
}

v1::ConvertRequest RegionRequest(const SharedRegion& region, int64_t n, DType dtype,
                                 const ConvertOptions& options) {
  v1::ConvertRequest r;
  v1::SharedMemoryArray* a = r.mutable_source()->mutable_shared_memory();
  a->set_name(region.name());
  a->set_size(region.size());
  a->set_dtype(DTypeToProto(dtype));
  LayoutToProto(Layout{{n}, {1}, 0}, a->mutable_layout());
  OptionsToProto(options, r.mutable_options());
  return r;
}

// Seconds per conversion, median of `reps` after a warm-up; the release
// that follows each is not timed. The handle is not opened.
// With reps 0: the one call, timed.
double TimeConvert(Client& client, const v1::ConvertRequest& request, int reps) {
  std::vector<double> t;
  const int warmup = reps > 0 ? 1 : 0;
  for (int i = 0; i < reps + warmup + (reps == 0 ? 1 : 0); ++i) {
    const auto start = Clock::now();
    absl::StatusOr<v1::ConvertResponse> r = client.Convert(request);
    const double s = Seconds(Clock::now() - start);
    Check(r.status(), "convert");
    Check(client.Release(r->handle().id()), "release");
    if (i >= warmup) t.push_back(s);
  }
  return Median(t);
}

void HostToDevice(Client& client, uint64_t mib, int reps) {
  const uint64_t bytes = mib << 20;
  const int64_t n = static_cast<int64_t>(bytes / 4);
  SharedRegion region = SharedRegion::Create(bytes).value();
  for (int64_t i = 0; i < n; ++i) static_cast<float*>(region.data())[i] = static_cast<float>(i);
  ConvertOptions to_cuda;
  to_cuda.device = Device{Device::Type::kCUDA, 0};
  const v1::ConvertRequest request = RegionRequest(region, n, DType::kFloat32, to_cuda);
  // The first use maps the region and stages the copy; the second page-locks
  // it; from then on the copy reads it directly (see ClientSegment).
  const double first = TimeConvert(client, request, 0);
  const double second = TimeConvert(client, request, 0);
  const double ours = TimeConvert(client, request, reps);
  void* pinned = nullptr;
  void* device = nullptr;
  CheckCuda(cudaHostAlloc(&pinned, bytes, cudaHostAllocDefault), "pinned allocation");
  CheckCuda(cudaMalloc(&device, bytes), "device allocation");
  std::memcpy(pinned, region.data(), bytes);
  const double pinned_copy = Time(
      reps, [&] { CheckCuda(cudaMemcpy(device, pinned, bytes, cudaMemcpyHostToDevice), "copy"); });
  const double pageable_copy = Time(reps, [&] {
    CheckCuda(cudaMemcpy(device, region.data(), bytes, cudaMemcpyHostToDevice), "copy");
  });
  cudaFreeHost(pinned);
  cudaFree(device);
  std::printf(
      "{\"bench\": \"h2d_%lluMiB\", \"asarrayd_GBps\": %.2f, \"first_use_GBps\": %.2f, "
      "\"second_use_GBps\": %.2f, \"pinned_memcpy_GBps\": %.2f, "
      "\"pageable_memcpy_GBps\": %.2f, \"ratio_vs_pinned\": %.3f, "
      "\"first_use_ratio\": %.3f}\n",
      static_cast<unsigned long long>(mib), bytes / ours / 1e9, bytes / first / 1e9,
      bytes / second / 1e9, bytes / pinned_copy / 1e9, bytes / pageable_copy / 1e9,
      pinned_copy / ours, pinned_copy / first);
  Row(absl::StrCat(mib, " MiB float32 shm region -> cuda:0, region reused"), GBps(bytes, ours),
      GBps(bytes, pinned_copy) + " pinned cudaMemcpy", pinned_copy / ours);
  Row(absl::StrCat(mib, " MiB float32 shm region -> cuda:0, first use"), GBps(bytes, first),
      GBps(bytes, pinned_copy) + " pinned cudaMemcpy", pinned_copy / first);
  Row(absl::StrCat(mib, " MiB float32 shm region -> cuda:0, second use (pins)"),
      GBps(bytes, second), GBps(bytes, pinned_copy) + " pinned cudaMemcpy", pinned_copy / second);
}

void DeviceCast(server::CudaBackend& cuda, DType from, DType to, int reps) {
  const int64_t n = int64_t{256} << 20;  // elements
  const Layout layout{{n}, {1}, 0};
  const uint64_t src_bytes = n * ItemSize(from), dst_bytes = n * ItemSize(to);
  auto src = cuda.Allocate(0, src_bytes).value();
  auto dst = cuda.Allocate(0, dst_bytes).value();
  CheckCuda(cudaMemset(src->data(), 0x3c, src_bytes), "memset");
  const double cast = Time(reps, [&] {
    Check(cuda.CastDeviceToDevice(0, {src->data(), from, layout}, 0, {dst->data(), to, layout}),
          "cast");
  });
  auto copy_dst = cuda.Allocate(0, src_bytes).value();
  const double copy = Time(reps, [&] {
    CheckCuda(cudaMemcpy(copy_dst->data(), src->data(), src_bytes, cudaMemcpyDeviceToDevice),
              "copy");
    CheckCuda(cudaDeviceSynchronize(), "sync");
  });
  const double cast_bw = (src_bytes + dst_bytes) / cast;
  const double copy_bw = 2.0 * src_bytes / copy;
  std::printf(
      "{\"bench\": \"cast_%s_%s\", \"elements\": %lld, \"cast_GBps\": %.1f, "
      "\"d2d_copy_GBps\": %.1f, \"ratio\": %.3f}\n",
      std::string(DTypeName(from)).c_str(), std::string(DTypeName(to)).c_str(),
      static_cast<long long>(n), cast_bw / 1e9, copy_bw / 1e9, cast_bw / copy_bw);
  Row(absl::StrCat("cast ", DTypeName(from), " -> ", DTypeName(to), " on cuda:0 (read + write)"),
      GBps(src_bytes + dst_bytes, cast), GBps(2.0 * src_bytes, copy) + " D2D cudaMemcpy",
      cast_bw / copy_bw);
}

void HandleLatency(Client& client) {
  constexpr int64_t n = 256;  // 1 KiB of float32
  std::vector<float> values(n, 1.5f);
  ConvertOptions cuda_copy, cpu_copy, keep;
  cuda_copy.device = Device{Device::Type::kCUDA, 0};
  cuda_copy.copy = true;
  cpu_copy.copy = true;
  // Held tensors as sources: a copy of one makes and exports a new allocation.
  MappedTensor on_cpu =
      client.ConvertInline(values.data(), n * 4, DType::kFloat32, {{n}, {1}, 0}, keep).value();
  absl::StatusOr<v1::ConvertResponse> on_gpu = [&] {
    v1::ConvertRequest r;
    v1::InlineArray* a = r.mutable_source()->mutable_inline_array();
    a->set_dtype(v1::DTYPE_FLOAT32);
    LayoutToProto(Layout{{n}, {1}, 0}, a->mutable_layout());
    a->set_storage(values.data(), n * 4);
    OptionsToProto(cuda_copy, r.mutable_options());
    return client.Convert(r);
  }();
  Check(on_gpu.status(), "upload to cuda");
  auto held = [](const std::string& id, const ConvertOptions& options) {
    v1::ConvertRequest r;
    r.mutable_source()->set_tensor_id(id);
    OptionsToProto(options, r.mutable_options());
    return r;
  };
  const double gpu_copy = TimeConvert(client, held(on_gpu->handle().id(), cuda_copy), 300);
  const double cpu_copy_t = TimeConvert(client, held(on_cpu.id(), cpu_copy), 300);
  Check(client.Release(on_gpu->handle().id()), "release");
  std::printf(
      "{\"bench\": \"handle_1KiB\", \"cuda_copy_p50_us\": %.1f, \"cpu_copy_p50_us\": %.1f}\n",
      gpu_copy * 1e6, cpu_copy_t * 1e6);
  Row("1 KiB copy -> new CUDA IPC handle (p50)", absl::StrFormat("%.0f us", gpu_copy * 1e6),
      absl::StrFormat("%.0f us", cpu_copy_t * 1e6) + " CPU shm handle", cpu_copy_t / gpu_copy);
}

int Main(int argc, char** argv) {
  uint64_t mib = 1024;
  int reps = 5;
  for (int i = 1; i < argc; ++i) {
    absl::string_view arg = argv[i];
    if (absl::ConsumePrefix(&arg, "--h2d_mib=")) Check(absl::SimpleAtoi(arg, &mib), "--h2d_mib");
    if (absl::ConsumePrefix(&arg, "--reps=")) Check(absl::SimpleAtoi(arg, &reps), "--reps");
  }
  std::unique_ptr<server::CudaBackend> cuda = server::CudaBackend::Create();
  if (cuda->device_count() == 0) {
    std::printf("cuda_bench: skipped: %s\n", cuda->Describe().c_str());
    return 0;
  }
  std::printf("cuda_bench: %s\n", cuda->Describe().c_str());
  char dir[] = "/tmp/asarrayd-cuda-bench-XXXXXX";
  Check(mkdtemp(dir) != nullptr, "mkdtemp");
  server::ServerOptions options;
  options.listen = {absl::StrCat("unix:", dir, "/sock/asarrayd.sock")};
  options.store.prefix = absl::StrCat("asarrayd-cuda-bench-", getpid());
  options.sweep_orphans = false;
  auto server = server::Server::Start(options);
  Check(server.status(), "server");
  std::unique_ptr<Client> client = Client::Connect((*server)->addresses().front()).value();

  HostToDevice(*client, mib, reps);
  DeviceCast(*cuda, DType::kFloat32, DType::kBFloat16, reps);
  DeviceCast(*cuda, DType::kFloat64, DType::kFloat32, reps);
  HandleLatency(*client);

  client.reset();
  server->reset();
  std::printf("\n| benchmark | asarrayd | baseline (same run) | ratio |\n|---|---|---|---|\n");
  for (const std::string& row : g_table) std::printf("%s\n", row.c_str());
  return 0;
}

}  // namespace
}  // namespace asarray

int main(int argc, char** argv) { return asarray::Main(argc, argv); }
