#include "server/service.h"

#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <functional>
#include <cstring>
#include <deque>
#include <memory>
#include <optional>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "grpcpp/impl/codegen/server_callback_handlers.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/slice.h"
#include "core/cast.h"
#include "core/quote.h"
#include "core/status_macros.h"
#include "server/peer.h"
#include "server/upload_message.h"
#include "wire/posix_util.h"
#include "wire/proto_convert.h"

namespace asarray::server {
namespace {

constexpr uint64_t kDefaultChunk = 1 << 20;
constexpr uint64_t kMaxChunk = 4 << 20;
// Requests that copy fewer bytes than this run on gRPC's callback thread.
constexpr uint64_t kInlineWorkBytes = 256 << 10;

// `local`: the handle goes over the local transport, and memory without a
// name (a memfd) travels as a descriptor: the request's own when the result
// aliases the fd source, else one attached to the response.
HandleInfo ToHandleInfo(const Tensor& t, absl::Time expires,
                        const v1::ConvertRequest* request = nullptr,
                        LocalCall* local = nullptr) {
  HandleInfo info;
  info.id = t.id;
  info.dtype = t.dtype;
  info.layout = t.layout;
  info.device = t.device;
  info.requires_grad = t.requires_grad;
  info.shares_memory = t.shares_memory;
  info.warnings = t.warnings;
  if (t.device_memory != nullptr) {
    info.cuda_ipc_handle = t.device_memory->ipc_handle();
    info.cuda_offset = t.device_memory->offset_in_allocation();
    info.cuda_size = t.device_memory->size();
  } else if (!t.memory->name().empty()) {
    info.shm_name = t.memory->name();
    info.shm_offset = t.memory->offset_in_segment();
    info.shm_size = t.memory->size();
  } else if (local != nullptr) {
    // Over gRPC a memfd has no location: Read streams its bytes.
    info.has_fd = true;
    info.fd_offset = t.memory->offset_in_segment();
    info.fd_size = t.memory->size();
    if (t.shares_memory && request->source().has_fd()) {
      info.fd_from_request = true;
      info.fd_index = request->source().fd().fd_index();
    } else {
      // The results of a batch share one arena: its descriptor goes once.
      auto& sent = local->reply_memory;
      const auto same_file = std::find_if(sent.begin(), sent.end(), [&](const auto& m) {
        return m->fd() == t.memory->fd();
      });
      info.fd_index = static_cast<uint32_t>(same_file - sent.begin());
      if (same_file == sent.end()) sent.push_back(t.memory);
    }
  }
  // A lease that ends with its connection has no time.
  info.lease_expires = expires == absl::InfiniteFuture() ? absl::InfinitePast() : expires;
  return info;
}

// The handle of a result that is returned as data: no id, memory or lease.
HandleInfo DataOnlyHandle(const Tensor& t) {
  HandleInfo info = ToHandleInfo(t, absl::InfinitePast());
  info.id.clear();
  info.shm_name.clear();
  info.shm_offset = info.shm_size = 0;
  info.cuda_ipc_handle.clear();
  info.cuda_offset = info.cuda_size = 0;
  // The tensor's own strides, which a remote client gives the copy it
  // builds (as torch.asarray would have them); the data is row-major.
  info.layout.offset = 0;
  return info;
}

// Streams a RowMajorStream. With a pending conversion it first waits for
// Start().
class TensorStreamer final : public grpc::ServerWriteReactor<v1::ReadResponse> {
 public:
  explicit TensorStreamer(AsArrayService* service) : service_(service) {}

  // Runs `prepare` on the executor once gRPC has bound this reactor to its
  // call (the initial metadata went out). Starting writes from another thread
  // before the handler has returned the reactor races with that binding.
  void PrepareOnExecutor(std::function<void()> prepare) {
    prepare_ = std::move(prepare);
    StartSendInitialMetadata();
  }

  void OnSendInitialMetadataDone(bool ok) override {
    if (!prepare_) return;
    if (!ok) {
      Fail(absl::CancelledError("the client went away before the conversion"));
      return;
    }
    service_->executor()->Schedule(std::move(prepare_));
  }

  // Starts streaming, or fails with the stream's status.
  void Start(absl::StatusOr<RowMajorStream> stream) {
    if (!stream.ok()) {
      Fail(stream.status());
      return;
    }
    stream_.emplace(*std::move(stream));
    NextWrite();
  }

  void Fail(const absl::Status& status) {
    service_->Count(status);
    Finish(ToGrpcStatus(status));
  }

  void OnWriteDone(bool ok) override {
    if (!ok) {
      Fail(absl::CancelledError("the client stopped reading"));
      return;
    }
    NextWrite();
  }

