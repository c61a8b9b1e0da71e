// Who a call comes from. Unix-socket connections are accepted by the server
// itself (UnixListener) and handed to gRPC as file descriptors, so a call's
// peer is "fd:<n>" and the kernel's SO_PEERCRED on that descriptor names the
// uid that connected. gRPC keeps the descriptor open while any call on its
// connection exists, so the number cannot be reused by another connection
// during the call. A TCP caller has no local uid; under mutual TLS it is the
// subject of the client certificate the server verified. Thread-safe.
#ifndef ASARRAY_SERVER_PEER_H_
#define ASARRAY_SERVER_PEER_H_

#include <sys/types.h>

#include <string>
#include <utility>

namespace grpc {
class ServerContextBase;
}  // namespace grpc

namespace asarray::server {

// The uid of callers without a local one (TCP). No process runs as uid -1,
// so it owns no shared-memory segment.
inline constexpr uid_t kNoLocalUid = static_cast<uid_t>(-1);

// The identity a handle belongs to. Unix callers are their uid. TCP callers
// are their verified certificate's subject under mutual TLS, and otherwise
// one shared identity (no uid, no subject): they see each other's handles.
struct Caller {
  uid_t uid = kNoLocalUid;
  std::string subject;  // a TCP caller's verified certificate subject, or ""

  static Caller Local(uid_t uid) { return Caller{uid, ""}; }
  static Caller Remote(std::string subject) { return Caller{kNoLocalUid, std::move(subject)}; }
  bool operator==(const Caller& other) const {
    return uid == other.uid && subject == other.subject;
  }
  bool operator!=(const Caller& other) const { return !(*this == other); }
};

// The uid behind a gRPC peer string: the SO_PEERCRED uid for "fd:<n>" naming
// a Unix socket, kNoLocalUid for anything else.
uid_t PeerUid(const std::string& peer);

// The SO_PEERCRED uid of `fd` when it is a connected Unix socket,
// kNoLocalUid otherwise.
uid_t SocketPeerUid(int fd);

// The caller of a gRPC call: PeerUid of its peer, and for a TCP caller the
// subject of the certificate it presented (which the server verified: it
// asks for one only under --tls_client_ca, and then requires it).
Caller CallerOf(const grpc::ServerContextBase* context);

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_PEER_H_
