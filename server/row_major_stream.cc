#include "server/row_major_stream.h"

#include <algorithm>
#include <string>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/layout.h"
#include "core/status_macros.h"

namespace asarray::server {

absl::StatusOr<RowMajorStream> RowMajorStream::Open(const Converter* converter,
                                                    std::shared_ptr<const Tensor> tensor,
                                                    const HandleInfo& handle,
                                                    uint64_t chunk_bytes) {
  ASARRAY_ASSIGN_OR_RETURN(const ViewSizes sizes,
                           ComputeViewSizes(tensor->layout, ItemSize(tensor->dtype)));
  RowMajorStream stream;
  ASARRAY_RETURN_IF_ERROR(HandleToProto(handle, &stream.handle_));
  stream.converter_ = converter;
  stream.tensor_ = std::move(tensor);
  stream.total_ = sizes.numel;
  // A data field's tag and length take at most 6 bytes; 64 spare.
  stream.chunk_bytes_ = std::min<uint64_t>(chunk_bytes == 0 ? kDefaultChunkBytes : chunk_bytes,
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
  ASARRAY_RETURN_IF_ERROR(converter_->ReadElements(*tensor_, sent_, count, data->data()));
  sent_ += count;
  return absl::OkStatus();
}

}  // namespace asarray::server