  void OnDone() override {
    service_->Exit();
    delete this;
  }

 private:
  void NextWrite() {
    if (stream_->done()) {
      service_->Count(absl::OkStatus());
      Finish(grpc::Status::OK);
      return;
    }
    absl::Status s = stream_->Next(&response_);
    if (!s.ok()) {
      Fail(s);
      return;
    }
    StartWrite(&response_);
  }

  AsArrayService* const service_;
  std::function<void()> prepare_;
  std::optional<RowMajorStream> stream_;
  v1::ReadResponse response_;
};

// A data chunk of an upload, still in the slices gRPC received it in: the
// bytes [offset, offset + size) of their concatenation. `pieces` views the
// slices' bytes (which stay put when the slices are moved).
struct ReceivedChunk {
  std::vector<grpc::Slice> slices;
  std::vector<absl::string_view> pieces;
  uint64_t offset = 0;
  uint64_t size = 0;
};

void CopyChunk(const ReceivedChunk& chunk, unsigned char* out) {
  CopyFromPieces(chunk.pieces, chunk.offset, chunk.size, out);
}

// Writes a chunk into an upload's segment at byte `at`. A warm segment, or
// private memory, takes a copy through the mapping. A fresh shared one takes
// pwritev: the kernel allocates its pages as it copies, with no page fault
// per 4 KiB page, and a file system out of room answers ENOSPC here rather
// than SIGBUS later; once every byte is written, every page is in.
absl::Status WriteChunk(const ReceivedChunk& chunk, const ShmSegment& storage, uint64_t at) {
  if (storage.touched() || storage.fd() < 0) {
    CopyChunk(chunk, storage.data() + at);
    return absl::OkStatus();
  }
  std::vector<iovec> iov;
  ForEachPieceRange(chunk.pieces, chunk.offset, chunk.size, [&](const char* data, size_t n) {
    iov.push_back({const_cast<char*>(data), n});
  });
  size_t first = 0;
  off_t offset = static_cast<off_t>(at);
  while (first < iov.size()) {
    const int count = static_cast<int>(std::min<size_t>(iov.size() - first, IOV_MAX));
    ssize_t written = pwritev(storage.fd(), iov.data() + first, count, offset);
    if (written < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus(errno, absl::StrCat("writing ", chunk.size, " uploaded bytes at ", at));
    }
    if (written == 0) return absl::InternalError("the upload's segment took no bytes");
    offset += written;
    while (first < iov.size() && static_cast<size_t>(written) >= iov[first].iov_len) {
      written -= static_cast<ssize_t>(iov[first].iov_len);
      ++first;
    }
    if (written > 0) {
      iov[first].iov_base = static_cast<char*>(iov[first].iov_base) + written;
      iov[first].iov_len -= static_cast<size_t>(written);
    }
  }
  return absl::OkStatus();
}

grpc::ByteBuffer Serialized(const google::protobuf::MessageLite& message) {
  grpc::Slice slice(message.SerializeAsString());
  return grpc::ByteBuffer(&slice, 1);
}

// Receives an upload into its storage segment: a header, then data chunks in
// order. Messages arrive raw and are decoded here (server/upload_message.h),
// so each chunk's bytes are copied once, from the received slices into the
// segment. Receiving and copying overlap: gRPC keeps reading while one worker
// task first creates the segment and then copies the queued chunks in. The
// queue holds at most kMaxQueuedBytes (plus one chunk) of received slices;
// past that, reading pauses until the worker catches up, so memory stays
// bounded. The worker also runs the conversion at the end.
//
// gRPC operations (StartRead, Finish) are issued outside mu_. Finish comes
// exactly once, when no read is outstanding and the worker is idle.
class UploadReceiver final : public grpc::ServerReadReactor<grpc::ByteBuffer> {
 public:
  UploadReceiver(AsArrayService* service, const Caller& caller, grpc::ByteBuffer* response)
      : service_(service), caller_(caller), response_(response),
        foreground_(service->store()->MarkForeground()) {}

  void Begin() {
    {
      absl::MutexLock lock(&mu_);
      reading_ = true;
    }
    StartRead(&message_);
  }

  void Refuse(const absl::Status& status) {
    absl::ReleasableMutexLock lock(&mu_);
    const Action action = FailLocked(status);
    lock.Release();
    Perform(action);
  }

