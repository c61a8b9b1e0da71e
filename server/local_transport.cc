#include "server/local_transport.h"

#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "core/status_macros.h"
#include "server/peer.h"

namespace asarray::server {
namespace {

std::atomic<uint64_t> next_connection{1};

// The descriptors a request names, against those attached: every one named
// must be there, and every one there must be named.
absl::Status CheckAttached(size_t attached, size_t named, absl::string_view method) {
  if (attached == named) return absl::OkStatus();
  if (named == 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a ", method, " request takes no descriptors, but ", attached, " came with it"));
  }
  return absl::InvalidArgumentError(absl::StrCat(attached, " descriptors came with the ", method,
                                                 " request, which names ", named));
}

}  // namespace

std::vector<int> LocalTransport::Reply::fds() const {
  std::vector<int> out;
  out.reserve(memory.size());
  for (const auto& m : memory) out.push_back(m->fd());
  return out;
}

void LocalTransport::Adopt(int fd) {
  const Caller caller = Caller::Local(SocketPeerUid(fd));
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

void LocalTransport::Finished(uint64_t thread_id, int fd) {
  absl::MutexLock lock(&mu_);
  fds_.erase(fd);
  close(fd);
  auto it = threads_.find(thread_id);
  finished_.push_back(std::move(it->second));
  threads_.erase(it);
}

void LocalTransport::Stop() {
  std::vector<std::thread> finished;
  {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
    // A thread waiting in recvmsg() sees the end of its connection.
    for (int fd : fds_) shutdown(fd, SHUT_RDWR);
    mu_.Await(absl::Condition(
        +[](absl::flat_hash_set<int>* fds) { return fds->empty(); }, &fds_));
    finished.swap(finished_);
  }
  for (std::thread& thread : finished) thread.join();
}

std::unique_ptr<LocalTransport::Connection> LocalTransport::OpenConnection(const Caller& caller) {
  auto connection = std::make_unique<Connection>();
  connection->id = next_connection++;
  connection->caller = caller;
  service_->LocalConnectionOpened();
  return connection;
}

void LocalTransport::CloseConnection(Connection* connection) {
  // Its handles go first, then the mappings only they and the cache held.
  service_->store()->EndConnection(connection->id);
  connection->cache.Clear();
  service_->LocalConnectionClosed();
}

void LocalTransport::Serve(int fd, const Caller& caller) {
  std::unique_ptr<Connection> connection = OpenConnection(caller);
  for (;;) {
    // The peer closed, or Stop() shut the socket: the connection is over.
    absl::StatusOr<LocalDatagram> datagram = ReceiveLocal(fd, kMaxLocalMessageBytes);
    if (!datagram.ok()) break;
    const auto received = std::chrono::steady_clock::now();
    const Reply reply = Answer(*datagram, connection.get());
    const auto ready = std::chrono::steady_clock::now();
    const bool sent = SendLocal(fd, reply.bytes, reply.fds()).ok();
    const auto since_received = [&](std::chrono::steady_clock::time_point t) {
      return static_cast<uint64_t>(
          std::chrono::duration_cast<std::chrono::nanoseconds>(t - received).count());
    };
    const uint64_t answered_ns = since_received(std::chrono::steady_clock::now());
    service_->metrics().RecordCall(Transport::kLocal, reply.method, reply.code, answered_ns);
    if (!sent) break;
    if (reply.convert) {
      service_->local_convert_latency().Record(answered_ns);
      service_->local_convert_work_latency().Record(since_received(ready));
      service_->CountLocalConvert(since_received(ready));
    } else if (reply.batch_items > 0) {
      service_->CountLocalBatch(static_cast<uint64_t>(reply.batch_items), since_received(ready));
    }
  }
  CloseConnection(connection.get());
}

LocalTransport::Reply LocalTransport::Answer(const LocalDatagram& datagram,
                                             Connection* connection) {
  Reply reply;
  google::protobuf::ArenaOptions arena_options;
  arena_options.initial_block = connection->arena_block.get();
  arena_options.initial_block_size = Connection::kArenaBlockBytes;
  google::protobuf::Arena arena(arena_options);
  auto* response = google::protobuf::Arena::CreateMessage<v1::LocalResponse>(&arena);
  absl::Status status;
  {
    const CallScope call = service_->EnterCall();
    if (!call.serving()) {
      status = ShuttingDown();
    } else {
      status = Dispatch(datagram, connection, &arena, response, &reply);
      service_->Count(status);
    }
  }
  reply.code = status.code();
  if (!status.ok()) {
    response->Clear();
    reply.memory.clear();
    // absl's codes are gRPC's, number for number.
    response->set_code(static_cast<int>(status.code()));
    response->set_message(std::string(status.message()));
  }
  response->SerializeToString(&reply.bytes);
  return reply;
}

absl::Status LocalTransport::Dispatch(const LocalDatagram& datagram, Connection* connection,
                                      google::protobuf::Arena* arena, v1::LocalResponse* response,
                                      Reply* reply) {
  if (datagram.control_truncated) {
    return absl::InvalidArgumentError(
        absl::StrCat("the request's descriptors were cut short (MSG_CTRUNC): at most ",
                     kMaxLocalFds, " may come with one request"));
  }
  if (datagram.truncated) {
    return absl::InvalidArgumentError(absl::StrCat(
        "a local request of more than ", kMaxLocalMessageBytes, " bytes; send it over gRPC"));
  }
  v1::LocalRequest& request = *google::protobuf::Arena::CreateMessage<v1::LocalRequest>(arena);
  if (!request.ParseFromString(datagram.bytes)) {
    return absl::InvalidArgumentError("the datagram does not parse as an asarray.v1.LocalRequest");
  }
  const size_t attached = datagram.fds.size();
  const Caller& caller = connection->caller;
  switch (request.method_case()) {
    case v1::LocalRequest::kConvert:
      reply->method = CallMethod::kConvert;
      reply->convert = true;
      return Convert(request.convert(), datagram, connection, response->mutable_convert(), reply);
    case v1::LocalRequest::kRelease:
      reply->method = CallMethod::kRelease;
      ASARRAY_RETURN_IF_ERROR(CheckAttached(attached, 0, "Release"));
      response->mutable_release();
      return service_->ReleaseNow(request.release(), caller);
    case v1::LocalRequest::kConvertBatch:
      reply->method = CallMethod::kConvertBatch;
      reply->batch_items = request.convert_batch().items_size();
      return ConvertBatch(request.convert_batch(), datagram, connection,
                          response->mutable_convert_batch(), reply);
    case v1::LocalRequest::kRenew:
      reply->method = CallMethod::kRenew;
      ASARRAY_RETURN_IF_ERROR(CheckAttached(attached, 0, "Renew"));
      return service_->RenewNow(request.renew(), caller, response->mutable_renew());
    case v1::LocalRequest::kStats:
      reply->method = CallMethod::kStats;
      ASARRAY_RETURN_IF_ERROR(CheckAttached(attached, 0, "Stats"));
      service_->StatsNow(response->mutable_stats());
      return absl::OkStatus();
    case v1::LocalRequest::METHOD_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError(
      "the local request names no method (convert, convert_batch, release, renew or stats)");
}

absl::Status LocalTransport::Convert(const v1::ConvertRequest& request,
                                     const LocalDatagram& datagram, Connection* connection,
                                     v1::ConvertResponse* response, Reply* reply) {
  // Carried releases come first, whatever becomes of the conversion.
  const Caller& caller = connection->caller;
  service_->ReleaseCarried(request.release_ids(), caller);
  const size_t attached = datagram.fds.size();
  if (request.source().has_fd()) {
    // An fd_index past the attached ones is the converter's to report.
    if (attached > 1) ASARRAY_RETURN_IF_ERROR(CheckAttached(attached, 1, "Convert"));
  } else {
    ASARRAY_RETURN_IF_ERROR(CheckAttached(attached, 0, "Convert"));
  }
  if (request.return_data()) {
    return absl::InvalidArgumentError(
        "return_data conversions answer with the data: send them over gRPC");
  }
  return RunLocal(
      datagram, connection, reply,
      [&](LocalCall*, std::function<void()> work) {
        service_->RunConvertWork(request, caller, std::move(work));
      },
      [&](LocalCall* local) { return service_->ConvertNow(request, caller, response, local); });
}

absl::Status LocalTransport::ConvertBatch(const v1::ConvertBatchRequest& request,
                                          const LocalDatagram& datagram, Connection* connection,
                                          v1::ConvertBatchResponse* response, Reply* reply) {
  // Carried releases come first, whatever becomes of the batch.
  const Caller& caller = connection->caller;
  service_->ReleaseCarried(request.release_ids(), caller);
  // An answer holds at least an id's 34 bytes and its framing a handle: a
  // batch of more items than a datagram holds such handles cannot be
  // answered here, and is refused before any work.
  constexpr size_t kMinHandleBytes = 36;
  if (static_cast<size_t>(request.items_size()) > kMaxLocalMessageBytes / kMinHandleBytes) {
    return absl::ResourceExhaustedError(
        absl::StrCat("a batch of ", request.items_size(),
                     " items has more handles than a local datagram "
                     "carries (",
                     kMaxLocalMessageBytes, " bytes): send fewer items a call, or use gRPC"));
  }
  // Every attached descriptor must be named by an item; an index past them
  // is the converter's to report, with the item's number.
  std::vector<bool> named(datagram.fds.size(), false);
  for (const v1::ConvertRequest& item : request.items()) {
    if (item.source().has_fd() && item.source().fd().fd_index() < named.size()) {
      named[item.source().fd().fd_index()] = true;
    }
  }
  for (size_t i = 0; i < named.size(); ++i) {
    if (!named[i]) {
      return absl::InvalidArgumentError(absl::StrCat(
          "descriptor ", i, " came with the ConvertBatch request, but no item names it"));
    }
  }
  absl::StatusOr<Converter::PreparedBatch> prepared;
  return RunLocal(
      datagram, connection, reply,
      [&](LocalCall* local, std::function<void()> work) {
        prepared = service_->converter()->PrepareBatch(request, caller, local);
        service_->RunBatchWork(prepared, std::move(work));
      },
      [&](LocalCall* local) -> absl::Status {
        ASARRAY_RETURN_IF_ERROR(
            service_->ConvertBatchNow(std::move(prepared), request, caller, response, local));
        // The answer must fit one datagram, with its descriptors.
        const size_t bytes = response->ByteSizeLong() + 16;
        if (local->reply_memory.size() > static_cast<size_t>(kMaxLocalFds) ||
            bytes > kMaxLocalMessageBytes) {
          const size_t fds = local->reply_memory.size();
          service_->UndoBatch(response, caller, local);
          return absl::ResourceExhaustedError(absl::StrCat(
              "the batch's answer takes ", bytes, " bytes and ", fds,
              " descriptors, more than a local datagram carries (", kMaxLocalMessageBytes,
              " bytes, ", kMaxLocalFds, " descriptors): send fewer items a call, or use gRPC"));
        }
        return absl::OkStatus();
      });
}

absl::Status LocalTransport::RunLocal(
    const LocalDatagram& datagram, Connection* connection, Reply* reply,
    const std::function<void(LocalCall*, std::function<void()>)>& schedule,
    const std::function<absl::Status(LocalCall*)>& convert) {
  LocalCall local;
  local.connection = connection->id;
  local.fds = &datagram.fds;
  local.cache = &connection->cache;
  // Where gRPC's Convert would run it: device work and big copies on the
  // workers, the rest on this thread.
  absl::Status status;
  absl::Notification done;
  schedule(&local, [&] {
    status = convert(&local);
    done.Notify();
  });
  done.WaitForNotification();
  reply->memory = std::move(local.reply_memory);
  return status;
}

}  // namespace asarray::server
