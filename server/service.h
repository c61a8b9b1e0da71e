// The asarray.v1.AsArray service on gRPC's callback API. Unary calls hand
// their work to the Executor; streaming calls are small reactors whose
// OnDone() is their only exit. Thread-safe.
#ifndef ASARRAY_SERVER_SERVICE_H_
#define ASARRAY_SERVER_SERVICE_H_

#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>

#include "absl/functional/function_ref.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "asarray/v1/asarray.grpc.pb.h"
#include "server/call_metrics.h"
#include "server/call_scope.h"
#include "server/converter.h"
#include "server/cuda_backend.h"
#include "server/executor.h"
#include "server/latency_histogram.h"
#include "server/row_major_stream.h"
#include "server/tensor_store.h"
#include "wire/proto_convert.h"

namespace asarray::server {

// What a call gets once the server drains: UNAVAILABLE.
absl::Status ShuttingDown();

struct ServiceOptions {
  // Largest message the server accepts or sends; a unary return_data result
  // beyond it is refused.
  int64_t max_message_bytes = 64 << 20;
};

// ConvertUpload is registered raw: its messages arrive as received bytes,
// and its reactor decodes them itself (see server/upload_message.h).
class AsArrayService final : public v1::AsArray::CallbackService {
 public:
  AsArrayService(TensorStore* store, CudaBackend* cuda, Executor* executor, ServiceOptions options);