  void OnReadDone(bool ok) override {
    // Decoding needs no lock: message_ belongs to the read that just ended.
    ReceivedChunk chunk;
    absl::StatusOr<UploadMessage> message;
    if (ok) {
      if (!message_.Dump(&chunk.slices).ok()) chunk.slices.clear();  // an empty message
      message_.Clear();
      chunk.pieces.reserve(chunk.slices.size());
      for (const grpc::Slice& s : chunk.slices) {
        chunk.pieces.emplace_back(reinterpret_cast<const char*>(s.begin()), s.size());
      }
      message = ParseUploadMessage(chunk.pieces);
    }
    absl::ReleasableMutexLock lock(&mu_);
    reading_ = false;
    Action action = Received(ok, message, std::move(chunk));
    lock.Release();
    Perform(action);
  }

  void OnDone() override {
    service_->Exit();
    delete this;
  }

 private:
  enum class Action { kNone, kRead, kFinish };
  static constexpr uint64_t kMaxQueuedBytes = 8 << 20;

  Action Received(bool ok, absl::StatusOr<UploadMessage>& message, ReceivedChunk chunk)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (failed_) return FinishIfIdleLocked();
    if (!ok) {
      if (!header_.has_value()) {
        return FailLocked(absl::InvalidArgumentError("upload ended before its header"));
      }
      ended_ = true;
      PumpLocked();
      return Action::kNone;
    }
    if (!message.ok()) return FailLocked(message.status());
    if (message->part == UploadMessage::Part::kHeader) {
      if (header_.has_value()) {
        return FailLocked(absl::InvalidArgumentError("upload sent a second header"));
      }
      header_ = std::move(message->header);
      PumpLocked();  // the worker creates the segment meanwhile
      return ReadLocked();
    }
    if (!header_.has_value()) {
      return FailLocked(absl::InvalidArgumentError("upload sent data before its header"));
    }
    // A message with no field set carries no data.
    const uint64_t n = message->part == UploadMessage::Part::kData ? message->data_size : 0;
    if (n > header_->storage_size() - received_) {
      return FailLocked(absl::InvalidArgumentError(
          absl::StrCat("upload sent ", received_ + n, " bytes, past the declared ",
                       header_->storage_size())));
    }
    if (n == 0) return ReadLocked();
    received_ += n;
    chunk.offset = message->data_offset;
    chunk.size = n;
    if (storage_ready_ && storage_->touched() && queue_.empty() && !worker_running_) {
      // A warm segment takes the chunk at memory speed: copy it here.
      CopyChunk(chunk, storage_->data() + copied_);
      copied_ += n;
      return ReadLocked();
    }
    queued_bytes_ += n;
    queue_.push_back(std::move(chunk));
    PumpLocked();
    return queued_bytes_ < kMaxQueuedBytes ? ReadLocked() : Action::kNone;
  }

