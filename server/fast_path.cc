#include "server/fast_path.h"

#include <errno.h>
#include <sys/socket.h>
#include <unistd.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "server/peer.h"

namespace asarray::server {

void FastPath::Adopt(int fd) {
  const uid_t caller = SocketPeerUid(fd);
  std::vector<std::thread> finished;
  {
    absl::MutexLock lock(&mu_);
    finished.swap(finished_);
    if (stopped_ || fds_.size() >= static_cast<size_t>(kMaxConnections)) {
      close(fd);
    } else {
      const uint64_t id = next_id_++;
      fds_.insert(fd);
      // Finished() waits for this lock, so the thread is in threads_ first.
      threads_[id] = std::thread([this, id, fd, caller] {
        Serve(fd, caller);
        Finished(id, fd);
      });
    }
  }
  for (std::thread& thread : finished) thread.join();
}

void FastPath::Finished(uint64_t id, int fd) {
  absl::MutexLock lock(&mu_);
  fds_.erase(fd);
  close(fd);
  auto it = threads_.find(id);
  finished_.push_back(std::move(it->second));
  threads_.erase(it);
}

void FastPath::Stop() {
  std::vector<std::thread> finished;
  {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
    // A thread waiting in recv() sees the end of its connection.
    for (int fd : fds_) shutdown(fd, SHUT_RDWR);
    mu_.Await(absl::Condition(
        +[](absl::flat_hash_set<int>* fds) { return fds->empty(); }, &fds_));
    finished.swap(finished_);
  }
  for (std::thread& thread : finished) thread.join();
}

void FastPath::Serve(int fd, uid_t caller) {
  // One byte more than a request may hold: a datagram that fills it was cut.
  std::string request(kMaxRequestBytes + 1, '\0');
  for (;;) {
    const ssize_t n = recv(fd, request.data(), request.size(), 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return;  // the peer closed, or Stop() shut the socket
    const std::string answer = Answer(absl::string_view(request.data(), n), caller);
    ssize_t sent;
    do {
      sent = send(fd, answer.data(), answer.size(), MSG_NOSIGNAL);
    } while (sent < 0 && errno == EINTR);
    if (sent < 0) return;
  }
}

std::string FastPath::Answer(absl::string_view request, uid_t caller) {
  std::string out(1, '\0');
  absl::Status status;
  if (request.empty()) {
    status = absl::InvalidArgumentError("empty fast-path request: no method byte");
  } else if (request.size() > kMaxRequestBytes) {
    status = absl::InvalidArgumentError(absl::StrCat(
        "fast-path request of more than ", kMaxRequestBytes, " bytes; send it over gRPC"));
  } else if (!service_->Enter()) {
    status = ShuttingDown();
    service_->Exit();
  } else {
    const absl::string_view message = request.substr(1);
    switch (request[0]) {
      case kConvert:
        status = Convert(message, caller, &out);
        break;
      case kRelease:
        status = Release(message, caller);
        break;
      default:
        status = absl::InvalidArgumentError(absl::StrCat(
            "unknown fast-path method ", static_cast<int>(request[0]),
            " (1 is Convert, 2 is Release)"));
    }
    service_->Count(status);
    service_->Exit();
  }
  if (status.ok()) return out;
  // absl's codes are gRPC's, number for number.
  out.assign(1, static_cast<char>(status.code()));
  out.append(status.message().data(), status.message().size());
  return out;
}

absl::Status FastPath::Convert(absl::string_view message, uid_t caller, std::string* out) {
  v1::ConvertRequest request;
  if (!request.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
    return absl::InvalidArgumentError(
        "the fast-path request does not parse as an asarray.v1.ConvertRequest");
  }
  if (request.return_data()) {
    return absl::InvalidArgumentError(
        "return_data conversions answer with the data: send them over gRPC");
  }
  service_->ReleaseCarried(request, caller);
  // Where gRPC's Convert would run it: device work and big copies on the
  // workers, the rest on this thread.
  v1::ConvertResponse response;
  absl::Status status;
  absl::Notification done;
  service_->RunConvertWork(request, caller, [&] {
    status = service_->ConvertNow(request, caller, &response);
    done.Notify();
  });
  done.WaitForNotification();
  if (status.ok()) response.AppendToString(out);
  return status;
}

absl::Status FastPath::Release(absl::string_view message, uid_t caller) {
  v1::ReleaseRequest request;
  if (!request.ParseFromArray(message.data(), static_cast<int>(message.size()))) {
    return absl::InvalidArgumentError(
        "the fast-path request does not parse as an asarray.v1.ReleaseRequest");
  }
  return service_->ReleaseNow(request, caller);
}

}  // namespace asarray::server
