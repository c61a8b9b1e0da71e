#include "server/service.h"

#include <algorithm>
#include <cstring>
#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "core/cast.h"
#include "core/quote.h"
#include "core/status_macros.h"
#include "grpcpp/impl/codegen/server_callback_handlers.h"
#include "grpcpp/support/byte_buffer.h"
#include "server/peer.h"
#include "server/tensor_handle.h"
#include "server/tensor_streamer.h"
#include "server/upload_receiver.h"
#include "wire/posix_util.h"
#include "wire/proto_convert.h"

namespace asarray::server {
namespace {

constexpr uint64_t kMaxChunk = 4 << 20;
// Requests that copy fewer bytes than this run on gRPC's callback thread.
constexpr uint64_t kInlineWorkBytes = 256 << 10;

}  // namespace

AsArrayService::AsArrayService(TensorStore* store, CudaBackend* cuda, Executor* executor,
                               ServiceOptions options)
    : store_(store), cuda_(cuda), executor_(executor), options_(options), converter_(store, cuda) {
  // What the generated WithRawCallbackMethod_ConvertUpload would do; mixed
  // into CallbackService, that template hides the typed overload it replaces.
  const int method = v1::ConvertUploadRequest::descriptor()
                         ->file()
                         ->FindServiceByName("AsArray")
                         ->FindMethodByName("ConvertUpload")
                         ->index();
  MarkMethodRawCallback(
      method,
      new grpc::internal::CallbackClientStreamingHandler<grpc::ByteBuffer, grpc::ByteBuffer>(
          [this](grpc::CallbackServerContext* context, grpc::ByteBuffer* response) {
            return ConvertUploadRaw(context, response);
          }));
}

uint64_t AsArrayService::ChunkBytes(uint64_t requested) const {
  // Leave room for the handle and framing in the first message.
  const uint64_t limit =
      static_cast<uint64_t>(std::max<int64_t>(options_.max_message_bytes - 16384, 4096));
  const uint64_t chunk = requested == 0 ? kDefaultChunkBytes : std::min(requested, kMaxChunk);
  return std::min(chunk, limit);
}

void AsArrayService::Count(const absl::Status& status) {
  if (!status.ok()) ++errors_;
}

grpc::Status AsArrayService::Finished(const absl::Status& status) {
  Count(status);
  return ToGrpcStatus(status);
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
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  reactor->Finish(Finished(status));
  return reactor;
}

grpc::ServerUnaryReactor* AsArrayService::ServeNow(
    grpc::CallbackServerContext* context, absl::FunctionRef<absl::Status(const Caller&)> work) {
  const CallScope call = EnterCall();
  return FinishNow(context, call.serving() ? work(CallerOf(context)) : ShuttingDown());
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
  ASARRAY_ASSIGN_OR_RETURN(Tensor tensor, converter_.Convert(request, caller, local));
  CountConverted(tensor);
  if (!request.return_data()) {
    const TensorStore::Lease lease =
        local != nullptr && !request.has_ttl_ms()
            ? store_->AddForConnection(std::move(tensor), local->connection)
            : store_->Add(std::move(tensor), TtlFromProto(request.ttl_ms()));
    return HandleToProto(ToHandleInfo(*lease.tensor, lease.expires, &request, local),
                         response->mutable_handle());
  }
  ASARRAY_ASSIGN_OR_RETURN(const ViewSizes sizes,
                           ComputeViewSizes(tensor.layout, ItemSize(tensor.dtype)));
  if (sizes.nbytes > options_.max_message_bytes - 4096) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "the result holds ", sizes.nbytes, " bytes, more than one message may carry (",
        options_.max_message_bytes, "); use ConvertToData to stream it, or take a handle"));
  }
  ASARRAY_RETURN_IF_ERROR(HandleToProto(DataOnlyHandle(tensor), response->mutable_handle()));
  std::string* data = response->mutable_data();
  data->resize(static_cast<size_t>(sizes.nbytes));
  return converter_.ReadElements(tensor, 0, sizes.numel, data->data());
}

absl::Status AsArrayService::ConvertBatchNow(absl::StatusOr<Converter::PreparedBatch> prepared,
                                             const v1::ConvertBatchRequest& request,
                                             const Caller& caller,
                                             v1::ConvertBatchResponse* response, LocalCall* local) {
  ASARRAY_RETURN_IF_ERROR(prepared.status());
  ASARRAY_ASSIGN_OR_RETURN(
      std::vector<Tensor> tensors,
      converter_.RunBatch(*std::move(prepared), request, caller, local != nullptr));
  const bool for_connection = local != nullptr && !request.has_ttl_ms();
  const std::vector<TensorStore::Lease> leases = store_->AddAll(
      std::move(tensors), TtlFromProto(request.ttl_ms()), for_connection ? local->connection : 0);
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
  ASARRAY_ASSIGN_OR_RETURN(Tensor tensor, converter_.Convert(request, caller));
  CountConverted(tensor);
  auto held = std::make_shared<const Tensor>(std::move(tensor));
  return RowMajorStream::Open(&converter_, held, DataOnlyHandle(*held), ChunkBytes(0));
}

