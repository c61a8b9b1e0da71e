// The datagrams of the local transport (see LocalRequest in the proto): one
// serialized message per SOCK_SEQPACKET datagram, file descriptors beside
// it as SCM_RIGHTS ancillary data. Shared by the server, the C++ client and
// the tests, so that the framing exists once. Thread-compatible.
#ifndef ASARRAY_WIRE_LOCAL_SOCKET_H_
#define ASARRAY_WIRE_LOCAL_SOCKET_H_

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace asarray {

// Largest datagram either side sends, and most descriptors beside one.
inline constexpr size_t kMaxLocalMessageBytes = 64 << 10;
inline constexpr int kMaxLocalFds = 16;

// The local transport's socket beside the gRPC Unix socket at `grpc_path`.
inline std::string LocalSocketPath(const std::string& grpc_path) { return grpc_path + ".local"; }

// One file descriptor, closed on destruction. Movable, not copyable.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      Reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset();

 private:
  int fd_ = -1;
};

// A received datagram. Every descriptor that arrived is in `fds` (marked
// close-on-exec), and closed with it unless taken.
struct LocalDatagram {
  std::string bytes;
  std::vector<UniqueFd> fds;
  bool truncated = false;          // the datagram was longer than the buffer
  bool control_truncated = false;  // descriptors were lost (MSG_CTRUNC)
};

// Connects to the SOCK_SEQPACKET socket at `path` (close-on-exec).
absl::StatusOr<UniqueFd> ConnectLocal(const std::string& path);

// Sends `bytes` with `fds` beside it. Retries EINTR; never raises SIGPIPE.
absl::Status SendLocal(int socket, const std::string& bytes, absl::Span<const int> fds);

// Receives one datagram of at most `max_bytes` (a longer one is cut and
// flagged) and up to kMaxLocalFds descriptors. Retries EINTR. An empty
// datagram or the peer's close gives UNAVAILABLE with "closed".
absl::StatusOr<LocalDatagram> ReceiveLocal(int socket, size_t max_bytes);

}  // namespace asarray

#endif  // ASARRAY_WIRE_LOCAL_SOCKET_H_
