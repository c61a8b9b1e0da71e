#include "server/tensor_streamer.h"

#include <utility>

#include "wire/proto_convert.h"

namespace asarray::server {

void TensorStreamer::PrepareOnExecutor(std::function<void()> prepare) {
  prepare_ = std::move(prepare);
  StartSendInitialMetadata();
}

void TensorStreamer::OnSendInitialMetadataDone(bool ok) {
  if (!prepare_) return;
  if (!ok) {
    Fail(absl::CancelledError("the client went away before the conversion"));
    return;
  }
  service_->executor()->Schedule(std::move(prepare_));
}

void TensorStreamer::Start(absl::StatusOr<RowMajorStream> stream) {
  if (!stream.ok()) {
    Fail(stream.status());
    return;
  }
  stream_.emplace(*std::move(stream));
  NextWrite();
}

void TensorStreamer::Fail(const absl::Status& status) {
  service_->Count(status);
  Finish(ToGrpcStatus(status));
}

void TensorStreamer::OnWriteDone(bool ok) {
  if (!ok) {
    Fail(absl::CancelledError("the client stopped reading"));
    return;
  }
  NextWrite();
}

void TensorStreamer::OnDone() { delete this; }

void TensorStreamer::NextWrite() {
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

}  // namespace asarray::server
