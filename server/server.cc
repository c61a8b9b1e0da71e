#include "server/server.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/call_metrics.h"
#include "server/metrics.h"
#include "server/unparsable_request.h"
#include "wire/posix_util.h"

namespace asarray::server {

namespace {

// Whether something accepts connections on the Unix socket at `path`.
bool SocketAnswers(const std::string& path) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.size() >= sizeof(addr.sun_path)) return false;
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  const bool answers = connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return answers;
}

// Whether `dir` holds anything but sockets (those an earlier server left).
bool HoldsMoreThanSockets(const std::string& dir) {
  DIR* d = opendir(dir.c_str());
  if (d == nullptr) return true;
  bool more = false;
  while (const dirent* entry = readdir(d)) {
    const std::string name = entry->d_name;
    if (name == "." || name == "..") continue;
    struct stat st;
    if (fstatat(dirfd(d), entry->d_name, &st, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISSOCK(st.st_mode)) {
      more = true;
      break;
    }
  }
  closedir(d);
  return more;
}

}  // namespace

absl::Status PrepareSocketDirectory(const std::string& socket_path) {
  const size_t slash = socket_path.rfind('/');
  if (slash == std::string::npos || slash == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path '", socket_path, "' must be absolute, below a directory"));
  }
  const std::string dir = socket_path.substr(0, slash);
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot create socket directory ", dir, ": ", std::strerror(errno)));
  }
  struct stat st;
  if (lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(absl::StrCat(dir, " is not a directory"));
  }
  if (st.st_uid != geteuid()) {
    return absl::FailedPreconditionError(absl::StrCat("socket directory ", dir, " belongs to uid ",
                                                      st.st_uid, ", not to ", geteuid()));
  }
  // A directory that admits others is narrowed to 0700 only when it is the
  // server's own: never one others share (/tmp, /run, a home), which the
  // chmod would break for everyone else.
  if ((st.st_mode & 077) != 0 && ((st.st_mode & S_ISVTX) != 0 || HoldsMoreThanSockets(dir))) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "socket directory %s admits others (mode %04o) and is not asarrayd's own (it is "
        "sticky, or holds files other than sockets), so asarrayd will not restrict it to "
        "mode 0700; name a socket in a directory of its own, such as "
        "unix:%s/asarrayd/asarrayd.sock",
        dir, st.st_mode & 07777, dir));
  }
  if ((st.st_mode & 077) != 0 && chmod(dir.c_str(), 0700) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot restrict socket directory ", dir, " to mode 0700"));
  }
  // A socket left by an earlier instance would make the bind fail; one that
  // a running server still accepts on is that server's.
  if (lstat(socket_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) {
    if (SocketAnswers(socket_path)) {
      return absl::FailedPreconditionError(
          absl::StrCat("another server is already listening on ", socket_path));
    }
    unlink(socket_path.c_str());
  }
  return absl::OkStatus();
}

