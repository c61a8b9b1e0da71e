#include "server/tensor_streamer.h"

#include <utility>

namespace asarray::server {

void TensorStreamer::PrepareOnExecutor(std::function<void()> prepare) {
  prepare_ = std::move(prepare);
  StartSendInitialMetadata();
}

void TensorStreamer::OnSendInitialMetadataDone(bool ok) {
  if (!prepare_) return;
  if (!ok) {
    Finish(absl::CancelledError("the client went away before the conversion"));
    return;
  }
  service()->executor()->Schedule(std::move(prepare_));
}

void TensorStreamer::Start(absl::StatusOr<RowMajorStream> stream) {
  if (!stream.ok()) {
    Finish(stream.status());
    return;
  }
  stream_.emplace(*std::move(stream));
  NextWrite();
}

void TensorStreamer::OnWriteDone(bool ok) {
  if (!ok) {
    Finish(absl::CancelledError("the client stopped reading"));
    return;
  }
  NextWrite();
}

void TensorStreamer::NextWrite() {
  if (stream_->done()) {
    Finish(absl::OkStatus());
    return;
  }
  absl::Status s = stream_->Next(&response_);
  if (!s.ok()) {
    Finish(s);
    return;
  }
  StartWrite(&response_);
}

}  // namespace asarray::server
