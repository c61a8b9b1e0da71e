// RowMajorStream: a held tensor cut into the ReadResponse messages that Read
// and ConvertToData send, within the stream message limit.
#ifndef ASARRAY_SERVER_ROW_MAJOR_STREAM_H_
#define ASARRAY_SERVER_ROW_MAJOR_STREAM_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asarray/v1/asarray.pb.h"
#include "server/converter.h"
#include "server/tensor_store.h"
#include "wire/proto_convert.h"

namespace asarray::server {

// No streamed message, handle and framing included, exceeds this: 4 MiB, the
// receive limit of every stock gRPC client.
inline constexpr uint64_t kMaxStreamMessageBytes = 4 << 20;

// Data bytes per streamed message when the caller asks for none.
inline constexpr uint64_t kDefaultChunkBytes = 1 << 20;

// A tensor's elements in row-major order as a sequence of ReadResponse
// messages, the handle in the first: what Read and ConvertToData stream.
// Each message holds whole elements and at most kMaxStreamMessageBytes in
// all. Not thread-safe; the tensor must stay alive (it is held).
class RowMajorStream {
 public:
  // `chunk_bytes`: data bytes wanted per message (0 picks
  // kDefaultChunkBytes), cut to what fits a message.
  static absl::StatusOr<RowMajorStream> Open(const Converter* converter,
                                             std::shared_ptr<const Tensor> tensor,
                                             const HandleInfo& handle, uint64_t chunk_bytes);

  // True once every message went out.
  bool done() const { return handle_sent_ && sent_ == total_; }
  // Fills `out` (cleared first) with the next message. REQUIRES: !done().
  absl::Status Next(v1::ReadResponse* out);

  int64_t total_elements() const { return total_; }

 private:
  RowMajorStream() = default;

  const Converter* converter_ = nullptr;
  std::shared_ptr<const Tensor> tensor_;
  v1::TensorHandle handle_;
  bool handle_sent_ = false;
  uint64_t chunk_bytes_ = 0;  // data bytes of a message without the handle
  int64_t total_ = 0;
  int64_t sent_ = 0;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_ROW_MAJOR_STREAM_H_