namespace {

// Whether the host part of "host:port" can only be reached from this machine.
bool IsLoopback(const std::string& address) {
  std::string host = address.substr(0, address.rfind(':'));
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') {
    host = host.substr(1, host.size() - 2);
  }
  if (host == "localhost") return true;
  in_addr v4;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6;
  return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

// TLS when a certificate and key are given; else plaintext, on loopback
// addresses only unless the options explicitly allow more.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> TcpCredentials(
    const std::string& address, const ServerOptions& options) {
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError("TLS needs both a certificate and a key file");
  }
  if (!options.tls_cert_file.empty()) {
    grpc::SslServerCredentialsOptions ssl;
    grpc::SslServerCredentialsOptions::PemKeyCertPair pair;
    ASARRAY_ASSIGN_OR_RETURN(pair.private_key, ReadSmallFile(options.tls_key_file, "TLS key"));
    ASARRAY_ASSIGN_OR_RETURN(pair.cert_chain,
                             ReadSmallFile(options.tls_cert_file, "TLS certificate"));
    ssl.pem_key_cert_pairs.push_back(std::move(pair));
    if (!options.tls_client_ca_file.empty()) {
      ASARRAY_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                               ReadSmallFile(options.tls_client_ca_file, "TLS client CA"));
      ssl.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    return grpc::SslServerCredentials(ssl);
  }
  if (!options.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError(
        "a TLS client CA verifies callers only under TLS: give a certificate and key too");
  }
  if (!IsLoopback(address) && !options.allow_insecure_tcp) {
    return absl::FailedPreconditionError(
        absl::StrCat("refusing plaintext TCP on ", address,
                     ", which is not a loopback address: give a TLS "
                     "certificate and key, or allow insecure TCP explicitly"));
  }
  return grpc::InsecureServerCredentials();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  std::unique_ptr<Server> server(new Server());
  if (options.sweep_orphans) {
    server->orphans_swept_ = TensorStore::SweepOrphans(options.store.prefix);
  }
  server->cuda_ = CudaBackend::Create();
  server->store_ = std::make_unique<TensorStore>(options.store);
  server->executor_ = std::make_unique<Executor>(options.workers);
  server->service_ = std::make_unique<AsArrayService>(server->store_.get(), server->cuda_.get(),
                                                      server->executor_.get(),
                                                      ServiceOptions{options.max_message_bytes});

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  // Remote clients ping an idle connection every 30 s (so that load
  // balancers and NAT keep it); accept pings that often, with or without
  // calls, rather than answer them with GOAWAY "too_many_pings".
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 10000);
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MAX_PING_STRIKES, 0);
  builder.RegisterService(server->service_.get());
  for (grpc::Service* extra : options.extra_services) builder.RegisterService(extra);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<UnparsableRequestInterceptorFactory>());
  // After the rewrite above, so that it counts the status the caller gets.
  interceptors.push_back(
      std::make_unique<CallMetricsInterceptorFactory>(&server->service_->metrics()));
  builder.experimental().SetInterceptorCreators(std::move(interceptors));

  if (!options.metrics_listen.empty()) {
    ASARRAY_ASSIGN_OR_RETURN(
        server->metrics_,
        MetricsEndpoint::Start(options.metrics_listen, [service = server->service_.get()] {
          v1::StatsResponse stats;
          service->StatsNow(&stats);
          return RenderMetrics(ServerMetricFamilies(stats, service->metrics().TakeSnapshot()));
        }));
  }

  std::vector<std::pair<std::string, std::unique_ptr<int>>> tcp_ports;
  for (std::string address : options.listen) {
    if (address == "default") address = absl::StrCat("unix:", DefaultSocketPath());
    absl::string_view path = address;
    if (absl::ConsumePrefix(&path, "unix:")) {
      if (absl::StartsWith(path, "@")) {
        return absl::InvalidArgumentError("abstract Unix sockets are not supported: " + address);
      }
      ASARRAY_RETURN_IF_ERROR(PrepareSocketDirectory(std::string(path)));
      ASARRAY_ASSIGN_OR_RETURN(std::unique_ptr<UnixListener> listener,
                               UnixListener::Bind(std::string(path), SOCK_STREAM));
      server->listeners_.push_back(std::move(listener));
      if (options.local_transport) ASARRAY_RETURN_IF_ERROR(server->BindLocal(std::string(path)));
      server->addresses_.push_back(address);
    } else {
      ASARRAY_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ServerCredentials> credentials,
                               TcpCredentials(address, options));
      tcp_ports.emplace_back(address, std::make_unique<int>(0));
      builder.AddListeningPort(address, credentials, tcp_ports.back().second.get());
    }
  }
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr) {
    return absl::UnavailableError("gRPC could not listen on the requested addresses");
  }
  for (const auto& listener : server->listeners_) listener->Serve(server->grpc_server_.get());
  for (const auto& listener : server->local_listeners_) {
    listener->Serve([local = server->local_.get()](int fd) { local->Adopt(fd); });
  }
  for (const auto& [address, port] : tcp_ports) {
    if (*port == 0) return absl::UnavailableError("could not listen on " + address);
    const size_t colon = address.rfind(':');
    server->addresses_.push_back(absl::StrCat(address.substr(0, colon), ":", *port));
  }
  server->store_->StartSweeper(options.sweep_interval);
  return server;
}

void Server::Shutdown(absl::Duration grace) {
  if (shut_down_) return;
  shut_down_ = true;
  for (const auto& listener : listeners_) listener->Stop();  // no new connections
  for (const auto& listener : local_listeners_) listener->Stop();
  // Our own count of calls in flight decides how long to wait; gRPC then
  // only cancels what is left (nothing, unless the grace ran out).
  service_->Drain(grace);
  if (local_ != nullptr) local_->Stop();
  grpc_server_->Shutdown(std::chrono::system_clock::now());
  // Scrapes were answered while the calls drained.
  if (metrics_ != nullptr) metrics_->Stop();
}

void Server::Wait() { grpc_server_->Wait(); }

absl::Status Server::BindLocal(const std::string& grpc_socket_path) {
  const std::string path = LocalSocketPath(grpc_socket_path);
  // The gRPC socket beside it answered nobody: a socket here is a dead
  // instance's.
  struct stat st;
  if (lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(path.c_str());
  absl::StatusOr<std::unique_ptr<UnixListener>> listener = UnixListener::Bind(path, SOCK_SEQPACKET);
  if (!listener.ok()) {
    // Clients fall back to gRPC; the server serves without it.
    std::fprintf(stderr, "asarrayd: no local transport beside %s: %s\n", grpc_socket_path.c_str(),
                 listener.status().ToString().c_str());
    return absl::OkStatus();
  }
  if (local_ == nullptr) local_ = std::make_unique<LocalTransport>(service_.get());
  local_listeners_.push_back(*std::move(listener));
  return absl::OkStatus();
}

Server::~Server() {
  if (grpc_server_ != nullptr) {
    Shutdown();
    grpc_server_->Wait();
  }
  metrics_.reset();  // Shutdown stopped it, unless Start failed before gRPC ran
  // No call runs any more (Shutdown stopped the local transport's threads).
  local_listeners_.clear();
  local_.reset();
  // The executor finishes its queue before the store
  // (and with it every segment) goes. The gRPC server object is destroyed
  // last: gRPC 1.51 sometimes spends seconds in its destructor after a
  // streaming call, and the segments should not wait for that.
  executor_.reset();
  store_.reset();
  cuda_.reset();
  listeners_.clear();  // unlinks the sockets
  grpc_server_.reset();
  service_.reset();
}

}  // namespace asarray::server
