// What /metrics reports beyond Stats: calls by transport, method and status
// code, their latencies, and the bytes of the results made. Recording is a
// few relaxed atomic increments into fixed arrays (no lock, no allocation),
// so that every call can afford it; Snapshot() reads them without stopping
// the recorders, each counter exactly and the whole not as of one instant.
// CallMetricsInterceptorFactory counts the gRPC calls; the local transport
// records its own. Thread-safe.
#ifndef ASARRAY_SERVER_CALL_METRICS_H_
#define ASARRAY_SERVER_CALL_METRICS_H_

#include <array>
#include <atomic>
#include <cstdint>
#include <optional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "grpcpp/support/server_interceptor.h"

namespace asarray::server {

enum class Transport { kGrpc, kLocal };
inline constexpr int kTransports = 2;
absl::string_view TransportName(Transport transport);

// The AsArray service's methods, and kUnknown: a local request whose method
// is not known (it does not parse, names none, or came while shutting down).
enum class CallMethod {
  kConvert,
  kConvertUpload,
  kConvertBatch,
  kConvertToData,
  kRead,
  kRelease,
  kRenew,
  kList,
  kStats,
  kUnknown,
};
inline constexpr int kCallMethods = 10;
absl::string_view CallMethodName(CallMethod method);
// The method of a gRPC path, "/asarray.v1.AsArray/Convert"; nullopt for
// other services' (health, reflection) and unknown ones.
std::optional<CallMethod> CallMethodOfPath(absl::string_view path);

// The latency histogram's upper bounds in nanoseconds: 5 us to 10 s, in
// steps of 1, 2.5 and 5. A call of exactly a bound's length counts in its
// bucket (Prometheus's "le"); longer ones than the last, in the +Inf bucket.
inline constexpr std::array<uint64_t, 20> kLatencyBoundsNs = {
    5'000,       10'000,        25'000,        50'000,        100'000,
    250'000,     500'000,       1'000'000,     2'500'000,     5'000'000,
    10'000'000,  25'000'000,    50'000'000,    100'000'000,   250'000'000,
    500'000'000, 1'000'000'000, 2'500'000'000, 5'000'000'000, 10'000'000'000};
inline constexpr int kLatencyBuckets = static_cast<int>(kLatencyBoundsNs.size()) + 1;
// The bucket of a call that took `ns`.
int LatencyBucket(uint64_t ns);

inline constexpr int kStatusCodes = 17;  // OK (0) to UNAUTHENTICATED (16)

class CallMetrics {
 public:
  struct MethodSnapshot {
    std::array<uint64_t, kStatusCodes> calls{};               // by status code
    std::array<uint64_t, kLatencyBuckets> latency_buckets{};  // each bucket alone
    uint64_t latency_sum_ns = 0;
  };
  struct Snapshot {
    // [transport][method]
    std::array<std::array<MethodSnapshot, kCallMethods>, kTransports> methods{};
    uint64_t copied_bytes = 0;
    uint64_t aliased_bytes = 0;
  };

  CallMetrics() = default;
  CallMetrics(const CallMetrics&) = delete;
  CallMetrics& operator=(const CallMetrics&) = delete;

  // A call that ended with `code` after `ns`. A code outside gRPC's counts
  // as UNKNOWN.
  void RecordCall(Transport transport, CallMethod method, absl::StatusCode code, uint64_t ns);
  // A result of `bytes` (elements times item size) that aliases the
  // caller's memory, or holds a copy.
  void CountResult(uint64_t bytes, bool aliased);

  Snapshot TakeSnapshot() const;

 private:
  struct Method {
    std::array<std::atomic<uint64_t>, kStatusCodes> calls{};
    std::array<std::atomic<uint64_t>, kLatencyBuckets> latency_buckets{};
    std::atomic<uint64_t> latency_sum_ns{0};
  };
  std::array<std::array<Method, kCallMethods>, kTransports> methods_;
  std::atomic<uint64_t> copied_bytes_{0};
  std::atomic<uint64_t> aliased_bytes_{0};
};

// Counts every call of the AsArray service that gRPC serves: its method, the
// status sent (after UnparsableRequestInterceptorFactory's rewrite, when
// registered after it), and the time from the call's start to that status.
class CallMetricsInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  // REQUIRES: `metrics` outlives the gRPC server.
  explicit CallMetricsInterceptorFactory(CallMetrics* metrics) : metrics_(metrics) {}
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;

 private:
  CallMetrics* const metrics_;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_CALL_METRICS_H_
