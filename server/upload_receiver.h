// UploadReceiver: the reactor of ConvertUpload, which takes a tensor's bytes
// as a client stream, copies them into a segment and converts at the end.
#ifndef ASARRAY_SERVER_UPLOAD_RECEIVER_H_
#define ASARRAY_SERVER_UPLOAD_RECEIVER_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <optional>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "asarray/v1/asarray.pb.h"
#include "grpcpp/support/byte_buffer.h"
#include "grpcpp/support/server_callback.h"
#include "grpcpp/support/slice.h"
#include "server/call_scope.h"
#include "server/peer.h"
#include "server/reactor_base.h"
#include "server/segment_pool.h"
#include "server/service.h"
#include "server/shm.h"
#include "server/upload_message.h"

namespace asarray::server {

// A data chunk of an upload, still in the slices gRPC received it in: the
// bytes [offset, offset + size) of their concatenation. `pieces` views the
// slices' bytes (which stay put when the slices are moved).
struct ReceivedChunk {
  std::vector<grpc::Slice> slices;
  std::vector<absl::string_view> pieces;
  uint64_t offset = 0;
  uint64_t size = 0;
};

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
class UploadReceiver final : public ReactorBase<grpc::ServerReadReactor<grpc::ByteBuffer>> {
 public:
  // `response` receives a serialized ConvertResponse.
  UploadReceiver(AsArrayService* service, CallScope call, const Caller& caller,
                 grpc::ByteBuffer* response);

  // Starts reading the stream.
  void Begin();
  // Fails the call with `status` without reading.
  void Refuse(const absl::Status& status);

  void OnReadDone(bool ok) override;

 private:
  enum class Action { kNone, kRead, kFinish };
  static constexpr uint64_t kMaxQueuedBytes = 8 << 20;

  Action Received(bool ok, absl::StatusOr<UploadMessage>& message, ReceivedChunk chunk)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Action ReadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void PumpLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The worker: creates the segment, copies chunks in, converts at the end.
  void Work();
  Action FailLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Action FinishIfIdleLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Perform(Action action);

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

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_UPLOAD_RECEIVER_H_