  Action ReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    reading_ = true;
    return Action::kRead;
  }

  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (worker_running_) return;
    worker_running_ = true;
    service_->executor()->Schedule([this] { Work(); });
  }

  // The worker: creates the segment, copies chunks in, converts at the end.
  void Work() {
    absl::ReleasableMutexLock lock(&mu_);
    for (;;) {
      if (failed_) {
        worker_running_ = false;
        const Action action = FinishIfIdleLocked();
        lock.Release();
        Perform(action);
        return;
      }
      if (storage_ == nullptr) {
        const v1::ConvertUploadHeader header = *header_;
        mu_.Unlock();
        absl::StatusOr<std::shared_ptr<ShmSegment>> segment =
            service_->converter()->BeginUpload(header, caller_);
        mu_.Lock();
        if (!segment.ok()) {
          FailLocked(segment.status());
          continue;
        }
        storage_ = *std::move(segment);
        storage_ready_ = true;
        continue;
      }
      if (!queue_.empty()) {
        ReceivedChunk chunk = std::move(queue_.front());
        queue_.pop_front();
        const uint64_t at = copied_;  // only this worker advances it meanwhile
        mu_.Unlock();
        const absl::Status written = WriteChunk(chunk, *storage_, at);
        chunk.pieces.clear();
        chunk.slices.clear();  // hand the received memory back before locking
        mu_.Lock();
        if (!written.ok()) {
          FailLocked(written);
          continue;
        }
        copied_ += chunk.size;
        queued_bytes_ -= chunk.size;
        if (!reading_ && !ended_ && !failed_ && queued_bytes_ < kMaxQueuedBytes) {
          ReadLocked();
          mu_.Unlock();
          StartRead(&message_);
          mu_.Lock();
        }
        continue;
      }
      if (!ended_) {
        worker_running_ = false;
        return;
      }
      // Every byte is in.
      if (copied_ != storage_->size()) {
        FailLocked(absl::InvalidArgumentError(absl::StrCat(
            "upload ended after ", copied_, " of ", storage_->size(), " declared bytes")));
        continue;
      }
      worker_running_ = false;
      finished_ = true;
      std::shared_ptr<ShmSegment> storage = std::move(storage_);
      const v1::ConvertUploadHeader header = *header_;
      lock.Release();
      absl::StatusOr<Tensor> tensor =
          service_->converter()->FinishUpload(header, std::move(storage), caller_);
      absl::Status status = tensor.status();
      if (tensor.ok()) {
        service_->CountConverted(*tensor);
        const TensorStore::Lease lease = service_->store()->Add(*std::move(tensor));
        v1::ConvertResponse reply;
        status = HandleToProto(ToHandleInfo(*lease.tensor, lease.expires), reply.mutable_handle());
        *response_ = Serialized(reply);
      }
      service_->Count(status);
      Finish(ToGrpcStatus(status));
      return;
    }
  }

  Action FailLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (!failed_) {
      failed_ = true;
      status_ = status;
      queue_.clear();
      queued_bytes_ = 0;
    }
    return FinishIfIdleLocked();
  }

  Action FinishIfIdleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (reading_ || worker_running_ || finished_) return Action::kNone;
    finished_ = true;
    return Action::kFinish;
  }

  void Perform(Action action) {
    if (action == Action::kRead) {
      StartRead(&message_);
    } else if (action == Action::kFinish) {
      storage_.reset();  // nobody else touches it any more
      absl::Status status;
      {
        absl::MutexLock lock(&mu_);
        status = status_;
      }
      service_->Count(status);
      Finish(ToGrpcStatus(status));
    }
  }

  AsArrayService* const service_;
  const Caller caller_;
  grpc::ByteBuffer* const response_;  // a serialized ConvertResponse
  grpc::ByteBuffer message_;          // owned by the outstanding read
  const SegmentPool::Foreground foreground_;

  absl::Mutex mu_;
  std::optional<v1::ConvertUploadHeader> header_ ABSL_GUARDED_BY(mu_);
  std::deque<ReceivedChunk> queue_ ABSL_GUARDED_BY(mu_);
  uint64_t queued_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t received_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t copied_ ABSL_GUARDED_BY(mu_) = 0;
  bool reading_ ABSL_GUARDED_BY(mu_) = false;
  bool ended_ ABSL_GUARDED_BY(mu_) = false;
  bool worker_running_ ABSL_GUARDED_BY(mu_) = false;
  bool failed_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status status_ ABSL_GUARDED_BY(mu_);
  // Created by the worker (storage_ready_ then says so, under mu_); filled by
  // the worker, or under mu_ by the reader while the worker is idle.
  std::shared_ptr<ShmSegment> storage_;
  bool storage_ready_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace

absl::StatusOr<RowMajorStream> RowMajorStream::Open(const Converter* converter,
                                                    std::shared_ptr<const Tensor> tensor,
                                                    const HandleInfo& handle,
                                                    uint64_t chunk_bytes) {
  ASSIGN_OR_RETURN(const ViewSizes sizes,
                   ComputeViewSizes(tensor->layout, ItemSize(tensor->dtype)));
  RowMajorStream stream;
  RETURN_IF_ERROR(HandleToProto(handle, &stream.handle_));
  stream.converter_ = converter;
  stream.tensor_ = std::move(tensor);
  stream.total_ = sizes.numel;
  // A data field's tag and length take at most 6 bytes; 64 spare.
  stream.chunk_bytes_ = std::min<uint64_t>(chunk_bytes == 0 ? kDefaultChunk : chunk_bytes,
                                           kMaxStreamMessageBytes - 64);
  return stream;
}

absl::Status RowMajorStream::Next(v1::ReadResponse* out) {
  out->Clear();
  const uint64_t item = ItemSize(tensor_->dtype);
  uint64_t room = chunk_bytes_;
  if (!handle_sent_) {
    *out->mutable_handle() = handle_;
    handle_sent_ = true;
    // The handle's few hundred bytes (a 64-dim layout: under 2 KiB) share
    // the first message.
    const uint64_t handle_bytes = out->ByteSizeLong();
    if (handle_bytes + 64 + item > kMaxStreamMessageBytes) {
      return absl::InternalError(absl::StrCat("a handle of ", handle_bytes, " bytes"));
    }
    room = std::min(room, kMaxStreamMessageBytes - 64 - handle_bytes);
  }
  // At least one element a message, however small a chunk_size asks.
  const int64_t count =
      std::min<int64_t>(static_cast<int64_t>(std::max<uint64_t>(room / item, 1)), total_ - sent_);
  if (count <= 0) return absl::OkStatus();  // an empty tensor's handle-only message
  std::string* data = out->mutable_data();
  data->resize(static_cast<size_t>(count) * item);
  RETURN_IF_ERROR(converter_->ReadElements(*tensor_, sent_, count, data->data()));
  sent_ += count;
  return absl::OkStatus();
}