  grpc::ServerUnaryReactor* Convert(grpc::CallbackServerContext* context,
                                    const v1::ConvertRequest* request,
                                    v1::ConvertResponse* response) override;
  // ConvertUpload's handler; `response` receives a serialized ConvertResponse.
  grpc::ServerUnaryReactor* ConvertBatch(grpc::CallbackServerContext* context,
                                         const v1::ConvertBatchRequest* request,
                                         v1::ConvertBatchResponse* response) override;
  grpc::ServerReadReactor<grpc::ByteBuffer>* ConvertUploadRaw(grpc::CallbackServerContext* context,
                                                              grpc::ByteBuffer* response);
  grpc::ServerWriteReactor<v1::ReadResponse>* ConvertToData(
      grpc::CallbackServerContext* context, const v1::ConvertRequest* request) override;
  grpc::ServerWriteReactor<v1::ReadResponse>* Read(grpc::CallbackServerContext* context,
                                                   const v1::ReadRequest* request) override;
  grpc::ServerUnaryReactor* Release(grpc::CallbackServerContext* context,
                                    const v1::ReleaseRequest* request,
                                    v1::ReleaseResponse* response) override;
  grpc::ServerUnaryReactor* Renew(grpc::CallbackServerContext* context,
                                  const v1::RenewRequest* request,
                                  v1::RenewResponse* response) override;
  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context,
                                 const v1::ListRequest* request,
                                 v1::ListResponse* response) override;
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* context,
                                  const v1::StatsRequest* request,
                                  v1::StatsResponse* response) override;

  // The work of Convert and Release, on the calling thread, for `caller`;
  // the local transport (see local_transport.h) runs them too. Convert first releases
  // the ids the request carries (ReleaseCarried), then ConvertNow converts.
  void ReleaseCarried(const google::protobuf::RepeatedPtrField<std::string>& ids,
                      const Caller& caller);
  // `local`: the call came over the local transport (see LocalCall).
  absl::Status ConvertNow(const v1::ConvertRequest& request, const Caller& caller,
                          v1::ConvertResponse* response, LocalCall* local = nullptr);
  // A batch, all or nothing: its results registered, or none (the batch's
  // release_ids are the caller's to release first).
  // `prepared` is PrepareBatch's answer for it.
  absl::Status ConvertBatchNow(absl::StatusOr<Converter::PreparedBatch> prepared,
                               const v1::ConvertBatchRequest& request, const Caller& caller,
                               v1::ConvertBatchResponse* response, LocalCall* local = nullptr);
  // Ends the leases of every handle in a complete `response`, which is then
  // cleared and not sent: a batch whose answer could not go out.
  void UndoBatch(v1::ConvertBatchResponse* response, const Caller& caller, LocalCall* local);
  absl::Status ReleaseNow(const v1::ReleaseRequest& request, const Caller& caller);
  // The work of Read, Renew and ConvertToData, on the calling thread.
  absl::StatusOr<RowMajorStream> ReadNow(const v1::ReadRequest& request, const Caller& caller);
  absl::Status RenewNow(const v1::RenewRequest& request, const Caller& caller,
                        v1::RenewResponse* response);
  absl::StatusOr<RowMajorStream> ConvertToDataNow(const v1::ConvertRequest& request,
                                                  const Caller& caller);
  // Runs `work`, a conversion of `request`, where it belongs: on this thread
  // when it aliases or copies little, else on the workers (device work, and
  // big copies, which hold the segment pool's foreground mark meanwhile).
  void RunConvertWork(const v1::ConvertRequest& request, const Caller& caller,
                      std::function<void()> work);
  // Runs `work` (the rest of a batch prepared as `prepared`) where
  // RunConvertWork would run a conversion of its size.
  void RunBatchWork(const absl::StatusOr<Converter::PreparedBatch>& prepared,
                    std::function<void()> work);

  // Stats' answer, for any transport.
  void StatsNow(v1::StatsResponse* response) const;
  // The local transport's connections, for Stats.
  void LocalConnectionOpened() { ++local_connections_; }
  void LocalConnectionClosed() { --local_connections_; }
  // The local transport's Convert calls, received to answered.
  LatencyHistogram& local_convert_latency() { return local_convert_latency_; }
  LatencyHistogram& local_convert_work_latency() { return local_convert_work_latency_; }
  // The local transport's work totals (StatsResponse.local_convert_work_ns
  // and the batch counts after it).
  void CountLocalConvert(uint64_t work_ns) { local_convert_work_ns_ += work_ns; }
  void CountLocalBatch(uint64_t items, uint64_t work_ns) {
    ++local_batches_;
    local_batch_items_ += items;
    local_batch_work_ns_ += work_ns;
  }

  // Counts a finished call of any transport (Stats' errors).
  void Count(const absl::Status& status);
  // How a gRPC call ends: counted, and its status converted. The one place
  // where a call's absl::Status becomes gRPC's.
  grpc::Status Finished(const absl::Status& status);
  // Counts a result made: a conversion, and its bytes.
  void CountConverted(const Tensor& tensor);
  // The calls and result bytes that /metrics reports (Stats has the rest).
  CallMetrics& metrics() { return metrics_; }

  // Every call, over any transport, holds one while it is in flight (see
  // CallGate::Enter).
  CallScope EnterCall() { return calls_.Enter(); }
  // Refuses new calls and waits up to `grace` for those in flight (see
  // CallGate::Drain).
  bool Drain(absl::Duration grace) { return calls_.Drain(grace); }
  TensorStore* store() const { return store_; }
  Executor* executor() const { return executor_; }
  Converter* converter() { return &converter_; }
  // Data bytes per streamed message: `requested` (0: 1 MiB) within the
  // server's message limit; RowMajorStream cuts it to kMaxStreamMessageBytes.
  uint64_t ChunkBytes(uint64_t requested) const;

 private:
  grpc::ServerUnaryReactor* FinishNow(grpc::CallbackServerContext* context,
                                      const absl::Status& status);
  // A unary call answered on this thread: `work` for the caller, or
  // UNAVAILABLE once draining.
  grpc::ServerUnaryReactor* ServeNow(grpc::CallbackServerContext* context,
                                     absl::FunctionRef<absl::Status(const Caller&)> work);
  void RunWork(const Converter::WorkEstimate& estimate, bool return_data,
               std::function<void()> work);
  // Whether preparing `request` may block (it opens or checks a CUDA device).
  static bool MayBlock(const v1::ConvertBatchRequest& request);
  // Ends the leases `ids` of a batch's results and clears its answer (and
  // the descriptors it would carry): nothing of the batch is kept.
  void DropBatch(absl::Span<const absl::string_view> ids, const Caller& caller,
                 v1::ConvertBatchResponse* response, LocalCall* local);
  // A unary conversion over gRPC: the carried releases, then `convert` for
  // the caller, run where `schedule` puts it.
  grpc::ServerUnaryReactor* ServeConversion(
      grpc::CallbackServerContext* context,
      const google::protobuf::RepeatedPtrField<std::string>& release_ids,
      std::function<absl::Status(const Caller&)> convert,
      const std::function<void(const Caller&, std::function<void()>)>& schedule);

  TensorStore* const store_;
  CudaBackend* const cuda_;
  Executor* const executor_;
  const ServiceOptions options_;
  Converter converter_;
  const absl::Time started_ = absl::Now();
  std::atomic<uint64_t> converts_{0};
  std::atomic<uint64_t> errors_{0};
  std::atomic<uint64_t> local_connections_{0};
  LatencyHistogram local_convert_latency_;
  LatencyHistogram local_convert_work_latency_;  // the same without the send
  std::atomic<uint64_t> local_convert_work_ns_{0};
  std::atomic<uint64_t> local_batches_{0};
  std::atomic<uint64_t> local_batch_items_{0};
  std::atomic<uint64_t> local_batch_work_ns_{0};
  CallMetrics metrics_;
  CallGate calls_;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_SERVICE_H_
