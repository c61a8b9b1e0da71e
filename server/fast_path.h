// The fast path: Convert and Release for clients on this host, over a
// SOCK_SEQPACKET Unix socket beside each gRPC one (its path plus ".fast"),
// one datagram each way. On a small conversion a gRPC round trip costs
// several times the work (HTTP/2 framing, and hand-offs between threads on
// both ends); this costs the two wake-ups. Same callers (SO_PEERCRED, the
// same private directory and socket mode), same checks and same work as the
// gRPC methods (AsArrayService::ConvertNow, ReleaseNow); gRPC stays the API.
//
// Wire format. A request is one datagram: a method byte (kConvert,
// kRelease), then the serialized asarray.v1 request; at most
// kMaxRequestBytes in all (larger ones, and return_data conversions, go over
// gRPC). The answer is one datagram: a status byte (the gRPC status code),
// then the serialized response when it is 0 (OK), else the error message.
// An empty datagram reads as the end of the connection, which then closes.
//
// One thread serves each connection, at most kMaxConnections at a time (more
// are closed at once; the client then uses gRPC). Thread-safe.
#ifndef ASARRAY_SERVER_FAST_PATH_H_
#define ASARRAY_SERVER_FAST_PATH_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "server/service.h"

namespace asarray::server {

class FastPath {
 public:
  static constexpr char kConvert = 1;
  static constexpr char kRelease = 2;
  static constexpr size_t kMaxRequestBytes = 64 << 10;
  static constexpr int kMaxConnections = 256;
  // The fast path's socket beside the gRPC socket at `grpc_socket_path`.
  static std::string SocketPath(const std::string& grpc_socket_path) {
    return grpc_socket_path + ".fast";
  }

  // REQUIRES: `service` outlives this object.
  explicit FastPath(AsArrayService* service) : service_(service) {}
  ~FastPath() { Stop(); }
  FastPath(const FastPath&) = delete;
  FastPath& operator=(const FastPath&) = delete;

  // Serves `fd`, a connected SOCK_SEQPACKET socket, until its peer closes
  // it. Takes the descriptor.
  void Adopt(int fd);
  // Ends every connection and waits for their threads. Call it after the
  // service drained, so that no call is cut short. Idempotent.
  void Stop();

  // The answer datagram to `request` from `caller` (exposed for tests).
  std::string Answer(absl::string_view request, uid_t caller);

 private:
  void Serve(int fd, uid_t caller);
  void Finished(uint64_t id, int fd);
  absl::Status Convert(absl::string_view message, uid_t caller, std::string* out);
  absl::Status Release(absl::string_view message, uid_t caller);

  AsArrayService* const service_;
  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_set<int> fds_ ABSL_GUARDED_BY(mu_);  // of live connections
  absl::flat_hash_map<uint64_t, std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> finished_ ABSL_GUARDED_BY(mu_);  // to join
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_FAST_PATH_H_
