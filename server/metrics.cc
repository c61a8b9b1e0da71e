#include "server/metrics.h"

#include <charconv>
#include <cmath>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace asarray::server {
namespace {

// Help text escapes backslash and newline; label values double quotes too.
void AppendEscaped(absl::string_view text, bool quotes, std::string* out) {
  for (const char c : text) {
    if (c == '\\') {
      out->append("\\\\");
    } else if (c == '\n') {
      out->append("\\n");
    } else if (c == '"' && quotes) {
      out->append("\\\"");
    } else {
      out->push_back(c);
    }
  }
}

// `name{a="x",b="y"} ` with `extra` last; no braces without labels.
void AppendSeries(absl::string_view name, const MetricLabels& labels,
                  const std::pair<std::string, std::string>* extra, std::string* out) {
  out->append(name.data(), name.size());
  if (!labels.empty() || extra != nullptr) {
    out->push_back('{');
    bool first = true;
    const auto append = [&](const std::pair<std::string, std::string>& label) {
      if (!first) out->push_back(',');
      first = false;
      absl::StrAppend(out, label.first, "=\"");
      AppendEscaped(label.second, /*quotes=*/true, out);
      out->push_back('"');
    };
    for (const auto& label : labels) append(label);
    if (extra != nullptr) append(*extra);
    out->push_back('}');
  }
  out->push_back(' ');
}

std::string FormatValue(const std::variant<uint64_t, double>& value) {
  if (const uint64_t* n = std::get_if<uint64_t>(&value)) return absl::StrCat(*n);
  return FormatMetricValue(std::get<double>(value));
}

void AppendHistogram(absl::string_view name, const HistogramSample& h, std::string* out) {
  uint64_t cumulative = 0;
  const std::string bucket = absl::StrCat(name, "_bucket");
  for (size_t i = 0; i < h.counts.size(); ++i) {
    cumulative += h.counts[i];
    const std::pair<std::string, std::string> le = {
        "le", i < h.upper_bounds.size() ? FormatMetricValue(h.upper_bounds[i]) : "+Inf"};
    AppendSeries(bucket, h.labels, &le, out);
    absl::StrAppend(out, cumulative, "\n");
  }
  AppendSeries(absl::StrCat(name, "_sum"), h.labels, nullptr, out);
  absl::StrAppend(out, FormatMetricValue(h.sum), "\n");
  AppendSeries(absl::StrCat(name, "_count"), h.labels, nullptr, out);
  absl::StrAppend(out, cumulative, "\n");
}

absl::string_view TypeName(MetricType type) {
  switch (type) {
    case MetricType::kCounter:
      return "counter";
    case MetricType::kGauge:
      return "gauge";
    case MetricType::kHistogram:
      return "histogram";
  }
  return "untyped";
}

double Seconds(uint64_t ns) { return static_cast<double>(ns) / 1e9; }

MetricFamily Single(std::string name, std::string help, MetricType type,
                    std::variant<uint64_t, double> value) {
  MetricFamily f{std::move(name), std::move(help), type, {}, {}};
  f.samples.push_back({{}, value});
  return f;
}

MetricFamily Counter(std::string name, std::string help, std::variant<uint64_t, double> value) {
  return Single(std::move(name), std::move(help), MetricType::kCounter, value);
}

// A family of one unlabelled sample; a counter's name ends in _total.
struct Figure {
  const char* name;
  const char* help;
  std::variant<uint64_t, double> value;
};

void AppendStatsFamilies(const v1::StatsResponse& s, std::vector<MetricFamily>* out) {
  MetricFamily info{"asarrayd_info",
                    "The server's instance id, as in its segment names.",
                    MetricType::kGauge,
                    {},
                    {}};
  info.samples.push_back({{{"instance", s.instance()}}, uint64_t{1}});
  out->push_back(std::move(info));
  // The local transport's Convert, request received to answer sent, and to
  // answer ready to send (the work, without the sendmsg()); within 12.5%.
  const Figure figures[] = {
      {"asarrayd_uptime_seconds", "Time since the server started.",
       static_cast<double>(s.uptime_ms()) / 1e3},
      {"asarrayd_tensors", "Live handles.", s.tensors()},
      {"asarrayd_segments", "Shared-memory segments the server created and holds.", s.segments()},
      {"asarrayd_segment_bytes", "Bytes those segments hold, counted against the quota.",
       s.bytes_in_use()},
      {"asarrayd_quota_bytes", "The quota on segment bytes (--max_bytes); 0 when unlimited.",
       s.max_bytes()},
      {"asarrayd_client_regions", "Client segments mapped for aliasing handles.",
       s.client_regions()},
      {"asarrayd_pool_bytes", "Bytes of warm segments held ready (--segment_pool_bytes).",
       s.pool_bytes()},
      {"asarrayd_default_lease_seconds", "The lease of a handle unless renewed (--lease_ttl).",
       static_cast<double>(s.default_ttl_ms()) / 1e3},
      {"asarrayd_connection_leases", "Handles that end with their local-transport connection.",
       s.connection_leases()},
      {"asarrayd_local_connections", "Open connections of the local transport.",
       s.local_connections()},
      {"asarrayd_open_fds", "File descriptors the server holds open.", s.fds()},
      {"asarrayd_max_fds", "The server's limit on open file descriptors (RLIMIT_NOFILE).",
       s.fd_limit()},
      {"asarrayd_cuda_devices", "CUDA devices the server can use.", uint64_t{s.cuda_devices()}},
      {"asarrayd_cuda_allocations", "Device allocations the server holds, one a tensor.",
       s.cuda_allocations()},
      {"asarrayd_cuda_bytes", "Bytes those device allocations hold, each rounded to 2 MiB.",
       s.cuda_bytes_in_use()},
      {"asarrayd_cuda_ipc_opened", "Client CUDA allocations the server has open.",
       s.cuda_ipc_opened()},
      {"asarrayd_cuda_pinned_bytes", "Client shared memory page-locked for copies to a device.",
       s.cuda_pinned_bytes()},
      {"asarrayd_local_convert_p50_seconds",
       "Median time of a local-transport Convert, request received to answer sent.",
       Seconds(s.local_convert_p50_ns())},
      {"asarrayd_local_convert_p99_seconds",
       "99th percentile time of a local-transport Convert, request received to answer sent.",
       Seconds(s.local_convert_p99_ns())},
      {"asarrayd_local_convert_work_p50_seconds",
       "Median time of a local-transport Convert, request received to answer ready to send.",
       Seconds(s.local_convert_work_p50_ns())},
      {"asarrayd_local_convert_work_p99_seconds",
       "99th percentile time of a local-transport Convert, request received to answer ready "
       "to send.",
       Seconds(s.local_convert_work_p99_ns())},
      {"asarrayd_converts_total", "Successful conversions.", s.converts()},
      {"asarrayd_errors_total", "Failed calls.", s.errors()},
      {"asarrayd_lease_expiries_total", "Leases the sweeper ended.", s.expired()},
      {"asarrayd_pool_hits_total", "Results that took a warm segment of the pool.", s.pool_hits()},
      {"asarrayd_local_converts_total", "Convert calls over the local transport.",
       s.local_converts()},
      {"asarrayd_local_convert_work_seconds_total",
       "Time of the local transport's Convert calls, request received to answer ready to "
       "send, summed.",
       Seconds(s.local_convert_work_ns())},
      {"asarrayd_local_batches_total", "ConvertBatch calls over the local transport.",
       s.local_batches()},
      {"asarrayd_local_batch_items_total", "Items of the local transport's ConvertBatch calls.",
       s.local_batch_items()},
      {"asarrayd_local_batch_work_seconds_total",
       "Time of the local transport's ConvertBatch calls, request received to answer ready to "
       "send, summed.",
       Seconds(s.local_batch_work_ns())},
  };
  for (const Figure& f : figures) {
    const bool counter = absl::EndsWith(f.name, "_total");
    out->push_back(
        Single(f.name, f.help, counter ? MetricType::kCounter : MetricType::kGauge, f.value));
  }
}

void AppendCallFamilies(const CallMetrics::Snapshot& snapshot, std::vector<MetricFamily>* out) {
  MetricFamily calls{"asarrayd_calls_total",
                     "Calls answered, by transport, method and status code.",
                     MetricType::kCounter,
                     {},
                     {}};
  MetricFamily latency{"asarrayd_call_duration_seconds",
                       "Time from a call's start to its status, by transport and method.",
                       MetricType::kHistogram,
                       {},
                       {}};
  std::vector<double> bounds;
  for (const uint64_t ns : kLatencyBoundsNs) bounds.push_back(Seconds(ns));
  for (int t = 0; t < kTransports; ++t) {
    for (int m = 0; m < kCallMethods; ++m) {
      const CallMetrics::MethodSnapshot& method =
          snapshot.methods[static_cast<size_t>(t)][static_cast<size_t>(m)];
      const MetricLabels labels = {
          {"transport", std::string(TransportName(static_cast<Transport>(t)))},
          {"method", std::string(CallMethodName(static_cast<CallMethod>(m)))}};
      bool seen = false;
      for (int c = 0; c < kStatusCodes; ++c) {
        const uint64_t n = method.calls[static_cast<size_t>(c)];
        if (n == 0) continue;
        seen = true;
        MetricLabels with_code = labels;
        with_code.emplace_back("code", absl::StatusCodeToString(static_cast<absl::StatusCode>(c)));
        calls.samples.push_back({std::move(with_code), n});
      }
      if (!seen) continue;
      latency.histograms.push_back(
          {labels, bounds,
           std::vector<uint64_t>(method.latency_buckets.begin(), method.latency_buckets.end()),
           Seconds(method.latency_sum_ns)});
    }
  }
  out->push_back(std::move(calls));
  out->push_back(std::move(latency));
  out->push_back(Counter("asarrayd_converted_bytes_total",
                         "Bytes of the results made (elements times item size): copied plus "
                         "aliased.",
                         snapshot.copied_bytes + snapshot.aliased_bytes));
  out->push_back(Counter("asarrayd_copied_bytes_total", "Bytes of results that hold a copy.",
                         snapshot.copied_bytes));
  out->push_back(Counter("asarrayd_aliased_bytes_total",
                         "Bytes of results that alias the caller's memory.",
                         snapshot.aliased_bytes));
}

}  // namespace

