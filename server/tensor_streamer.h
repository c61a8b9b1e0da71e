// TensorStreamer: the reactor of Read and ConvertToData, which writes a
// RowMajorStream to the client one message at a time.
#ifndef ASARRAY_SERVER_TENSOR_STREAMER_H_
#define ASARRAY_SERVER_TENSOR_STREAMER_H_

#include <functional>
#include <optional>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "asarray/v1/asarray.pb.h"
#include "grpcpp/support/server_callback.h"
#include "server/call_scope.h"
#include "server/reactor_base.h"
#include "server/row_major_stream.h"
#include "server/service.h"

namespace asarray::server {

// Streams a RowMajorStream. With a pending conversion it first waits for
// Start(). Driven by gRPC's callbacks, one at a time.
class TensorStreamer final : public ReactorBase<grpc::ServerWriteReactor<v1::ReadResponse>> {
 public:
  TensorStreamer(AsArrayService* service, CallScope call) : ReactorBase(service, std::move(call)) {}

  // Runs `prepare` on the executor once gRPC has bound this reactor to its
  // call (the initial metadata went out). Starting writes from another thread
  // before the handler has returned the reactor races with that binding.
  void PrepareOnExecutor(std::function<void()> prepare);
  // Starts streaming, or fails with the stream's status.
  void Start(absl::StatusOr<RowMajorStream> stream);

  void OnSendInitialMetadataDone(bool ok) override;
  void OnWriteDone(bool ok) override;

 private:
  void NextWrite();

  std::function<void()> prepare_;
  std::optional<RowMajorStream> stream_;
  v1::ReadResponse response_;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_TENSOR_STREAMER_H_
