#include "server/peer.h"

#include <sys/socket.h>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "grpcpp/server_context.h"

namespace asarray::server {

uid_t PeerUid(const std::string& peer) {
  absl::string_view fd_text = peer;
  int fd;
  if (!absl::ConsumePrefix(&fd_text, "fd:") || !absl::SimpleAtoi(fd_text, &fd) || fd < 0) {
    return kNoLocalUid;
  }
  return SocketPeerUid(fd);
}

uid_t SocketPeerUid(int fd) {
  // SO_PEERCRED answers for any socket (a TCP one gets the overflow uid), so
  // the descriptor must be a Unix socket to speak for a local process.
  int domain = 0;
  socklen_t len = sizeof(domain);
  if (getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len) != 0 || domain != AF_UNIX) {
    return kNoLocalUid;
  }
  struct ucred cred;
  len = sizeof(cred);
  if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || len != sizeof(cred)) {
    return kNoLocalUid;
  }
  return cred.uid;
}

uid_t CallerUid(const grpc::ServerContextBase* context) { return PeerUid(context->peer()); }

}  // namespace asarray::server
