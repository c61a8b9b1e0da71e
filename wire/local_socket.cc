#include "wire/local_socket.h"

#include <errno.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "wire/posix_util.h"

namespace asarray {

void UniqueFd::Reset() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

absl::StatusOr<UniqueFd> ConnectLocal(const std::string& path) {
  sockaddr_un addr{};
  if (path.size() >= sizeof(addr.sun_path)) {
    return absl::InvalidArgumentError(
        absl::StrCat("socket path of ", path.size(), " bytes is too long for a Unix socket"));
  }
  UniqueFd fd(socket(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0));
  if (!fd.valid()) return ErrnoStatus(errno, "creating a local-transport socket");
  addr.sun_family = AF_UNIX;
  std::memcpy(addr.sun_path, path.data(), path.size());
  if (connect(fd.get(), reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)) != 0) {
    return absl::UnavailableError(absl::StrCat("connecting to ", path, ": ", std::strerror(errno)));
  }
  return fd;
}

absl::Status SendLocal(int socket, const std::string& bytes, absl::Span<const int> fds) {
  if (fds.size() > static_cast<size_t>(kMaxLocalFds)) {
    return absl::InvalidArgumentError(
        absl::StrCat(fds.size(), " descriptors in one datagram; at most ", kMaxLocalFds));
  }
  iovec iov{const_cast<char*>(bytes.data()), bytes.size()};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxLocalFds)];
  if (!fds.empty()) {
    const size_t fd_bytes = sizeof(int) * fds.size();
    msg.msg_control = control;
    msg.msg_controllen = CMSG_SPACE(fd_bytes);
    cmsghdr* cmsg = CMSG_FIRSTHDR(&msg);
    cmsg->cmsg_level = SOL_SOCKET;
    cmsg->cmsg_type = SCM_RIGHTS;
    cmsg->cmsg_len = CMSG_LEN(fd_bytes);
    std::memcpy(CMSG_DATA(cmsg), fds.data(), fd_bytes);
  }
  ssize_t sent;
  do {
    sent = sendmsg(socket, &msg, MSG_NOSIGNAL);
  } while (sent < 0 && errno == EINTR);
  if (sent < 0) {
    return absl::UnavailableError(
        absl::StrCat("sending on the local transport: ", std::strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<LocalDatagram> ReceiveLocal(int socket, size_t max_bytes) {
  LocalDatagram out;
  // Received into a buffer of the thread's, which lives as long as it does,
  // then copied at its length: a datagram is far smaller than the most one
  // may hold, and zeroing that much for every one costs more than the copy.
  thread_local std::vector<char> buffer;
  if (buffer.size() < max_bytes) buffer.resize(max_bytes);
  iovec iov{buffer.data(), max_bytes};
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(int) * kMaxLocalFds)];
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  ssize_t n;
  do {
    n = recvmsg(socket, &msg, MSG_CMSG_CLOEXEC);
  } while (n < 0 && errno == EINTR);
  // Descriptors first: they are ours now, whatever else went wrong.
  if (n >= 0) {
    for (cmsghdr* c = CMSG_FIRSTHDR(&msg); c != nullptr; c = CMSG_NXTHDR(&msg, c)) {
      if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS) continue;
      const size_t count = (c->cmsg_len - CMSG_LEN(0)) / sizeof(int);
      for (size_t i = 0; i < count; ++i) {
        int fd;
        std::memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
        out.fds.emplace_back(fd);
      }
    }
  }
  if (n < 0) {
    return absl::UnavailableError(
        absl::StrCat("receiving on the local transport: ", std::strerror(errno)));
  }
  if (n == 0) return absl::UnavailableError("the local transport's connection closed");
  out.bytes.assign(buffer.data(), std::min(static_cast<size_t>(n), max_bytes));
  out.truncated = (msg.msg_flags & MSG_TRUNC) != 0;
  out.control_truncated = (msg.msg_flags & MSG_CTRUNC) != 0;
  return out;
}

}  // namespace asarray
