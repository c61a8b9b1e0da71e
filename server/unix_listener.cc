#include "server/unix_listener.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "grpcpp/server_posix.h"
#include "wire/posix_util.h"

namespace asarray::server {

absl::StatusOr<std::unique_ptr<UnixListener>> UnixListener::Bind(const std::string& path,
                                                                 int type) {
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  if (path.empty() || path[0] != '/' || path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(absl::StrCat("Unix socket path '", path,
                                                   "' must be absolute and shorter than ",
                                                   sizeof(addr.sun_path), " bytes"));
  }
  std::memcpy(addr.sun_path, path.data(), path.size());
  const int fd = socket(AF_UNIX, type | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
  if (fd < 0) return ErrnoStatus(errno, "creating a Unix socket");
  int wake[2];
  if (bind(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    close(fd);
    return ErrnoStatus(err, absl::StrCat("binding ", path));
  }
  if (pipe2(wake, O_CLOEXEC | O_NONBLOCK) != 0) {
    const int err = errno;
    close(fd);
    unlink(path.c_str());
    return ErrnoStatus(err, "creating the listener's wake pipe");
  }
  // From here the listener owns the descriptors and the path it bound.
  const int accept_flags = SOCK_CLOEXEC | (type == SOCK_STREAM ? SOCK_NONBLOCK : 0);
  std::unique_ptr<UnixListener> listener(
      new UnixListener(path, fd, accept_flags, wake[0], wake[1]));
  // The directory is private already; the socket's own mode is a second wall.
  if (chmod(path.c_str(), 0600) != 0) return ErrnoStatus(errno, absl::StrCat("chmod ", path));
  if (listen(fd, SOMAXCONN) != 0) return ErrnoStatus(errno, absl::StrCat("listening on ", path));
  return listener;
}

UnixListener::~UnixListener() {
  Stop();
  close(fd_);
  close(wake_read_);
  close(wake_write_);
  unlink(path_.c_str());
}

void UnixListener::Serve(std::function<void(int)> adopt) {
  thread_ = std::thread([this, adopt = std::move(adopt)] { Accept(adopt); });
}

void UnixListener::Serve(grpc::Server* server) {
  // gRPC owns the descriptor from here and closes it with the connection.
  Serve([server](int conn) { grpc::AddInsecureChannelFromFd(server, conn); });
}

void UnixListener::Stop() {
  if (!thread_.joinable()) return;
  const char byte = 0;
  while (write(wake_write_, &byte, 1) < 0 && errno == EINTR) {
  }
  thread_.join();
}

void UnixListener::Accept(const std::function<void(int)>& adopt) {
  pollfd fds[2] = {{fd_, POLLIN, 0}, {wake_read_, POLLIN, 0}};
  for (;;) {
    if (poll(fds, 2, -1) < 0) {
      if (errno == EINTR) continue;
      std::fprintf(stderr, "asarrayd: poll on %s: %s\n", path_.c_str(), std::strerror(errno));
      return;
    }
    if (fds[1].revents != 0) return;
    const int conn = accept4(fd_, nullptr, nullptr, accept_flags_);
    if (conn < 0) {
      if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS || errno == ENOMEM) {
        // Out of descriptors or memory: the pending connection waits in the
        // backlog; retry once calls in flight have freed some.
        absl::SleepFor(absl::Milliseconds(50));
      }
      continue;  // EAGAIN, ECONNABORTED, EINTR: nothing to accept now
    }
    adopt(conn);
  }
}

}  // namespace asarray::server