AsArrayService::AsArrayService(TensorStore* store, CudaBackend* cuda, Executor* executor,
                               ServiceOptions options)
    : store_(store), cuda_(cuda), executor_(executor), options_(options),
      converter_(store, cuda) {
  // What the generated WithRawCallbackMethod_ConvertUpload would do; mixed
  // into CallbackService, that template hides the typed overload it replaces.
  const int method = v1::ConvertUploadRequest::descriptor()
                         ->file()
                         ->FindServiceByName("AsArray")
                         ->FindMethodByName("ConvertUpload")
                         ->index();
  MarkMethodRawCallback(
      method, new grpc::internal::CallbackClientStreamingHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
                  [this](grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
                    return ConvertUploadRaw(context, response);
                  }));
}

uint64_t AsArrayService::ChunkBytes(uint64_t requested) const {
  // Leave room for the handle and framing in the first message.
  const uint64_t limit = static_cast<uint64_t>(std::max<int64_t>(options_.max_message_bytes - 16384, 4096));
  const uint64_t chunk = requested == 0 ? kDefaultChunk : std::min(requested, kMaxChunk);
  return std::min(chunk, limit);
}

bool AsArrayService::Enter() {
  absl::MutexLock lock(&calls_mu_);
  ++calls_in_flight_;
  return !draining_;
}

void AsArrayService::Exit() {
  absl::MutexLock lock(&calls_mu_);
  --calls_in_flight_;
}

bool AsArrayService::Drain(absl::Duration grace) {
  absl::MutexLock lock(&calls_mu_);
  draining_ = true;
  return calls_mu_.AwaitWithTimeout(
      absl::Condition(
          +[](int* in_flight) { return *in_flight == 0; }, &calls_in_flight_),
      grace);
}

void AsArrayService::Count(const absl::Status& status) {
  if (!status.ok()) ++errors_;
}

void AsArrayService::CountConverted(const Tensor& tensor) {
  ++converts_;
  // A tensor's sizes were checked when it was made.
  const absl::StatusOr<ViewSizes> sizes = ComputeViewSizes(tensor.layout, ItemSize(tensor.dtype));
  if (sizes.ok()) {
    metrics_.CountResult(static_cast<uint64_t>(sizes->nbytes), tensor.shares_memory);
  }
}

grpc::ServerUnaryReactor* AsArrayService::FinishNow(grpc::CallbackServerContext* context,
                                                    const absl::Status& status) {
  Count(status);
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(ToGrpcStatus(status));
  Exit();
  return reactor;
}

absl::Status ShuttingDown() { return absl::UnavailableError("the server is shutting down"); }

void AsArrayService::ReleaseCarried(const google::protobuf::RepeatedPtrField<std::string>& ids,
                                    const Caller& caller) {
  if (ids.empty()) return;
  std::vector<absl::string_view> all(ids.begin(), ids.end());
  store_->ReleaseAll(all, caller).IgnoreError();
}

absl::Status AsArrayService::ConvertNow(const v1::ConvertRequest& request, const Caller& caller,
                                        v1::ConvertResponse* response, LocalCall* local) {
  ASSIGN_OR_RETURN(Tensor tensor, converter_.Convert(request, caller, local));
  CountConverted(tensor);
  if (!request.return_data()) {
    const TensorStore::Lease lease =
        local != nullptr && !request.has_ttl_ms()
            ? store_->AddForConnection(std::move(tensor), local->connection)
            : store_->Add(std::move(tensor), TtlFromProto(request.ttl_ms()));
    return HandleToProto(ToHandleInfo(*lease.tensor, lease.expires, &request, local),
                         response->mutable_handle());
  }
  ASSIGN_OR_RETURN(const ViewSizes sizes,
                   ComputeViewSizes(tensor.layout, ItemSize(tensor.dtype)));
  if (sizes.nbytes > options_.max_message_bytes - 4096) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the result holds ", sizes.nbytes, " bytes, more than one message may carry (",
        options_.max_message_bytes, "); use ConvertToData to stream it, or take a handle"));
  }
  RETURN_IF_ERROR(HandleToProto(DataOnlyHandle(tensor), response->mutable_handle()));
  std::string* data = response->mutable_data();
  data->resize(static_cast<size_t>(sizes.nbytes));
  return converter_.ReadElements(tensor, 0, sizes.numel, data->data());
}

