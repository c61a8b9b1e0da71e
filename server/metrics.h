// /metrics: the Prometheus text exposition format (version 0.0.4), and the
// metric families asarrayd reports in it, made from a Stats answer and a
// CallMetrics snapshot. Pure functions of their arguments; thread-safe.
#ifndef ASARRAY_SERVER_METRICS_H_
#define ASARRAY_SERVER_METRICS_H_

#include <cstdint>
#include <string>
#include <utility>
#include <variant>
#include <vector>

#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "asarray/v1/asarray.pb.h"
#include "server/call_metrics.h"

namespace asarray::server {

inline constexpr absl::string_view kMetricsContentType = "text/plain; version=0.0.4; charset=utf-8";

enum class MetricType { kCounter, kGauge, kHistogram };

// (name, value) pairs, in the order they print.
using MetricLabels = std::vector<std::pair<std::string, std::string>>;

struct MetricSample {
  MetricLabels labels;
  std::variant<uint64_t, double> value;
};

struct HistogramSample {
  MetricLabels labels;
  std::vector<double> upper_bounds;  // ascending and finite; +Inf follows them
  // The observations of each bucket alone (RenderMetrics accumulates them):
  // one per upper bound, then the +Inf bucket's.
  std::vector<uint64_t> counts;
  double sum = 0;
};

struct MetricFamily {
  std::string name;  // a counter's ends in _total
  std::string help;
  MetricType type = MetricType::kGauge;
  std::vector<MetricSample> samples;        // counters and gauges
  std::vector<HistogramSample> histograms;  // histograms
};

// The families as the text format: HELP and TYPE lines, then the samples; a
// histogram's as cumulative _bucket{le=...} series, _sum and _count. Label
// values and help text are escaped. A family without samples is left out.
// REQUIRES: names are [a-zA-Z_:][a-zA-Z0-9_:]*, label names
// [a-zA-Z_][a-zA-Z0-9_]*, and each histogram has one count more than bounds.
std::string RenderMetrics(absl::Span<const MetricFamily> families);

// A sample value as the format writes it: integers as such, and +Inf, -Inf
// and NaN by name; otherwise the shortest decimal that reads back the same,
// in exponent form below 1e-4 and from 1e15.
std::string FormatMetricValue(double value);

// What asarrayd serves: Stats' figures, the calls of `calls` (a series for
// each transport, method and code seen), their latencies (a histogram for
// each transport and method seen) and the result bytes.
std::vector<MetricFamily> ServerMetricFamilies(const v1::StatsResponse& stats,
                                               const CallMetrics::Snapshot& calls);

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_METRICS_H_