absl::StatusOr<RowMajorStream> AsArrayService::ReadNow(const v1::ReadRequest& request,
                                                       const Caller& caller) {
  ASARRAY_ASSIGN_OR_RETURN(const TensorStore::Lease lease, store_->Get(request.id(), caller));
  return RowMajorStream::Open(&converter_, lease.tensor, ToHandleInfo(*lease.tensor, lease.expires),
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
      return absl::InvalidArgumentError(
          absl::StrCat("the ", method, " names handle ", Quote(id), " twice; nothing was done"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status AsArrayService::RenewNow(const v1::RenewRequest& request, const Caller& caller,
                                      v1::RenewResponse* response) {
  ASARRAY_RETURN_IF_ERROR(CheckDistinctIds(request.id(), request.more_ids(), "Renew"));
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
  ASARRAY_RETURN_IF_ERROR(CheckDistinctIds(request.id(), request.more_ids(), "Release"));
  std::vector<absl::string_view> ids = {request.id()};
  ids.insert(ids.end(), request.more_ids().begin(), request.more_ids().end());
  return store_->ReleaseAll(ids, caller);
}

grpc::ServerUnaryReactor* AsArrayService::ServeConversion(
    grpc::CallbackServerContext* context,
    const google::protobuf::RepeatedPtrField<std::string>& release_ids,
    std::function<absl::Status(const Caller&)> convert,
    const std::function<void(const Caller&, std::function<void()>)>& schedule) {
  auto call = std::make_shared<CallScope>(EnterCall());  // shared by the copies of the work
  if (!call->serving()) return FinishNow(context, ShuttingDown());
  grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
  const Caller caller = CallerOf(context);
  ReleaseCarried(release_ids, caller);
  schedule(caller, [this, reactor, caller, convert = std::move(convert), call] {
    reactor->Finish(Finished(convert(caller)));
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
  CallScope call = EnterCall();
  const bool serving = call.serving();
  auto* receiver = new UploadReceiver(this, std::move(call), CallerOf(context), response);
  if (serving) {
    receiver->Begin();
  } else {
    receiver->Refuse(ShuttingDown());
  }
  return receiver;
}

grpc::ServerWriteReactor<v1::ReadResponse>* AsArrayService::ConvertToData(
    grpc::CallbackServerContext* context, const v1::ConvertRequest* request) {
  CallScope call = EnterCall();
  const bool serving = call.serving();
  auto* streamer = new TensorStreamer(this, std::move(call));
  if (!serving) {
    streamer->Finish(ShuttingDown());
    return streamer;
  }
  const Caller caller = CallerOf(context);
  streamer->PrepareOnExecutor(
      [this, streamer, request, caller] { streamer->Start(ConvertToDataNow(*request, caller)); });
  return streamer;
}

grpc::ServerWriteReactor<v1::ReadResponse>* AsArrayService::Read(
    grpc::CallbackServerContext* context, const v1::ReadRequest* request) {
  CallScope call = EnterCall();
  const bool serving = call.serving();
  auto* streamer = new TensorStreamer(this, std::move(call));
  if (!serving) {
    streamer->Finish(ShuttingDown());
    return streamer;
  }
  streamer->Start(ReadNow(*request, CallerOf(context)));
  return streamer;
}

grpc::ServerUnaryReactor* AsArrayService::Release(grpc::CallbackServerContext* context,
                                                  const v1::ReleaseRequest* request,
                                                  v1::ReleaseResponse*) {
  return ServeNow(context, [&](const Caller& caller) { return ReleaseNow(*request, caller); });
}

grpc::ServerUnaryReactor* AsArrayService::Renew(grpc::CallbackServerContext* context,
                                                const v1::RenewRequest* request,
                                                v1::RenewResponse* response) {
  return ServeNow(context,
                  [&](const Caller& caller) { return RenewNow(*request, caller, response); });
}

grpc::ServerUnaryReactor* AsArrayService::List(grpc::CallbackServerContext* context,
                                               const v1::ListRequest*, v1::ListResponse* response) {
  return ServeNow(context, [&](const Caller& caller) {
    absl::Status status;
    for (const TensorStore::Lease& lease : store_->List(caller)) {
      status.Update(
          HandleToProto(ToHandleInfo(*lease.tensor, lease.expires), response->add_tensors()));
    }
    return status;
  });
}

grpc::ServerUnaryReactor* AsArrayService::Stats(grpc::CallbackServerContext* context,
                                                const v1::StatsRequest*,
                                                v1::StatsResponse* response) {
  return ServeNow(context, [&](const Caller&) {
    StatsNow(response);
    return absl::OkStatus();
  });
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
