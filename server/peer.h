// Who a call comes from. Unix-socket connections are accepted by the server
// itself (UnixListener) and handed to gRPC as file descriptors, so a call's
// peer is "fd:<n>" and the kernel's SO_PEERCRED on that descriptor names the
// uid that connected. gRPC keeps the descriptor open while any call on its
// connection exists, so the number cannot be reused by another connection
// during the call. Thread-safe.
#ifndef ASARRAY_SERVER_PEER_H_
#define ASARRAY_SERVER_PEER_H_

#include <sys/types.h>

#include <string>

namespace grpc {
class ServerContextBase;
}  // namespace grpc

namespace asarray::server {

// The identity of callers without a local uid (TCP). No process runs as
// uid -1, so it owns no shared-memory segment; such callers share their
// handles with each other.
inline constexpr uid_t kNoLocalUid = static_cast<uid_t>(-1);

// The uid behind a gRPC peer string: the SO_PEERCRED uid for "fd:<n>" naming
// a Unix socket, kNoLocalUid for anything else.
uid_t PeerUid(const std::string& peer);

// The SO_PEERCRED uid of `fd` when it is a connected Unix socket,
// kNoLocalUid otherwise.
uid_t SocketPeerUid(int fd);

// PeerUid(context->peer()).
uid_t CallerUid(const grpc::ServerContextBase* context);

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_PEER_H_