absl::Status AsArrayService::ConvertBatchNow(absl::StatusOr<Converter::PreparedBatch> prepared,
                                             const v1::ConvertBatchRequest& request,
                                             const Caller& caller,
                                             v1::ConvertBatchResponse* response,
                                             LocalCall* local) {
  RETURN_IF_ERROR(prepared.status());
  ASSIGN_OR_RETURN(std::vector<Tensor> tensors,
                   converter_.RunBatch(*std::move(prepared), request, caller, local != nullptr));
  const bool for_connection = local != nullptr && !request.has_ttl_ms();
  const std::vector<TensorStore::Lease> leases =
      store_->AddAll(std::move(tensors), TtlFromProto(request.ttl_ms()),
                     for_connection ? local->connection : 0);
  absl::Status status;
  for (int i = 0; i < static_cast<int>(leases.size()) && status.ok(); ++i) {
    const TensorStore::Lease& lease = leases[static_cast<size_t>(i)];
    status = HandleToProto(ToHandleInfo(*lease.tensor, lease.expires, &request.items(i), local),
                           response->add_handles());
  }
  if (!status.ok()) {
    // By the leases: a handle that failed to be made has no id in the answer.
    std::vector<absl::string_view> ids;
    ids.reserve(leases.size());
    for (const TensorStore::Lease& lease : leases) ids.push_back(lease.tensor->id);
    DropBatch(ids, caller, response, local);
    return status;
  }
  for (const TensorStore::Lease& lease : leases) CountConverted(*lease.tensor);
  return absl::OkStatus();
}

void AsArrayService::UndoBatch(v1::ConvertBatchResponse* response, const Caller& caller,
                               LocalCall* local) {
  std::vector<absl::string_view> ids;
  ids.reserve(static_cast<size_t>(response->handles_size()));
  for (const v1::TensorHandle& handle : response->handles()) ids.push_back(handle.id());
  DropBatch(ids, caller, response, local);
}

void AsArrayService::DropBatch(absl::Span<const absl::string_view> ids, const Caller& caller,
                               v1::ConvertBatchResponse* response, LocalCall* local) {
  store_->ReleaseAll(ids, caller).IgnoreError();
  response->Clear();
  if (local != nullptr) local->reply_memory.clear();
}

absl::StatusOr<RowMajorStream> AsArrayService::ConvertToDataNow(const v1::ConvertRequest& request,
                                                                const Caller& caller) {
  ASSIGN_OR_RETURN(Tensor tensor, converter_.Convert(request, caller));
  CountConverted(tensor);
  auto held = std::make_shared<const Tensor>(std::move(tensor));
  return RowMajorStream::Open(&converter_, held, DataOnlyHandle(*held), ChunkBytes(0));
}

absl::StatusOr<RowMajorStream> AsArrayService::ReadNow(const v1::ReadRequest& request,
                                                       const Caller& caller) {
  ASSIGN_OR_RETURN(const TensorStore::Lease lease, store_->Get(request.id(), caller));
  return RowMajorStream::Open(&converter_, lease.tensor,
                              ToHandleInfo(*lease.tensor, lease.expires),
                              ChunkBytes(request.chunk_size()));
}

