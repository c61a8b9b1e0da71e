// The HTTP endpoint of --metrics_listen: GET /metrics answers with a body
// the caller renders (see metrics.h); any other path or method is 404. It
// runs on cpp-httplib, on threads of its own: one accepts, two answer, and
// each connection carries one request. httplib.h stays out of this header,
// and httplib's exceptions stay inside metrics_endpoint.cc.
// Start() and address() are thread-safe; Stop() is called from one thread.
#ifndef ASARRAY_SERVER_METRICS_ENDPOINT_H_
#define ASARRAY_SERVER_METRICS_ENDPOINT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace asarray::server {

struct MetricsAddress {
  std::string host;  // without brackets
  int port = 0;      // 0 picks a free one
};

// "HOST:PORT", "[IPV6]:PORT", ":PORT" or "PORT". Without a host it is
// 127.0.0.1: another host's callers reach the endpoint only when a host is
// named (say 0.0.0.0). INVALID_ARGUMENT when it is none of these, or the
// port is not a number from 0 to 65535.
absl::StatusOr<MetricsAddress> ParseMetricsAddress(absl::string_view text);

class MetricsEndpoint {
 public:
  // Makes the body of one answer; runs on the endpoint's threads.
  using Render = std::function<std::string()>;

  // Listens on `address` (see ParseMetricsAddress): INVALID_ARGUMENT for an
  // address that does not parse or resolve, UNAVAILABLE when it cannot be
  // bound (the port is in use, the host is not this machine's).
  static absl::StatusOr<std::unique_ptr<MetricsEndpoint>> Start(absl::string_view address,
                                                                Render render);
  ~MetricsEndpoint();  // Stop()s
  MetricsEndpoint(const MetricsEndpoint&) = delete;
  MetricsEndpoint& operator=(const MetricsEndpoint&) = delete;

  // "host:port" with the port bound ("[host]:port" for an IPv6 host).
  const std::string& address() const { return address_; }
  // Stops accepting and waits for the answers under way. Idempotent.
  void Stop();

 private:
  struct Http;  // the httplib server
  MetricsEndpoint();

  std::unique_ptr<Http> http_;
  std::string address_;
  std::thread thread_;               // accepts, in httplib's listen loop
  std::atomic<bool> exited_{false};  // the loop returned
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_METRICS_ENDPOINT_H_
