#include "server/server.h"

#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/server_builder.h"
#include "server/unparsable_request.h"

namespace asarray::server {

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
    return absl::FailedPreconditionError(
        absl::StrCat("socket directory ", dir, " belongs to uid ", st.st_uid, ", not to ",
                     geteuid()));
  }
  if ((st.st_mode & 077) != 0 && chmod(dir.c_str(), 0700) != 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("cannot restrict socket directory ", dir, " to mode 0700"));
  }
  // A socket left by an earlier instance would make the bind fail.
  if (lstat(socket_path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode)) unlink(socket_path.c_str());
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Server>> Server::Start(ServerOptions options) {
  std::unique_ptr<Server> server(new Server());
  if (options.sweep_orphans) {
    server->orphans_swept_ = TensorStore::SweepOrphans(options.store.prefix);
  }
  server->store_ = std::make_unique<TensorStore>(options.store);
  server->executor_ = std::make_unique<Executor>(options.workers);
  server->service_ = std::make_unique<AsArrayService>(
      server->store_.get(), server->executor_.get(),
      ServiceOptions{options.max_message_bytes});

  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  builder.SetMaxReceiveMessageSize(static_cast<int>(options.max_message_bytes));
  builder.SetMaxSendMessageSize(static_cast<int>(options.max_message_bytes));
  builder.RegisterService(server->service_.get());
  for (grpc::Service* extra : options.extra_services) builder.RegisterService(extra);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<UnparsableRequestInterceptorFactory>());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));

  std::vector<std::pair<std::string, std::unique_ptr<int>>> tcp_ports;
  for (std::string address : options.listen) {
    if (address == "default") address = absl::StrCat("unix:", DefaultSocketPath());
    absl::string_view path = address;
    if (absl::ConsumePrefix(&path, "unix:")) {
      if (absl::StartsWith(path, "@")) {
        return absl::InvalidArgumentError("abstract Unix sockets are not supported: " + address);
      }
      absl::Status dir = PrepareSocketDirectory(std::string(path));
      if (!dir.ok()) return dir;
      server->socket_paths_.emplace_back(path);
      server->addresses_.push_back(address);
      builder.AddListeningPort(address, grpc::InsecureServerCredentials());
    } else {
      tcp_ports.emplace_back(address, std::make_unique<int>(0));
      builder.AddListeningPort(address, grpc::InsecureServerCredentials(),
                               tcp_ports.back().second.get());
    }
  }
  server->grpc_server_ = builder.BuildAndStart();
  if (server->grpc_server_ == nullptr) {
    return absl::UnavailableError("gRPC could not listen on the requested addresses");
  }
  for (const std::string& path : server->socket_paths_) chmod(path.c_str(), 0600);
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
  // Our own count of calls in flight decides how long to wait; gRPC then
  // only cancels what is left (nothing, unless the grace ran out).
  service_->Drain(grace);
  grpc_server_->Shutdown(std::chrono::system_clock::now());
}

void Server::Wait() { grpc_server_->Wait(); }

Server::~Server() {
  if (grpc_server_ != nullptr) {
    Shutdown();
    grpc_server_->Wait();
  }
  // No call runs any more. The executor finishes its queue before the store
  // (and with it every segment) goes. The gRPC server object is destroyed
  // last: gRPC 1.51 sometimes spends seconds in its destructor after a
  // streaming call, and the segments should not wait for that.
  executor_.reset();
  store_.reset();
  for (const std::string& path : socket_paths_) unlink(path.c_str());
  grpc_server_.reset();
  service_.reset();
}

}  // namespace asarray::server
