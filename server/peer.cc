#include "server/peer.h"

#include <sys/socket.h>

#include <memory>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/string_view.h"
#include "absl/strings/strip.h"
#include "grpc/grpc_security_constants.h"
#include "grpcpp/security/auth_context.h"
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

Caller CallerOf(const grpc::ServerContextBase* context) {
  const uid_t uid = PeerUid(context->peer());
  if (uid != kNoLocalUid) return Caller::Local(uid);
  const std::shared_ptr<const grpc::AuthContext> auth = context->auth_context();
  if (auth == nullptr) return Caller{};
  std::vector<grpc::string_ref> subject = auth->FindPropertyValues(GRPC_X509_SUBJECT_PROPERTY_NAME);
  if (subject.empty()) return Caller{};
  return Caller::Remote(std::string(subject.front().data(), subject.front().size()));
}

}  // namespace asarray::server
