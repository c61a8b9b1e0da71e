#include "server/upload_receiver.h"

#include <sys/uio.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <climits>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "grpcpp/support/slice.h"
#include "server/tensor_handle.h"
#include "wire/posix_util.h"
#include "wire/proto_convert.h"

namespace asarray::server {
namespace {

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

}  // namespace

UploadReceiver::UploadReceiver(AsArrayService* service, CallScope call, const Caller& caller,
                               grpc::ByteBuffer* response)
    : ReactorBase(service, std::move(call)),
      caller_(caller),
      response_(response),
      foreground_(service->store()->MarkForeground()) {}

void UploadReceiver::Begin() {
  {
    absl::MutexLock lock(&mu_);
    reading_ = true;
  }
  StartRead(&message_);
}

void UploadReceiver::Refuse(const absl::Status& status) {
  absl::ReleasableMutexLock lock(&mu_);
  const Action action = FailLocked(status);
  lock.Release();
  Perform(action);
}

void UploadReceiver::OnReadDone(bool ok) {
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

UploadReceiver::Action UploadReceiver::Received(bool ok, absl::StatusOr<UploadMessage>& message,
                                                ReceivedChunk chunk) {
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
    return FailLocked(absl::InvalidArgumentError(absl::StrCat(
        "upload sent ", received_ + n, " bytes, past the declared ", header_->storage_size())));
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

UploadReceiver::Action UploadReceiver::ReadLocked() {
  reading_ = true;
  return Action::kRead;
}

void UploadReceiver::PumpLocked() {
  if (worker_running_) return;
  worker_running_ = true;
  service()->executor()->Schedule([this] { Work(); });
}

void UploadReceiver::Work() {
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
          service()->converter()->BeginUpload(header, caller_);
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
      FailLocked(absl::InvalidArgumentError(absl::StrCat("upload ended after ", copied_, " of ",
                                                         storage_->size(), " declared bytes")));
      continue;
    }
    worker_running_ = false;
    finished_ = true;
    std::shared_ptr<ShmSegment> storage = std::move(storage_);
    const v1::ConvertUploadHeader header = *header_;
    lock.Release();
    absl::StatusOr<Tensor> tensor =
        service()->converter()->FinishUpload(header, std::move(storage), caller_);
    absl::Status status = tensor.status();
    if (tensor.ok()) {
      service()->CountConverted(*tensor);
      const TensorStore::Lease lease = service()->store()->Add(*std::move(tensor));
      v1::ConvertResponse reply;
      status = HandleToProto(ToHandleInfo(*lease.tensor, lease.expires), reply.mutable_handle());
      *response_ = Serialized(reply);
    }
    Finish(status);
    return;
  }
}

UploadReceiver::Action UploadReceiver::FailLocked(const absl::Status& status) {
  if (!failed_) {
    failed_ = true;
    status_ = status;
    queue_.clear();
    queued_bytes_ = 0;
  }
  return FinishIfIdleLocked();
}

UploadReceiver::Action UploadReceiver::FinishIfIdleLocked() {
  if (reading_ || worker_running_ || finished_) return Action::kNone;
  finished_ = true;
  return Action::kFinish;
}

void UploadReceiver::Perform(Action action) {
  if (action == Action::kRead) {
    StartRead(&message_);
  } else if (action == Action::kFinish) {
    storage_.reset();  // nobody else touches it any more
    absl::Status status;
    {
      absl::MutexLock lock(&mu_);
      status = status_;
    }
    Finish(status);
  }
}

}  // namespace asarray::server
