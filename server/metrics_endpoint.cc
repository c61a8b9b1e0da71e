#include "server/metrics_endpoint.h"

#include <netdb.h>
#include <sys/socket.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <exception>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "httplib.h"
#include "server/metrics.h"

namespace asarray::server {
namespace {

// Scrapes are rare; two threads let a slow one not hold up the next.
constexpr size_t kAnswerThreads = 2;
constexpr size_t kMaxRequestBodyBytes = 64 << 10;

absl::Status BadAddress(absl::string_view text, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("metrics address '", text, "': ", why));
}

}  // namespace

absl::StatusOr<MetricsAddress> ParseMetricsAddress(absl::string_view text) {
  MetricsAddress out;
  absl::string_view port = text;
  if (absl::StartsWith(text, "[")) {
    const size_t close = text.find(']');
    if (close == absl::string_view::npos) return BadAddress(text, "the '[' has no ']'");
    out.host = std::string(text.substr(1, close - 1));
    port = text.substr(close + 1);
    if (out.host.empty()) return BadAddress(text, "the brackets hold no host");
    if (!absl::ConsumePrefix(&port, ":")) return BadAddress(text, "no ':PORT' after the ']'");
  } else if (const size_t colon = text.rfind(':'); colon != absl::string_view::npos) {
    out.host = std::string(text.substr(0, colon));
    port = text.substr(colon + 1);
    if (absl::StrContains(out.host, ':')) {
      return BadAddress(text, "an IPv6 host goes in brackets, as [::1]:PORT");
    }
  }
  if (out.host.empty()) out.host = "127.0.0.1";
  const bool digits = !port.empty() && port.size() <= 5 &&
                      std::all_of(port.begin(), port.end(), absl::ascii_isdigit);
  if (!digits || !absl::SimpleAtoi(port, &out.port) || out.port > 65535) {
    return BadAddress(text, absl::StrCat("the port '", port, "' is not a number from 0 to 65535"));
  }
  return out;
}

struct MetricsEndpoint::Http {
  httplib::Server server;
};

MetricsEndpoint::MetricsEndpoint() = default;

MetricsEndpoint::~MetricsEndpoint() { Stop(); }

absl::StatusOr<std::unique_ptr<MetricsEndpoint>> MetricsEndpoint::Start(absl::string_view address,
                                                                        Render render) {
  absl::StatusOr<MetricsAddress> where = ParseMetricsAddress(address);
  if (!where.ok()) return where.status();
  // Resolved here for the message: httplib says only that binding failed.
  addrinfo hints{};
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* resolved = nullptr;
  const int gai =
      getaddrinfo(where->host.c_str(), std::to_string(where->port).c_str(), &hints, &resolved);
  if (gai != 0) {
    return BadAddress(address,
                      absl::StrCat("cannot resolve '", where->host, "': ", gai_strerror(gai)));
  }
  freeaddrinfo(resolved);

  std::unique_ptr<MetricsEndpoint> endpoint(new MetricsEndpoint());
  int port = -1;
  int bind_errno = 0;
  // httplib reports failures by exception too (a regex, a thread, memory).
  try {
    endpoint->http_ = std::make_unique<Http>();
    httplib::Server& http = endpoint->http_->server;
    http.new_task_queue = [] { return new httplib::ThreadPool(kAnswerThreads); };
    // httplib's default, SO_REUSEPORT, would let a second server bind the
    // same port and take half of the scrapes: a port in use must fail.
    http.set_socket_options([](int fd) {
      const int yes = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    });
    // One request a connection: an idle keep-alive connection would hold a
    // thread, and Stop(), for seconds.
    http.set_keep_alive_max_count(1);
    http.set_payload_max_length(kMaxRequestBodyBytes);
    http.Get("/metrics",
             [render = std::move(render)](const httplib::Request&, httplib::Response& response) {
               response.set_content(render(), std::string(kMetricsContentType));
             });
    http.set_error_handler([](const httplib::Request&, httplib::Response& response) {
      if (response.status == 404) {
        response.set_content("asarrayd serves GET /metrics only\n", "text/plain");
      }
    });
    errno = 0;
    if (where->port == 0) {
      port = http.bind_to_any_port(where->host);
    } else if (http.bind_to_port(where->host, where->port)) {
      port = where->port;
    }
    bind_errno = errno;
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("metrics endpoint on ", address, ": ", e.what()));
  }
  if (port < 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen for metrics on ", address, ": ",
                     bind_errno != 0 ? std::strerror(bind_errno) : "the address cannot be bound"));
  }
  const bool v6 = absl::StrContains(where->host, ':');
  endpoint->address_ = absl::StrCat(v6 ? "[" : "", where->host, v6 ? "]" : "", ":", port);

  MetricsEndpoint* self = endpoint.get();
  try {
    endpoint->thread_ = std::thread([self] {
      try {
        self->http_->server.listen_after_bind();
      } catch (const std::exception& e) {
        std::fprintf(stderr, "asarrayd: the metrics endpoint stopped: %s\n", e.what());
      }
      self->exited_ = true;
    });
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("metrics endpoint on ", address, ": ", e.what()));
  }
  // httplib's stop() does nothing until its loop runs: Stop() must find it
  // running.
  while (!self->http_->server.is_running() && !self->exited_) {
    absl::SleepFor(absl::Milliseconds(1));
  }
  return endpoint;
}

void MetricsEndpoint::Stop() {
  if (!thread_.joinable()) return;
  if (!exited_) http_->server.stop();
  thread_.join();
}

}  // namespace asarray::server