namespace {

// A call that names handles `first` and `more`: an id twice is refused.
absl::Status CheckDistinctIds(const std::string& first,
                              const google::protobuf::RepeatedPtrField<std::string>& more,
                              absl::string_view method) {
  if (more.empty()) return absl::OkStatus();
  absl::flat_hash_set<absl::string_view> seen;
  seen.reserve(static_cast<size_t>(more.size()) + 1);
  seen.insert(first);
  for (const std::string& id : more) {
    if (!seen.insert(id).second) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the ", method, " names handle ", Quote(id), " twice; nothing was done"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status AsArrayService::RenewNow(const v1::RenewRequest& request, const Caller& caller,
                                      v1::RenewResponse* response) {
  RETURN_IF_ERROR(CheckDistinctIds(request.id(), request.more_ids(), "Renew"));
  const absl::Duration ttl = TtlFromProto(request.ttl_ms());
  absl::StatusOr<absl::Time> expires = store_->Renew(request.id(), ttl, caller);
  absl::Status status = expires.status();
  if (expires.ok()) response->set_lease_expires_unix_ms(absl::ToUnixMillis(*expires));
  for (const std::string& id : request.more_ids()) {
    absl::StatusOr<absl::Time> more = store_->Renew(id, ttl, caller);
    response->add_more_lease_expires_unix_ms(more.ok() ? absl::ToUnixMillis(*more) : 0);
    if (status.ok()) status = more.status();
  }
  return status;
}

absl::Status AsArrayService::ReleaseNow(const v1::ReleaseRequest& request, const Caller& caller) {
  RETURN_IF_ERROR(CheckDistinctIds(request.id(), request.more_ids(), "Release"));
  std::vector<absl::string_view> ids = {request.id()};
  ids.insert(ids.end(), request.more_ids().begin(), request.more_ids().end());
  return store_->ReleaseAll(ids, caller);
}

grpc::ServerUnaryReactor* AsArrayService::ServeConversion(
    grpc::CallbackServerContext* context,
    const google::protobuf::RepeatedPtrField<std::string>& release_ids,
    std::function<absl::Status(const Caller&)> convert,
    const std::function<void(const Caller&, std::function<void()>)>& schedule) {
  if (!Enter()) return FinishNow(context, ShuttingDown());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Caller caller = CallerOf(context);
  ReleaseCarried(release_ids, caller);
  schedule(caller, [this, reactor, caller, convert = std::move(convert)] {
    const absl::Status status = convert(caller);
    Count(status);
    reactor->Finish(ToGrpcStatus(status));
    Exit();
  });
  return reactor;
}

grpc::ServerUnaryReactor* AsArrayService::Convert(grpc::CallbackServerContext* context,
                                                  const v1::ConvertRequest* request,
                                                  v1::ConvertResponse* response) {
  return ServeConversion(
      context, request->release_ids(),
      [this, request, response](const Caller& caller) {
        return ConvertNow(*request, caller, response);
      },
      [this, request](const Caller& caller, std::function<void()> work) {
        RunConvertWork(*request, caller, std::move(work));
      });
}

grpc::ServerUnaryReactor* AsArrayService::ConvertBatch(grpc::CallbackServerContext* context,
                                                       const v1::ConvertBatchRequest* request,
                                                       v1::ConvertBatchResponse* response) {
  // Prepared on this thread (checks and plans, no copy), run where its size
  // says.
  auto prepared = std::make_shared<absl::StatusOr<Converter::PreparedBatch>>();
  return ServeConversion(
      context, request->release_ids(),
      [this, request, response, prepared](const Caller& caller) {
        return ConvertBatchNow(std::move(*prepared), *request, caller, response);
      },
      [this, request, prepared](const Caller& caller, std::function<void()> work) {
        if (MayBlock(*request)) {
          // Opening a CUDA allocation can block: not on gRPC's thread.
          executor_->Schedule([this, request, prepared, caller, work = std::move(work)] {
            *prepared = converter_.PrepareBatch(*request, caller);
            work();
          });
          return;
        }
        *prepared = converter_.PrepareBatch(*request, caller);
        RunBatchWork(*prepared, std::move(work));
      });
}

bool AsArrayService::MayBlock(const v1::ConvertBatchRequest& request) {
  return std::any_of(request.items().begin(), request.items().end(), Converter::NamesDevice);
}

void AsArrayService::RunBatchWork(const absl::StatusOr<Converter::PreparedBatch>& prepared,
                                  std::function<void()> work) {
  RunWork(prepared.ok() ? prepared->work : Converter::WorkEstimate{}, /*return_data=*/false,
          std::move(work));
}

void AsArrayService::RunConvertWork(const v1::ConvertRequest& request, const Caller& caller,
                                    std::function<void()> work) {
  RunWork(converter_.EstimateWork(request, caller), request.return_data(), std::move(work));
}

void AsArrayService::RunWork(const Converter::WorkEstimate& estimate, bool return_data,
                             std::function<void()> work) {
  // Aliasing and small copies finish here; big copies and device work go to
  // the workers so that gRPC's threads never wait on them.
  if (estimate.copy_bytes < kInlineWorkBytes && !estimate.uses_device && !return_data) {
    work();
  } else if (estimate.copy_bytes >= SegmentPool::kMinBytes) {
    auto busy = std::make_shared<SegmentPool::Foreground>(store_->MarkForeground());
    executor_->Schedule([work = std::move(work), busy] { work(); });
  } else {
    executor_->Schedule(std::move(work));
  }
}

grpc::ServerReadReactor<grpc::ByteBuffer>* AsArrayService::ConvertUploadRaw(
    grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
  const bool serving = Enter();
  auto* receiver = new UploadReceiver(this, CallerOf(context), response);
  if (serving) {
    receiver->Begin();
  } else {
    receiver->Refuse(ShuttingDown());
  }
  return receiver;
}

grpc::ServerWriteReactor<v1::ReadResponse>* AsArrayService::ConvertToData(
    grpc::CallbackServerContext* context, const v1::ConvertRequest* request) {
  const bool serving = Enter();
  auto* streamer = new TensorStreamer(this);
  if (!serving) {
    streamer->Fail(ShuttingDown());
    return streamer;
  }
  const Caller caller = CallerOf(context);
  streamer->PrepareOnExecutor([this, streamer, request, caller] {
    streamer->Start(ConvertToDataNow(*request, caller));
  });
  return streamer;
}

grpc::ServerWriteReactor<v1::ReadResponse>* AsArrayService::Read(
    grpc::CallbackServerContext* context, const v1::ReadRequest* request) {
  const bool serving = Enter();
  auto* streamer = new TensorStreamer(this);
  if (!serving) {
    streamer->Fail(ShuttingDown());
    return streamer;
  }
  streamer->Start(ReadNow(*request, CallerOf(context)));
  return streamer;
}

grpc::ServerUnaryReactor* AsArrayService::Release(grpc::CallbackServerContext* context,
                                                  const v1::ReleaseRequest* request,
                                                  v1::ReleaseResponse*) {
  if (!Enter()) return FinishNow(context, ShuttingDown());
  return FinishNow(context, ReleaseNow(*request, CallerOf(context)));
}

grpc::ServerUnaryReactor* AsArrayService::Renew(grpc::CallbackServerContext* context,
                                                const v1::RenewRequest* request,
                                                v1::RenewResponse* response) {
  if (!Enter()) return FinishNow(context, ShuttingDown());
  return FinishNow(context, RenewNow(*request, CallerOf(context), response));
}

grpc::ServerUnaryReactor* AsArrayService::List(grpc::CallbackServerContext* context,
                                               const v1::ListRequest*,
                                               v1::ListResponse* response) {
  if (!Enter()) return FinishNow(context, ShuttingDown());
  absl::Status status;
  for (const TensorStore::Lease& lease : store_->List(CallerOf(context))) {
    status.Update(HandleToProto(ToHandleInfo(*lease.tensor, lease.expires),
                                response->add_tensors()));
  }
  return FinishNow(context, status);
}

grpc::ServerUnaryReactor* AsArrayService::Stats(grpc::CallbackServerContext* context,
                                                const v1::StatsRequest*,
                                                v1::StatsResponse* response) {
  if (!Enter()) return FinishNow(context, ShuttingDown());
  StatsNow(response);
  return FinishNow(context, absl::OkStatus());
}

void AsArrayService::StatsNow(v1::StatsResponse* response) const {
  const StoreStats s = store_->Stats();
  response->set_tensors(s.tensors);
  response->set_segments(s.segments);
  response->set_bytes_in_use(s.bytes_in_use);
  response->set_max_bytes(store_->options().max_bytes);
  response->set_client_regions(s.client_regions);
  response->set_converts(converts_.load());
  response->set_errors(errors_.load());
  response->set_expired(s.expired);
  const CudaStats cuda = cuda_->Stats();
  response->set_cuda_devices(cuda.devices);
  response->set_cuda_allocations(cuda.allocations);
  response->set_cuda_bytes_in_use(cuda.bytes);
  response->set_cuda_ipc_opened(cuda.ipc_opened);
  response->set_cuda_pinned_bytes(cuda.pinned_bytes);
  response->set_default_ttl_ms(absl::ToInt64Milliseconds(store_->options().default_ttl));
  response->set_uptime_ms(absl::ToInt64Milliseconds(absl::Now() - started_));
  response->set_instance(store_->instance());
  response->set_pool_bytes(s.pool_bytes);
  response->set_pool_hits(s.pool_hits);
  const FdCounts fds = CountOpenFds();
  response->set_fds(fds.open);
  response->set_fd_limit(fds.limit);
  response->set_local_connections(local_connections_.load());
  response->set_connection_leases(s.connection_leases);
  response->set_local_converts(local_convert_latency_.count());
  response->set_local_convert_p50_ns(local_convert_latency_.Quantile(0.5));
  response->set_local_convert_p99_ns(local_convert_latency_.Quantile(0.99));
  response->set_local_convert_work_p50_ns(local_convert_work_latency_.Quantile(0.5));
  response->set_local_convert_work_p99_ns(local_convert_work_latency_.Quantile(0.99));
  response->set_local_convert_work_ns(local_convert_work_ns_.load());
  response->set_local_batches(local_batches_.load());
  response->set_local_batch_items(local_batch_items_.load());
  response->set_local_batch_work_ns(local_batch_work_ns_.load());
}

}  // namespace asarray::server
