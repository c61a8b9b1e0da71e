// A Unix socket the server accepts on itself, so that it knows each
// connection's peer (see peer.h); every accepted connection is handed to
// gRPC (a SOCK_STREAM socket) or to the local transport (SOCK_SEQPACKET). The socket is created
// mode 0600 in a directory PrepareSocketDirectory made private; abstract names are refused. One
// thread accepts; Stop() ends it before gRPC shuts down, after which no connection is added.
#ifndef ASARRAY_SERVER_UNIX_LISTENER_H_
#define ASARRAY_SERVER_UNIX_LISTENER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "grpcpp/server.h"

namespace asarray::server {

class UnixListener {
 public:
  // Binds and listens on `path` (its directory must already be private), a
  // socket of `type`: SOCK_STREAM, whose connections are handed over
  // non-blocking, or SOCK_SEQPACKET, blocking.
  static absl::StatusOr<std::unique_ptr<UnixListener>> Bind(const std::string& path, int type);
  // Stops accepting, closes the socket and unlinks its path.
  ~UnixListener();
  UnixListener(const UnixListener&) = delete;
  UnixListener& operator=(const UnixListener&) = delete;

  // Starts the accepting thread, which hands each connection to `adopt`
  // (that takes the descriptor). REQUIRES: `adopt` is valid until Stop().
  void Serve(std::function<void(int)> adopt);
  // Serve() for gRPC. REQUIRES: `server` is started and outlives Stop().
  void Serve(grpc::Server* server);
  // Ends the accepting thread; connections already handed over stay. Idempotent.
  void Stop();

  const std::string& path() const { return path_; }

 private:
  UnixListener(std::string path, int fd, int accept_flags, int wake_read, int wake_write)
      : path_(std::move(path)),
        fd_(fd),
        accept_flags_(accept_flags),
        wake_read_(wake_read),
        wake_write_(wake_write) {}
  void Accept(const std::function<void(int)>& adopt);

  const std::string path_;
  const int fd_;
  const int accept_flags_;
  const int wake_read_;  // readable once Stop() asks the thread to end
  const int wake_write_;
  std::thread thread_;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_UNIX_LISTENER_H_