std::string FormatMetricValue(double value) {
  if (std::isnan(value)) return "NaN";
  if (std::isinf(value)) return value > 0 ? "+Inf" : "-Inf";
  char buffer[64];
  const double magnitude = std::fabs(value);
  const std::chars_format format = magnitude == 0 || (magnitude >= 1e-4 && magnitude < 1e15)
                                       ? std::chars_format::fixed
                                       : std::chars_format::scientific;
  const std::to_chars_result result = std::to_chars(buffer, buffer + sizeof(buffer), value, format);
  return std::string(buffer, result.ptr);
}

std::string RenderMetrics(absl::Span<const MetricFamily> families) {
  std::string out;
  for (const MetricFamily& f : families) {
    if (f.samples.empty() && f.histograms.empty()) continue;
    absl::StrAppend(&out, "# HELP ", f.name, " ");
    AppendEscaped(f.help, /*quotes=*/false, &out);
    absl::StrAppend(&out, "\n# TYPE ", f.name, " ", TypeName(f.type), "\n");
    for (const MetricSample& s : f.samples) {
      AppendSeries(f.name, s.labels, nullptr, &out);
      absl::StrAppend(&out, FormatValue(s.value), "\n");
    }
    for (const HistogramSample& h : f.histograms) AppendHistogram(f.name, h, &out);
  }
  return out;
}

std::vector<MetricFamily> ServerMetricFamilies(const v1::StatsResponse& stats,
                                               const CallMetrics::Snapshot& calls) {
  std::vector<MetricFamily> out;
  AppendStatsFamilies(stats, &out);
  AppendCallFamilies(calls, &out);
  return out;
}

}  // namespace asarray::server
