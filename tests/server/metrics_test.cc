// The text exposition of /metrics (exact text, escaping, cumulative
// histograms), the counters behind it, the metrics address and the HTTP
// endpoint, in process. tests/server/metrics_endpoint_test.py scrapes a real
// asarrayd and has promtool check what it serves.
#include "server/metrics.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/call_metrics.h"
#include "server/metrics_endpoint.h"

namespace asarray::server {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(RenderMetricsTest, WritesTheExactTextOfAKnownSnapshot) {
  MetricFamily calls{"test_calls_total", "Calls.", MetricType::kCounter, {}, {}};
  calls.samples.push_back({{{"method", "Convert"}, {"code", "OK"}}, uint64_t{7}});
  calls.samples.push_back({{{"method", "Read"}, {"code", "NOT_FOUND"}}, uint64_t{1}});
  MetricFamily up{"test_up_seconds", "Uptime.", MetricType::kGauge, {}, {}};
  up.samples.push_back({{}, 2.5});
  MetricFamily empty{"test_empty", "Left out: no samples.", MetricType::kGauge, {}, {}};
  MetricFamily latency{"test_latency_seconds", "Latency.", MetricType::kHistogram, {}, {}};
  latency.histograms.push_back({{{"method", "Convert"}}, {0.001, 0.5}, {2, 0, 1}, 1.25});
  const MetricFamily families[] = {calls, up, empty, latency};
  EXPECT_EQ(RenderMetrics(families),
            "# HELP test_calls_total Calls.\n"
            "# TYPE test_calls_total counter\n"
            "test_calls_total{method=\"Convert\",code=\"OK\"} 7\n"
            "test_calls_total{method=\"Read\",code=\"NOT_FOUND\"} 1\n"
            "# HELP test_up_seconds Uptime.\n"
            "# TYPE test_up_seconds gauge\n"
            "test_up_seconds 2.5\n"
            "# HELP test_latency_seconds Latency.\n"
            "# TYPE test_latency_seconds histogram\n"
            "test_latency_seconds_bucket{method=\"Convert\",le=\"0.001\"} 2\n"
            "test_latency_seconds_bucket{method=\"Convert\",le=\"0.5\"} 2\n"
            "test_latency_seconds_bucket{method=\"Convert\",le=\"+Inf\"} 3\n"
            "test_latency_seconds_sum{method=\"Convert\"} 1.25\n"
            "test_latency_seconds_count{method=\"Convert\"} 3\n");
}

TEST(RenderMetricsTest, EscapesLabelValuesAndHelp) {
  MetricFamily f{"test_info", "A \\ backslash\nand a \"quote\".", MetricType::kGauge, {}, {}};
  f.samples.push_back({{{"path", "C:\\dir\n\"x\""}}, uint64_t{1}});
  const MetricFamily families[] = {f};
  EXPECT_EQ(RenderMetrics(families),
            "# HELP test_info A \\\\ backslash\\nand a \"quote\".\n"
            "# TYPE test_info gauge\n"
            "test_info{path=\"C:\\\\dir\\n\\\"x\\\"\"} 1\n");
}

TEST(RenderMetricsTest, HistogramBucketsAccumulateAndCountIsTheInfBucket) {
  MetricFamily f{"test_h", "H.", MetricType::kHistogram, {}, {}};
  f.histograms.push_back({{}, {0.1, 1, 10}, {1, 0, 2, 3}, 40});
  const MetricFamily families[] = {f};
  const std::string text = RenderMetrics(families);
  EXPECT_THAT(text, HasSubstr("test_h_bucket{le=\"0.1\"} 1\n"
                              "test_h_bucket{le=\"1\"} 1\n"
                              "test_h_bucket{le=\"10\"} 3\n"
                              "test_h_bucket{le=\"+Inf\"} 6\n"
                              "test_h_sum 40\n"
                              "test_h_count 6\n"));
}

TEST(FormatMetricValueTest, ShortestRoundTripWithNamedSpecials) {
  EXPECT_EQ(FormatMetricValue(0), "0");
  EXPECT_EQ(FormatMetricValue(2.5), "2.5");
  EXPECT_EQ(FormatMetricValue(10), "10");
  EXPECT_EQ(FormatMetricValue(0.0001), "0.0001");
  EXPECT_EQ(FormatMetricValue(0.1), "0.1");
  EXPECT_EQ(FormatMetricValue(2.5e-5), "2.5e-05");
  EXPECT_EQ(FormatMetricValue(1e15), "1e+15");
  EXPECT_EQ(FormatMetricValue(-3.75), "-3.75");
  EXPECT_EQ(FormatMetricValue(std::numeric_limits<double>::infinity()), "+Inf");
  EXPECT_EQ(FormatMetricValue(-std::numeric_limits<double>::infinity()), "-Inf");
  EXPECT_EQ(FormatMetricValue(std::nan("")), "NaN");
  const double third = 1.0 / 3;
  double back = 0;
  ASSERT_TRUE(absl::SimpleAtod(FormatMetricValue(third), &back));
  EXPECT_EQ(back, third);
}

TEST(CallMetricsTest, LatencyBucketsIncludeTheirUpperBound) {
  EXPECT_EQ(LatencyBucket(0), 0);
  EXPECT_EQ(LatencyBucket(kLatencyBoundsNs[0]), 0);
  EXPECT_EQ(LatencyBucket(kLatencyBoundsNs[0] + 1), 1);
  EXPECT_EQ(LatencyBucket(kLatencyBoundsNs[7]), 7);
  EXPECT_EQ(LatencyBucket(kLatencyBoundsNs.back()), kLatencyBuckets - 2);
  EXPECT_EQ(LatencyBucket(kLatencyBoundsNs.back() + 1), kLatencyBuckets - 1);
  EXPECT_EQ(LatencyBucket(std::numeric_limits<uint64_t>::max()), kLatencyBuckets - 1);
}

TEST(CallMetricsTest, CountsByTransportMethodAndCode) {
  CallMetrics metrics;
  metrics.RecordCall(Transport::kGrpc, CallMethod::kConvert, absl::StatusCode::kOk, 4'000);
  metrics.RecordCall(Transport::kGrpc, CallMethod::kConvert, absl::StatusCode::kOk, 2'000'000);
  metrics.RecordCall(Transport::kLocal, CallMethod::kRelease, absl::StatusCode::kNotFound, 7);
  // A code gRPC does not have counts as UNKNOWN.
  metrics.RecordCall(Transport::kLocal, CallMethod::kStats, static_cast<absl::StatusCode>(99), 1);
  metrics.CountResult(64, /*aliased=*/true);
  metrics.CountResult(12, /*aliased=*/false);
  metrics.CountResult(4, /*aliased=*/false);
  const CallMetrics::Snapshot s = metrics.TakeSnapshot();
  const auto& convert = s.methods[0][static_cast<size_t>(CallMethod::kConvert)];
  EXPECT_EQ(convert.calls[0], 2u);
  EXPECT_EQ(convert.latency_buckets[0], 1u);
  EXPECT_EQ(convert.latency_buckets[static_cast<size_t>(LatencyBucket(2'000'000))], 1u);
  EXPECT_EQ(convert.latency_sum_ns, 2'004'000u);
  const auto& release = s.methods[1][static_cast<size_t>(CallMethod::kRelease)];
  EXPECT_EQ(release.calls[static_cast<size_t>(absl::StatusCode::kNotFound)], 1u);
  EXPECT_EQ(s.methods[0][static_cast<size_t>(CallMethod::kRelease)]
                .calls[static_cast<size_t>(absl::StatusCode::kNotFound)],
            0u);
  EXPECT_EQ(s.methods[1][static_cast<size_t>(CallMethod::kStats)]
                .calls[static_cast<size_t>(absl::StatusCode::kUnknown)],
            1u);
  EXPECT_EQ(s.aliased_bytes, 64u);
  EXPECT_EQ(s.copied_bytes, 16u);
}

// Calls recorded from many threads while another takes snapshots: none is
// lost, and no counter a snapshot reads ever goes back (TSan runs this too).
TEST(CallMetricsTest, RecordsFromManyThreadsWhileSnapshotsAreTaken) {
  CallMetrics metrics;
  constexpr int kThreads = 4;
  constexpr uint64_t kCallsEach = 20'000;
  std::atomic<bool> done{false};
  bool monotonic = true;
  std::thread reader([&] {
    uint64_t last = 0;
    while (!done.load(std::memory_order_acquire)) {
      const uint64_t now =
          metrics.TakeSnapshot().methods[1][static_cast<size_t>(CallMethod::kConvert)].calls[0];
      monotonic &= now >= last;
      last = now;
    }
  });
  std::vector<std::thread> writers;
  for (int t = 0; t < kThreads; ++t) {
    writers.emplace_back([&metrics, t] {
      for (uint64_t i = 0; i < kCallsEach; ++i) {
        metrics.RecordCall(Transport::kLocal, CallMethod::kConvert, absl::StatusCode::kOk,
                           1'000 * static_cast<uint64_t>(t + 1));
        metrics.CountResult(8, /*aliased=*/(i & 1) == 0);
      }
    });
  }
  for (std::thread& w : writers) w.join();
  done.store(true, std::memory_order_release);
  reader.join();
  const CallMetrics::Snapshot s = metrics.TakeSnapshot();
  const auto& convert = s.methods[1][static_cast<size_t>(CallMethod::kConvert)];
  EXPECT_TRUE(monotonic);
  EXPECT_EQ(convert.calls[0], kThreads * kCallsEach);
  EXPECT_EQ(convert.latency_sum_ns, kCallsEach * 1'000 * (1 + 2 + 3 + 4));
  EXPECT_EQ(convert.latency_buckets[0], kThreads * kCallsEach);  // all under 5 us
  EXPECT_EQ(s.aliased_bytes + s.copied_bytes, 8 * kThreads * kCallsEach);
  EXPECT_EQ(s.aliased_bytes, s.copied_bytes);
}

TEST(CallMetricsTest, EveryServiceMethodHasItsOwnName) {
  const google::protobuf::ServiceDescriptor* service =
      v1::ConvertRequest::descriptor()->file()->FindServiceByName("AsArray");
  ASSERT_NE(service, nullptr);
  ASSERT_EQ(service->method_count() + 1, kCallMethods);  // and "unknown"
  for (int i = 0; i < service->method_count(); ++i) {
    const std::string& name = service->method(i)->name();
    const std::optional<CallMethod> method =
        CallMethodOfPath(absl::StrCat("/asarray.v1.AsArray/", name));
    ASSERT_TRUE(method.has_value()) << name;
    EXPECT_EQ(CallMethodName(*method), name);
  }
  EXPECT_FALSE(CallMethodOfPath("/grpc.health.v1.Health/Check").has_value());
  EXPECT_FALSE(CallMethodOfPath("/asarray.v1.AsArray/unknown").has_value());
  EXPECT_FALSE(CallMethodOfPath("/asarray.v1.AsArray/").has_value());
  EXPECT_FALSE(CallMethodOfPath("Convert").has_value());
}

TEST(ServerMetricFamiliesTest, ReportsStatsCallsSeenAndBytes) {
  v1::StatsResponse stats;
  stats.set_tensors(3);
  stats.set_segments(2);
  stats.set_pool_hits(5);
  stats.set_expired(4);
  stats.set_fds(17);
  stats.set_uptime_ms(1500);
  stats.set_local_convert_p50_ns(12'000);
  stats.set_instance("ab\"c");
  CallMetrics metrics;
  metrics.RecordCall(Transport::kLocal, CallMethod::kRelease, absl::StatusCode::kNotFound, 30'000);
  metrics.RecordCall(Transport::kLocal, CallMethod::kRelease, absl::StatusCode::kNotFound, 30'000);
  metrics.CountResult(100, /*aliased=*/false);
  metrics.CountResult(28, /*aliased=*/true);
  const std::vector<MetricFamily> families = ServerMetricFamilies(stats, metrics.TakeSnapshot());
  for (const MetricFamily& f : families) {
    EXPECT_EQ(absl::EndsWith(f.name, "_total"), f.type == MetricType::kCounter) << f.name;
    EXPECT_TRUE(absl::StartsWith(f.name, "asarrayd_")) << f.name;
  }
  const std::string text = RenderMetrics(families);
  EXPECT_THAT(text, HasSubstr("\nasarrayd_tensors 3\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_segments 2\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_pool_hits_total 5\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_lease_expiries_total 4\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_open_fds 17\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_uptime_seconds 1.5\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_local_convert_p50_seconds 1.2e-05\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_info{instance=\"ab\\\"c\"} 1\n"));
  EXPECT_THAT(
      text,
      HasSubstr(
          "\nasarrayd_calls_total{transport=\"local\",method=\"Release\",code=\"NOT_FOUND\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_call_duration_seconds_bucket{transport=\"local\","
                              "method=\"Release\",le=\"2.5e-05\"} 0\n"
                              "asarrayd_call_duration_seconds_bucket{transport=\"local\","
                              "method=\"Release\",le=\"5e-05\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_call_duration_seconds_count{transport=\"local\","
                              "method=\"Release\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_call_duration_seconds_sum{transport=\"local\","
                              "method=\"Release\"} 6e-05\n"));
  // Methods no call reached have no series.
  EXPECT_THAT(text, Not(HasSubstr("method=\"Convert\"")));
  EXPECT_THAT(text, Not(HasSubstr("transport=\"grpc\"")));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_converted_bytes_total 128\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_copied_bytes_total 100\n"));
  EXPECT_THAT(text, HasSubstr("\nasarrayd_aliased_bytes_total 28\n"));
}

TEST(ParseMetricsAddressTest, LoopbackUnlessAHostIsNamed) {
  const auto parsed = [](absl::string_view text) {
    absl::StatusOr<MetricsAddress> a = ParseMetricsAddress(text);
    return a.ok() ? absl::StrCat(a->host, " ", a->port) : a.status().ToString();
  };
  EXPECT_EQ(parsed("9180"), "127.0.0.1 9180");
  EXPECT_EQ(parsed(":9180"), "127.0.0.1 9180");
  EXPECT_EQ(parsed("0"), "127.0.0.1 0");
  EXPECT_EQ(parsed("0.0.0.0:9180"), "0.0.0.0 9180");
  EXPECT_EQ(parsed("localhost:65535"), "localhost 65535");
  EXPECT_EQ(parsed("[::1]:9180"), "::1 9180");
}

TEST(ParseMetricsAddressTest, RefusesWhatIsNoAddress) {
  for (absl::string_view bad : {"", ":", "host:", "host:http", "1:65536", "1:-1", "1:+80",
                                "1:123456", "::1:80", "[::1]", "[::1]80", "[]:80", "[::1:80"}) {
    absl::StatusOr<MetricsAddress> a = ParseMetricsAddress(bad);
    EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(a.status().message(), HasSubstr(absl::StrCat("'", bad, "'"))) << bad;
  }
}

// The whole answer to `request`, sent to 127.0.0.1:`port`; empty when the
// connection is refused.
std::string Exchange(int port, const std::string& request) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string answer;
  if (connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0 &&
      send(fd, request.data(), request.size(), MSG_NOSIGNAL) ==
          static_cast<ssize_t>(request.size())) {
    char buffer[4096];
    for (ssize_t n; (n = recv(fd, buffer, sizeof(buffer), 0)) > 0;) answer.append(buffer, n);
  }
  close(fd);
  return answer;
}

std::string Get(int port, absl::string_view path, absl::string_view method = "GET") {
  return Exchange(port, absl::StrCat(method, " ", path,
                                     " HTTP/1.1\r\nHost: test\r\nContent-Length: 0\r\n\r\n"));
}

int PortOf(const std::string& address) {
  int port = 0;
  EXPECT_TRUE(absl::SimpleAtoi(address.substr(address.rfind(':') + 1), &port)) << address;
  return port;
}

TEST(MetricsEndpointTest, ServesGetMetricsOnlyAndStops) {
  std::atomic<int> renders{0};  // the endpoint's threads render
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint = MetricsEndpoint::Start(
      ":0", [&renders] { return absl::StrCat("test_renders ", ++renders, "\n"); });
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  ASSERT_TRUE(absl::StartsWith((*endpoint)->address(), "127.0.0.1:")) << (*endpoint)->address();
  const int port = PortOf((*endpoint)->address());
  ASSERT_GT(port, 0);

  const std::string first = Get(port, "/metrics");
  EXPECT_TRUE(absl::StartsWith(first, "HTTP/1.1 200 OK\r\n")) << first;
  EXPECT_THAT(first, HasSubstr("Content-Type: text/plain; version=0.0.4; charset=utf-8\r\n"));
  EXPECT_TRUE(absl::EndsWith(first, "\r\n\r\ntest_renders 1\n")) << first;
  EXPECT_TRUE(absl::EndsWith(Get(port, "/metrics?x=1"), "\r\n\r\ntest_renders 2\n"));
  for (const auto& [method, path] :
       std::vector<std::pair<std::string, std::string>>{{"GET", "/"},
                                                        {"GET", "/metrics/x"},
                                                        {"GET", "/metricsx"},
                                                        {"POST", "/metrics"},
                                                        {"PUT", "/metrics"},
                                                        {"DELETE", "/metrics"}}) {
    const std::string answer = Get(port, path, method);
    EXPECT_TRUE(absl::StartsWith(answer, "HTTP/1.1 404 Not Found\r\n"))
        << method << " " << path << ": " << answer;
  }
  EXPECT_EQ(renders.load(), 2);

  (*endpoint)->Stop();
  EXPECT_EQ(Get(port, "/metrics"), "");  // refused
  (*endpoint)->Stop();                   // idempotent
  endpoint->reset();
}

TEST(MetricsEndpointTest, APortInUseFailsToStart) {
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> first =
      MetricsEndpoint::Start("127.0.0.1:0", [] { return std::string(); });
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> second =
      MetricsEndpoint::Start((*first)->address(), [] { return std::string(); });
  EXPECT_EQ(second.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(second.status().message(), HasSubstr("Address already in use"));
}

TEST(MetricsEndpointTest, AHostThatDoesNotResolveIsInvalid) {
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start("no-such-host.invalid:0", [] { return std::string(); });
  EXPECT_EQ(endpoint.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(endpoint.status().message(), HasSubstr("cannot resolve 'no-such-host.invalid'"));
}

TEST(MetricsEndpointTest, AnAddressNotOfThisHostIsUnavailable) {
  // TEST-NET-1 (RFC 5737): no interface of this machine has it.
  absl::StatusOr<std::unique_ptr<MetricsEndpoint>> endpoint =
      MetricsEndpoint::Start("192.0.2.1:0", [] { return std::string(); });
  EXPECT_EQ(endpoint.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_THAT(endpoint.status().message(), HasSubstr("Cannot assign requested address"));
}

}  // namespace
}  // namespace asarray::server
