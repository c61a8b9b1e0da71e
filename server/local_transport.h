// The local transport (see LocalRequest in the proto): Convert,
// ConvertBatch, Release, Renew and Stats for clients on this host, over a SOCK_SEQPACKET Unix
// socket beside each gRPC one (its path plus ".local"), one datagram each
// way, file descriptors beside it. On a small conversion a gRPC round trip
// costs several times the work (HTTP/2 framing, and hand-offs between
// threads on both ends); this costs the two wake-ups. Same callers
// (SO_PEERCRED, the same private directory and socket mode), same checks and
// same work as the gRPC methods (AsArrayService::ConvertNow and the rest).
//
// What it adds: memory as descriptors. A client's memfd travels with its
// request (an fd source); a result the server makes is a memfd of its own,
// sent with the answer. Nothing has a name, so nothing is left behind: the
// kernel frees the memory once no process holds it. And leases tied to the
// connection: a handle made here ends when its connection closes, crashes
// included, unless its request asked for a TTL.
//
// One thread serves each connection, at most kMaxConnections at a time (more
// are closed at once; the client then uses gRPC). Thread-safe.
#ifndef ASARRAY_SERVER_LOCAL_TRANSPORT_H_
#define ASARRAY_SERVER_LOCAL_TRANSPORT_H_

#include <sys/types.h>

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/synchronization/mutex.h"
#include "google/protobuf/arena.h"
#include "server/service.h"
#include "wire/local_socket.h"

namespace asarray::server {

class LocalTransport {
 public:
  static constexpr int kMaxConnections = 256;

  // One connection's state: who it is, and the memfds it sent (mapped).
  struct Connection {
    uint64_t id = 0;  // > 0; leases tied to it carry it
    Caller caller;
    ClientFdCache cache;
    // The first block of each call's protobuf arena, which the call's
    // request and response live in: a call of any size allocates its
    // messages without malloc, up to this much.
    std::unique_ptr<char[]> arena_block = std::make_unique<char[]>(kArenaBlockBytes);
    static constexpr size_t kArenaBlockBytes = 256 << 10;
  };

  // An answer: the serialized LocalResponse, the memory whose descriptors go
  // beside it (held until sent), and their descriptors in index order.
  struct Reply {
    std::string bytes;
    std::vector<std::shared_ptr<const HostMemory>> memory;
    bool convert = false;                      // the request was a Convert
    int batch_items = 0;                       // the items of a ConvertBatch request, failed or not
    CallMethod method = CallMethod::kUnknown;  // the request's, for the metrics
    absl::StatusCode code = absl::StatusCode::kOk;
    std::vector<int> fds() const;
  };

  // REQUIRES: `service` outlives this object.
  explicit LocalTransport(AsArrayService* service) : service_(service) {}
  ~LocalTransport() { Stop(); }
  LocalTransport(const LocalTransport&) = delete;
  LocalTransport& operator=(const LocalTransport&) = delete;

  // Serves `fd`, a connected SOCK_SEQPACKET socket, until its peer closes
  // it; then ends the leases tied to it. Takes the descriptor.
  void Adopt(int fd);
  // Ends every connection and waits for their threads. Call it after the
  // service drained, so that no call is cut short. Idempotent.
  void Stop();

  // A new connection of `caller` for Answer (its leases end with
  // CloseConnection); for tests and fuzzing, which call Answer directly.
  std::unique_ptr<Connection> OpenConnection(const Caller& caller);
  void CloseConnection(Connection* connection);

  // The answer to `datagram`, received on `connection` with its descriptors
  // (closed when the call is done, unless a handle keeps the memory).
  Reply Answer(const LocalDatagram& datagram, Connection* connection);

 private:
  void Serve(int fd, const Caller& caller);
  void Finished(uint64_t thread_id, int fd);
  // `request` and `response` live on `arena`.
  absl::Status Dispatch(const LocalDatagram& datagram, Connection* connection,
                        google::protobuf::Arena* arena, v1::LocalResponse* response, Reply* reply);
  absl::Status Convert(const v1::ConvertRequest& request, const LocalDatagram& datagram,
                       Connection* connection, v1::ConvertResponse* response, Reply* reply);
  absl::Status ConvertBatch(const v1::ConvertBatchRequest& request, const LocalDatagram& datagram,
                            Connection* connection, v1::ConvertBatchResponse* response,
                            Reply* reply);
  // Runs `convert` where `schedule` (given the call, on this thread) puts it,
  // as gRPC would (see AsArrayService::RunConvertWork), and waits for it; the
  // call's descriptors go in `reply`.
  absl::Status RunLocal(const LocalDatagram& datagram, Connection* connection, Reply* reply,
                        const std::function<void(LocalCall*, std::function<void()>)>& schedule,
                        const std::function<absl::Status(LocalCall*)>& convert);

  AsArrayService* const service_;
  absl::Mutex mu_;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  absl::flat_hash_set<int> fds_ ABSL_GUARDED_BY(mu_);  // of live connections
  absl::flat_hash_map<uint64_t, std::thread> threads_ ABSL_GUARDED_BY(mu_);
  std::vector<std::thread> finished_ ABSL_GUARDED_BY(mu_);  // to join
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_LOCAL_TRANSPORT_H_
