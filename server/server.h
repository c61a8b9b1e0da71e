// An asarrayd server: the store, the worker pool, the service, health and
// reflection, listening on Unix sockets it accepts on itself (so that every
// call's uid is known, see peer.h) and, when asked, TCP; and, when asked,
// Prometheus metrics over HTTP (metrics_endpoint.h). Used by the
// asarrayd binary and by tests, which run it in process. Shutdown() and the
// destructor let in-flight calls finish, then unlink every segment the
// server created.
#ifndef ASARRAY_SERVER_SERVER_H_
#define ASARRAY_SERVER_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "grpcpp/server.h"
#include "server/cuda_backend.h"
#include "server/executor.h"
#include "server/local_transport.h"
#include "server/metrics_endpoint.h"
#include "server/service.h"
#include "server/tensor_store.h"
#include "server/unix_listener.h"
#include "wire/socket_path.h"

namespace asarray::server {

struct ServerOptions {
  // gRPC addresses: "unix:/path" or "host:port" (port 0 picks one). The
  // word "default" stands for the default socket. TCP only when named.
  std::vector<std::string> listen = {"default"};
  // PEM files: with both, TCP listeners serve TLS. Without them a TCP
  // listener must be on a loopback address, unless allow_insecure_tcp.
  std::string tls_cert_file;
  std::string tls_key_file;
  // PEM CA bundle: with TLS, TCP callers must present a certificate it
  // verifies, and each certificate subject is an identity of its own.
  std::string tls_client_ca_file;
  bool allow_insecure_tcp = false;
  StoreOptions store;
  int workers = 4;
  int64_t max_message_bytes = 64 << 20;
  absl::Duration sweep_interval = absl::Seconds(1);
  bool sweep_orphans = true;  // unlink segments of dead instances at start
  // Beside each Unix socket, the local transport's (see local_transport.h).
  bool local_transport = true;
  // Where to serve GET /metrics over HTTP (see ParseMetricsAddress: "HOST:PORT",
  // or ":PORT" for 127.0.0.1; port 0 picks one); empty: nowhere.
  std::string metrics_listen;
  // More services on the same listeners (benchmarks' baselines); not owned.
  std::vector<grpc::Service*> extra_services;
};

// Creates the socket's directory with mode 0700 or checks that an existing
// one belongs to this uid (FAILED_PRECONDITION otherwise). One that admits
// others is restricted to 0700 when it is the server's own; one that others
// share (sticky, like /tmp, or holding files other than sockets, like /run)
// is FAILED_PRECONDITION and left as it is.
// Removes a socket an earlier instance left; FAILED_PRECONDITION when a
// running server still accepts on it.
absl::Status PrepareSocketDirectory(const std::string& socket_path);

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // The addresses it listens on, TCP ports resolved ("unix:/..." or "host:port").
  const std::vector<std::string>& addresses() const { return addresses_; }
  TensorStore& store() { return *store_; }
  AsArrayService& service() { return *service_; }
  const CudaBackend& cuda() const { return *cuda_; }
  int orphans_swept() const { return orphans_swept_; }
  // Where /metrics is served ("host:port", the port resolved); empty when not.
  std::string metrics_address() const {
    return metrics_ != nullptr ? metrics_->address() : std::string();
  }

  // Stops accepting calls, waits up to `grace` for those in flight, then
  // cancels the rest. Idempotent.
  void Shutdown(absl::Duration grace = absl::Seconds(10));
  // Blocks until Shutdown() is called (from another thread).
  void Wait();

 private:
  Server() = default;
  // Listens for the local transport beside the gRPC socket at `grpc_socket_path`;
  // without it (say, the path grows too long) the server serves gRPC alone.
  absl::Status BindLocal(const std::string& grpc_socket_path);

  // Destroyed after the store: device tensors free their memory through it.
  std::unique_ptr<CudaBackend> cuda_;
  std::unique_ptr<TensorStore> store_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<AsArrayService> service_;
  std::unique_ptr<LocalTransport> local_;
  std::unique_ptr<grpc::Server> grpc_server_;
  std::unique_ptr<MetricsEndpoint> metrics_;  // reads service_ and store_
  std::vector<std::string> addresses_;
  std::vector<std::unique_ptr<UnixListener>> listeners_;        // gRPC's
  std::vector<std::unique_ptr<UnixListener>> local_listeners_;  // the local transport's
  int orphans_swept_ = 0;
  bool shut_down_ = false;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_SERVER_H_
