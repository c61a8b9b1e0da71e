#include "server/call_metrics.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/strip.h"

namespace asarray::server {
namespace {

constexpr std::array<absl::string_view, kCallMethods> kMethodNames = {
    "Convert", "ConvertUpload", "ConvertBatch", "ConvertToData", "Read",
    "Release", "Renew",         "List",         "Stats",         "unknown"};

constexpr absl::string_view kServicePrefix = "/asarray.v1.AsArray/";

uint64_t NanosSince(std::chrono::steady_clock::time_point start) {
  return static_cast<uint64_t>(
      std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now() - start)
          .count());
}

class CallMetricsInterceptor final : public grpc::experimental::Interceptor {
 public:
  CallMetricsInterceptor(CallMetrics* metrics, CallMethod method)
      : metrics_(metrics), method_(method), start_(std::chrono::steady_clock::now()) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      metrics_->RecordCall(Transport::kGrpc, method_,
                           static_cast<absl::StatusCode>(methods->GetSendStatus().error_code()),
                           NanosSince(start_));
    }
    methods->Proceed();
  }

 private:
  CallMetrics* const metrics_;
  const CallMethod method_;
  const std::chrono::steady_clock::time_point start_;
};

}  // namespace

absl::string_view TransportName(Transport transport) {
  return transport == Transport::kGrpc ? "grpc" : "local";
}

absl::string_view CallMethodName(CallMethod method) {
  return kMethodNames[static_cast<size_t>(method)];
}

std::optional<CallMethod> CallMethodOfPath(absl::string_view path) {
  if (!absl::ConsumePrefix(&path, kServicePrefix)) return std::nullopt;
  // The last entry, "unknown", is no method of the service.
  for (int i = 0; i + 1 < kCallMethods; ++i) {
    if (path == kMethodNames[static_cast<size_t>(i)]) return static_cast<CallMethod>(i);
  }
  return std::nullopt;
}

int LatencyBucket(uint64_t ns) {
  return static_cast<int>(std::lower_bound(kLatencyBoundsNs.begin(), kLatencyBoundsNs.end(), ns) -
                          kLatencyBoundsNs.begin());
}

void CallMetrics::RecordCall(Transport transport, CallMethod method, absl::StatusCode code,
                             uint64_t ns) {
  int index = static_cast<int>(code);
  if (index < 0 || index >= kStatusCodes) index = static_cast<int>(absl::StatusCode::kUnknown);
  Method& m = methods_[static_cast<size_t>(transport)][static_cast<size_t>(method)];
  m.calls[static_cast<size_t>(index)].fetch_add(1, std::memory_order_relaxed);
  m.latency_buckets[static_cast<size_t>(LatencyBucket(ns))].fetch_add(1, std::memory_order_relaxed);
  m.latency_sum_ns.fetch_add(ns, std::memory_order_relaxed);
}

void CallMetrics::CountResult(uint64_t bytes, bool aliased) {
  (aliased ? aliased_bytes_ : copied_bytes_).fetch_add(bytes, std::memory_order_relaxed);
}

CallMetrics::Snapshot CallMetrics::TakeSnapshot() const {
  Snapshot out;
  for (size_t t = 0; t < methods_.size(); ++t) {
    for (size_t m = 0; m < methods_[t].size(); ++m) {
      const Method& from = methods_[t][m];
      MethodSnapshot& to = out.methods[t][m];
      for (size_t c = 0; c < from.calls.size(); ++c) {
        to.calls[c] = from.calls[c].load(std::memory_order_relaxed);
      }
      for (size_t b = 0; b < from.latency_buckets.size(); ++b) {
        to.latency_buckets[b] = from.latency_buckets[b].load(std::memory_order_relaxed);
      }
      to.latency_sum_ns = from.latency_sum_ns.load(std::memory_order_relaxed);
    }
  }
  out.copied_bytes = copied_bytes_.load(std::memory_order_relaxed);
  out.aliased_bytes = aliased_bytes_.load(std::memory_order_relaxed);
  return out;
}

grpc::experimental::Interceptor* CallMetricsInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  const std::optional<CallMethod> method = CallMethodOfPath(info->method());
  if (!method.has_value()) return nullptr;
  return new CallMetricsInterceptor(metrics_, *method);
}

}  // namespace asarray::server
