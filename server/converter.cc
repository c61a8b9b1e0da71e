#include "server/converter.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/cast.h"
#include "core/quote.h"
#include "core/status_macros.h"
#include "wire/proto_convert.h"

namespace asarray::server {
namespace {

// A client region this big, used a second time, is page-locked so that
// copies to a device read it directly.
constexpr uint64_t kPinMinBytes = uint64_t{16} << 20;

Tensor NewTensor(const Plan& plan, const Caller& caller) {
  Tensor t;
  t.dtype = plan.dtype;
  t.layout = plan.layout;
  t.device = plan.device;
  t.requires_grad = plan.requires_grad;
  t.shares_memory = plan.shares_memory;
  t.warnings = plan.warnings;
  t.owner = caller;
  return t;
}

}  // namespace

namespace {

struct RangeArray {
  DType dtype;
  Layout layout;
};

// The dtype and layout of a source that lies in a byte range of its own
// (a region, a CUDA range), whose layout must fit within array.size().
template <typename Array>
absl::StatusOr<RangeArray> ArrayInRange(const Array& array, absl::string_view range) {
  ASARRAY_ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(array.dtype()));
  ASARRAY_ASSIGN_OR_RETURN(Layout layout, LayoutFromProto(array.layout()));
  ASARRAY_ASSIGN_OR_RETURN(const uint64_t needed, RequiredStorageBytes(layout, dtype));
  if (needed > array.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        range, " of ", array.size(), " bytes is too small for a ", DTypeName(dtype),
        " view with shape ", DimsToString(layout.shape), ", strides ", DimsToString(layout.strides),
        " and offset ", layout.offset, ", which needs ", needed));
  }
  return RangeArray{dtype, std::move(layout)};
}

// The source a host array of the request names, for an estimate: false when
// its dtype or layout is bad (the conversion itself says so).
template <typename Array>
bool HostArray(const Array& array, Source* out) {
  absl::StatusOr<DType> dtype = DTypeFromProto(array.dtype());
  absl::StatusOr<Layout> layout = LayoutFromProto(array.layout());
  if (!dtype.ok() || !layout.ok()) return false;
  *out = {SourceKind::kHostMemory, *dtype, *std::move(layout), Device{}};
  return true;
}

}  // namespace

// Memory the server makes: named for gRPC callers on the Unix socket, who
// map it by name; a memfd, whose descriptor goes with the answer, for local
// ones; private to the server for TCP callers, who map nothing and read the
// bytes.
ShmSegment::Kind Converter::ResultKind(const Caller& caller, bool local, bool named_memory) {
  if (named_memory) return ShmSegment::Kind::kNamed;
  if (local) return ShmSegment::Kind::kMemfd;
  return caller.uid == kNoLocalUid ? ShmSegment::Kind::kPrivate : ShmSegment::Kind::kNamed;
}

absl::StatusOr<uint64_t> RequiredStorageBytes(const Layout& layout, DType dtype) {
  ASARRAY_ASSIGN_OR_RETURN(const ByteRange range, ComputeByteRange(layout, ItemSize(dtype)));
  if (range.begin < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "view with strides ", DimsToString(layout.strides), " and offset ", layout.offset,
        " reaches ", BytesBefore(range), " bytes before the start of its storage"));
  }
  return static_cast<uint64_t>(range.end);
}

absl::StatusOr<Converter::Prepared> Converter::Prepare(const v1::ConvertRequest& request,
                                                       const Caller& caller,
                                                       const LocalCall* local) {
  ASARRAY_ASSIGN_OR_RETURN(const ConvertOptions options, OptionsFromProto(request.options()));
  const v1::Source& source = request.source();
  switch (source.kind_case()) {
    case v1::Source::kInlineArray: {
      const v1::InlineArray& array = source.inline_array();
      ASARRAY_ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(array.dtype()));
      ASARRAY_ASSIGN_OR_RETURN(const Layout layout, LayoutFromProto(array.layout()));
      ASARRAY_ASSIGN_OR_RETURN(const uint64_t needed, RequiredStorageBytes(layout, dtype));
      if (array.storage().size() != needed) {
        return absl::InvalidArgumentError(
            absl::StrCat("inline storage holds ", array.storage().size(), " bytes but a ",
                         DTypeName(dtype), " view with shape ", DimsToString(layout.shape),
                         ", strides ", DimsToString(layout.strides), " and offset ", layout.offset,
                         " needs exactly ", needed));
      }
      return PrepareArray(
          {SourceKind::kInline, dtype, layout, Device{}}, options,
          Storage::Host(reinterpret_cast<const unsigned char*>(array.storage().data()), needed));
    }
    case v1::Source::kLiteral:
      return PrepareLiteral(source.literal(), options);
    case v1::Source::kSharedMemory: {
      const v1::SharedMemoryArray& array = source.shared_memory();
      ASARRAY_ASSIGN_OR_RETURN(const RangeArray in_range, ArrayInRange(array, "region"));
      const DType dtype = in_range.dtype;
      const Layout& layout = in_range.layout;
      ASARRAY_ASSIGN_OR_RETURN(
          std::shared_ptr<ClientRegion> region,
          store_->OpenClientRegion(array.name(), array.offset(), array.size(), caller.uid));
      // Not mapped yet: Run maps it if it copies.
      return PrepareArray({SourceKind::kHostMemory, dtype, layout, Device{}}, options,
                          Storage::Host(nullptr, array.size(), std::move(region)));
    }
    case v1::Source::kFd: {
      const v1::FdArray& array = source.fd();
      ASARRAY_ASSIGN_OR_RETURN(const RangeArray in_range, ArrayInRange(array, "region"));
      const DType dtype = in_range.dtype;
      const Layout& layout = in_range.layout;
      ASARRAY_ASSIGN_OR_RETURN(std::shared_ptr<ClientRegion> region, OpenFdSource(array, local));
      return PrepareArray({SourceKind::kHostMemory, dtype, layout, Device{}}, options,
                          Storage::Host(nullptr, array.size(), std::move(region)));
    }
    case v1::Source::kCudaIpc: {
      const v1::CudaIpcArray& array = source.cuda_ipc();
      ASARRAY_ASSIGN_OR_RETURN(const RangeArray in_range, ArrayInRange(array, "CUDA range"));
      const DType dtype = in_range.dtype;
      const Layout& layout = in_range.layout;
      if (array.device() < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("CUDA device ordinal ", array.device(), " is negative"));
      }
      const Device device{Device::Type::kCUDA, array.device()};
      ASARRAY_RETURN_IF_ERROR(cuda_->CheckDevice(device));
      ASARRAY_ASSIGN_OR_RETURN(
          std::shared_ptr<DeviceMemory> memory,
          cuda_->OpenIpc(array.ipc_handle(), array.device(), array.offset(), array.size()));
      return PrepareArray({SourceKind::kDeviceMemory, dtype, layout, device}, options,
                          Storage::OnDevice(std::move(memory)));
    }
    case v1::Source::kTensorView: {
      const v1::TensorView& view = source.tensor_view();
      ASARRAY_ASSIGN_OR_RETURN(RangeArray in_range, ArrayInRange(view, "tensor view"));
      ASARRAY_ASSIGN_OR_RETURN(const TensorStore::Lease lease,
                               store_->Get(view.tensor_id(), caller));
      const Tensor& held = *lease.tensor;
      if (held.memory == nullptr) {
        return absl::InvalidArgumentError(
            absl::StrCat("a tensor view takes a tensor in host memory, and ",
                         Quote(view.tensor_id()), " is on ", DeviceName(held.device)));
      }
      const uint64_t held_bytes = held.memory->size();
      if (view.offset() > held_bytes || view.size() > held_bytes - view.offset()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor view of bytes [", view.offset(), ", +", view.size(), ") lies outside the ",
            held_bytes, " bytes of tensor ", Quote(view.tensor_id()), "'s memory"));
      }
      auto slice = std::make_shared<MemorySlice>(held.memory, view.offset(), view.size());
      return PrepareArray(
          {SourceKind::kHostMemory, in_range.dtype, std::move(in_range.layout), Device{}}, options,
          Storage::Host(nullptr, view.size(), std::move(slice)));
    }
    case v1::Source::kTensorId: {
      ASARRAY_ASSIGN_OR_RETURN(const TensorStore::Lease lease,
                               store_->Get(source.tensor_id(), caller));
      const Tensor& held = *lease.tensor;
      if (held.device_memory != nullptr) {
        return PrepareArray({SourceKind::kDeviceMemory, held.dtype, held.layout, held.device},
                            options, Storage::OnDevice(held.device_memory));
      }
      return PrepareArray({SourceKind::kHostMemory, held.dtype, held.layout, held.device}, options,
                          Storage::Host(held.memory->data(), held.memory->size(), held.memory));
    }
    case v1::Source::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("request has no source");
}

absl::StatusOr<std::shared_ptr<ClientRegion>> Converter::OpenFdSource(const v1::FdArray& array,
                                                                      const LocalCall* local) {
  if (local == nullptr) {
    return absl::InvalidArgumentError(
        "an fd source comes only over the local transport (the socket beside the Unix socket, "
        "ending in .local), with its memfd attached");
  }
  if (array.fd_index() >= local->fds->size()) {
    return absl::InvalidArgumentError(absl::StrCat("the fd source names descriptor ",
                                                   array.fd_index(), " but the request has ",
                                                   local->fds->size(), " attached"));
  }
  local->opened.resize(local->fds->size());
  std::shared_ptr<ClientSegment>& segment = local->opened[array.fd_index()];
  if (segment == nullptr) {
    ASARRAY_ASSIGN_OR_RETURN(
        segment, store_->OpenClientFd((*local->fds)[array.fd_index()].get(), local->cache));
  }
  return store_->ClientFdRegion(segment, array.offset(), array.size());
}

bool Converter::NamesDevice(const v1::ConvertRequest& request) {
  return request.source().has_cuda_ipc() || absl::StartsWith(request.options().device(), "cuda");
}

Converter::WorkEstimate Converter::EstimateWork(const v1::ConvertRequest& request,
                                                const Caller& caller) const {
  const v1::Source& source = request.source();
  WorkEstimate work;
  work.uses_device = NamesDevice(request);
  Source array;
  switch (source.kind_case()) {
    case v1::Source::kInlineArray:
      work.copy_bytes = source.inline_array().storage().size();
      return work;
    case v1::Source::kLiteral:
      work.copy_bytes = static_cast<uint64_t>(source.literal().nodes_size()) * 16;
      return work;
    case v1::Source::kSharedMemory:
      if (!HostArray(source.shared_memory(), &array)) return work;
      break;
    case v1::Source::kFd:
      if (!HostArray(source.fd(), &array)) return work;
      break;
    case v1::Source::kTensorView:
      if (!HostArray(source.tensor_view(), &array)) return work;
      break;
    case v1::Source::kTensorId: {
      absl::StatusOr<TensorStore::Lease> held = store_->Get(source.tensor_id(), caller);
      if (!held.ok()) return work;
      const Tensor& t = *held->tensor;
      const bool on_device = t.device_memory != nullptr;
      work.uses_device |= on_device;
      array = {on_device ? SourceKind::kDeviceMemory : SourceKind::kHostMemory, t.dtype, t.layout,
               t.device};
      break;
    }
    default:
      return work;
  }
  absl::StatusOr<ConvertOptions> options = OptionsFromProto(request.options());
  if (!options.ok()) return work;
  absl::StatusOr<Plan> plan = PlanConversion(array, *options);
  if (!plan.ok() || plan->action == Plan::Action::kAlias) return work;
  absl::StatusOr<ViewSizes> sizes =
      ComputeViewSizes(plan->layout, std::max(ItemSize(plan->dtype), ItemSize(array.dtype)));
  if (sizes.ok()) work.copy_bytes = static_cast<uint64_t>(sizes->nbytes);
  return work;
}

absl::Status Converter::ReadElements(const Tensor& tensor, int64_t begin, int64_t count,
                                     void* dst) const {
  if (tensor.device_memory != nullptr) {
    return cuda_->CopyRowMajorRangeToHost(
        tensor.device.index, {tensor.device_memory->data(), tensor.dtype, tensor.layout}, begin,
        count, dst);
  }
  ASARRAY_RETURN_IF_ERROR(tensor.memory->Map());
  return CopyRowMajorRange({tensor.memory->data(), tensor.dtype, tensor.layout}, begin, count, dst);
}

bool Converter::PinForDevice(const HostMemory* memory) {
  const auto* region = dynamic_cast<const ClientRegion*>(memory);
  if (region == nullptr || region->size() < kPinMinBytes || region->segment().uses() < 2) {
    return false;
  }
  // Best effort: without the pin, the copy is staged.
  return region->segment()
      .Pin([this](void* data, size_t bytes) { return cuda_->PinHost(data, bytes); })
      .ok();
}

absl::StatusOr<Converter::Prepared> Converter::PrepareArray(Source source,
                                                            const ConvertOptions& options,
                                                            Storage storage) {
  Prepared prepared(std::move(source), std::move(storage));
  ASARRAY_ASSIGN_OR_RETURN(prepared.plan_, PlanConversion(prepared.source_, options));
  const Plan& plan = prepared.plan_;
  ASARRAY_RETURN_IF_ERROR(cuda_->CheckDevice(plan.device));
  // A handle says the result's nbytes: a view of a few bytes whose elements
  // take more than int64 counts (broadcast strides) is refused here, before
  // anything is made, not when its handle is.
  ASARRAY_RETURN_IF_ERROR(ComputeViewSizes(plan.layout, ItemSize(plan.dtype)).status());
  if (plan.action == Plan::Action::kCopy) {
    if (plan.device.type == Device::Type::kCPU) {
      prepared.needs_host_memory_ = true;
      ASARRAY_ASSIGN_OR_RETURN(prepared.host_bytes_, RequiredStorageBytes(plan.layout, plan.dtype));
    }
  } else if (prepared.storage_.host == nullptr && prepared.storage_.device == nullptr) {
    // Request bytes die with the call: the result keeps a copy of the
    // storage as it arrived, with the source's layout.
    prepared.needs_host_memory_ = true;
    prepared.host_bytes_ = prepared.storage_.size;
  }
  return prepared;
}

absl::StatusOr<Converter::Prepared> Converter::PrepareLiteral(const v1::Literal& proto,
                                                              const ConvertOptions& options) {
  ASARRAY_ASSIGN_OR_RETURN(Literal literal, LiteralFromProto(proto));
  Prepared prepared({SourceKind::kLiteral, DType::kFloat32, Layout{}, Device{}},
                    Storage::Host(nullptr, 0));
  prepared.literal_ = std::make_shared<const Literal>(std::move(literal));
  ASARRAY_ASSIGN_OR_RETURN(prepared.plan_,
                           PlanLiteral(*prepared.literal_, options, &prepared.literal_info_));
  const Plan& plan = prepared.plan_;
  ASARRAY_RETURN_IF_ERROR(cuda_->CheckDevice(plan.device));
  ASARRAY_ASSIGN_OR_RETURN(const uint64_t bytes, RequiredStorageBytes(plan.layout, plan.dtype));
  prepared.needs_host_memory_ = plan.device.type == Device::Type::kCPU;
  prepared.host_bytes_ = bytes;
  return prepared;
}

absl::StatusOr<Tensor> Converter::Run(Prepared prepared, std::shared_ptr<HostMemory> host,
                                      const Caller& caller, ShmSegment::Kind kind) {
  if (prepared.needs_host_memory_ && host == nullptr) {
    ASARRAY_ASSIGN_OR_RETURN(host, store_->NewSegment(prepared.host_bytes_, kind));
  }
  const Plan& plan = prepared.plan_;
  Storage& storage = prepared.storage_;
  Tensor tensor = NewTensor(plan, caller);
  if (prepared.literal_ != nullptr) {
    if (plan.device.type == Device::Type::kCPU) {
      ASARRAY_RETURN_IF_ERROR(
          StoreLiteral(*prepared.literal_, prepared.literal_info_, host->data()));
      tensor.memory = std::move(host);
      return tensor;
    }
    // Built on the host in its final dtype and layout, then copied over.
    std::vector<unsigned char> staged(prepared.host_bytes_);
    ASARRAY_RETURN_IF_ERROR(
        StoreLiteral(*prepared.literal_, prepared.literal_info_, staged.data()));
    ASARRAY_RETURN_IF_ERROR(CopyInto({SourceKind::kInline, plan.dtype, plan.layout, Device{}},
                                     Storage::Host(staged.data(), staged.size()), plan, nullptr,
                                     &tensor));
    return tensor;
  }
  if (plan.action == Plan::Action::kCopy) {
    if (storage.host != nullptr) {  // a client's segment is mapped on first need
      ASARRAY_RETURN_IF_ERROR(storage.host->Map());
      storage.data = storage.host->data();
    }
    ASARRAY_RETURN_IF_ERROR(CopyInto(prepared.source_, storage, plan, std::move(host), &tensor));
    return tensor;
  }
  if (storage.device != nullptr) {
    tensor.device_memory = std::move(storage.device);
    return tensor;
  }
  if (storage.host == nullptr) {  // inline bytes, kept (see PrepareArray)
    if (storage.size > 0) std::memcpy(host->data(), storage.data, storage.size);
    storage.host = std::move(host);
  }
  tensor.memory = std::move(storage.host);
  return tensor;
}

absl::StatusOr<Tensor> Converter::Convert(const v1::ConvertRequest& request, const Caller& caller,
                                          const LocalCall* local) {
  ASARRAY_ASSIGN_OR_RETURN(Prepared prepared, Prepare(request, caller, local));
  return Run(std::move(prepared), nullptr, caller,
             ResultKind(caller, local != nullptr, request.named_memory()));
}

namespace {

// Each result in an arena starts at a multiple of this.
constexpr uint64_t kArenaAlignment = 64;

// Fields an item of a batch leaves to the batch.
absl::Status CheckBatchItem(const v1::ConvertRequest& item) {
  if (item.return_data()) {
    return absl::InvalidArgumentError(
        "return_data is not for a batch item: take the handles and Read them");
  }
  if (item.release_ids_size() > 0) {
    return absl::InvalidArgumentError(
        "release_ids belong to the batch (ConvertBatchRequest.release_ids), not to an item");
  }
  if (item.has_ttl_ms()) {
    return absl::InvalidArgumentError(
        "ttl_ms belongs to the batch (ConvertBatchRequest.ttl_ms), not to an item");
  }
  if (item.named_memory()) {
    return absl::InvalidArgumentError(
        "named_memory belongs to the batch (ConvertBatchRequest.named_memory), not to an item");
  }
  return absl::OkStatus();
}

// `status` of item `index`, its code kept and the item named.
absl::Status ItemError(const v1::ConvertBatchRequest& batch, int index,
                       const absl::Status& status) {
  std::string item = absl::StrCat("item ", index);
  if (index < batch.keys_size()) absl::StrAppend(&item, " (", Printable(batch.keys(index)), ")");
  return absl::Status(status.code(), absl::StrCat(item, ": ", status.message()));
}

}  // namespace

absl::StatusOr<Converter::PreparedBatch> Converter::PrepareBatch(
    const v1::ConvertBatchRequest& batch, const Caller& caller, const LocalCall* local) {
  const int n = batch.items_size();
  if (n == 0) return absl::InvalidArgumentError("the batch has no items");
  if (n > kMaxBatchItems) {
    return absl::InvalidArgumentError(
        absl::StrCat("the batch has ", n, " items; one takes at most ", kMaxBatchItems));
  }
  if (batch.keys_size() != 0 && batch.keys_size() != n) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the batch names ", batch.keys_size(), " keys for ", n, " items: give one each, or none"));
  }
  PreparedBatch out;
  out.items.reserve(static_cast<size_t>(n));
  out.offsets.assign(static_cast<size_t>(n), 0);
  for (int i = 0; i < n; ++i) {
    const v1::ConvertRequest& item = batch.items(i);
    absl::Status checked = CheckBatchItem(item);
    if (!checked.ok()) return ItemError(batch, i, checked);
    absl::StatusOr<Prepared> p = Prepare(item, caller, local);
    if (!p.ok()) return ItemError(batch, i, p.status());
    out.work.uses_device |=
        p->plan_.device.type != Device::Type::kCPU || p->storage_.device != nullptr;
    if (p->needs_host_memory()) {
      out.has_arena = true;
      const uint64_t at =
          (out.arena_bytes + kArenaAlignment - 1) / kArenaAlignment * kArenaAlignment;
      if (at < out.arena_bytes || p->host_bytes() > UINT64_MAX - at) {
        return ItemError(batch, i,
                         absl::ResourceExhaustedError("the batch's results take more bytes "
                                                      "than 64 bits count"));
      }
      out.offsets[static_cast<size_t>(i)] = at;
      out.arena_bytes = at + p->host_bytes();
    }
    out.items.push_back(*std::move(p));
  }
  // What it copies is what it writes into the arena: casts, and inline
  // bytes kept as they came.
  out.work.copy_bytes = out.arena_bytes;
  return out;
}

absl::StatusOr<std::vector<Tensor>> Converter::RunBatch(PreparedBatch prepared,
                                                        const v1::ConvertBatchRequest& batch,
                                                        const Caller& caller, bool local) {
  const int n = static_cast<int>(prepared.items.size());
  const ShmSegment::Kind kind = ResultKind(caller, local, batch.named_memory());
  std::shared_ptr<ShmSegment> arena;
  if (prepared.has_arena) {
    absl::StatusOr<std::shared_ptr<ShmSegment>> made =
        store_->NewSegment(prepared.arena_bytes, kind);
    if (!made.ok()) {
      return absl::Status(made.status().code(),
                          absl::StrCat("the batch's arena of ", prepared.arena_bytes, " bytes for ",
                                       n, " items: ", made.status().message()));
    }
    arena = *std::move(made);
  }
  std::vector<Tensor> results;
  results.reserve(static_cast<size_t>(n));
  for (int i = 0; i < n; ++i) {
    Prepared& p = prepared.items[static_cast<size_t>(i)];
    std::shared_ptr<HostMemory> slice;
    if (p.needs_host_memory()) {
      slice = std::make_shared<MemorySlice>(arena, prepared.offsets[static_cast<size_t>(i)],
                                            p.host_bytes());
    }
    // A failure here drops the results so far, and with them the arena.
    if (batch_fault_) {
      if (absl::Status fault = batch_fault_(i); !fault.ok()) return ItemError(batch, i, fault);
    }
    absl::StatusOr<Tensor> tensor = Run(std::move(p), std::move(slice), caller, kind);
    if (!tensor.ok()) return ItemError(batch, i, tensor.status());
    results.push_back(*std::move(tensor));
  }
  return results;
}

absl::Status Converter::CopyInto(const Source& source, const Storage& storage, const Plan& plan,
                                 std::shared_ptr<HostMemory> host, Tensor* tensor) {
  ASARRAY_ASSIGN_OR_RETURN(const uint64_t bytes, RequiredStorageBytes(plan.layout, plan.dtype));
  const ConstStridedView src{storage.data, source.dtype, source.layout};
  if (plan.device.type == Device::Type::kCPU) {
    const StridedView dst{host->data(), plan.dtype, plan.layout};
    ASARRAY_RETURN_IF_ERROR(storage.device != nullptr
                                ? cuda_->CastDeviceToHost(storage.device->device(), src, dst)
                                : CastCopy(src, dst));
    tensor->memory = std::move(host);
    return absl::OkStatus();
  }
  ASARRAY_ASSIGN_OR_RETURN(std::shared_ptr<DeviceMemory> memory,
                           cuda_->Allocate(plan.device.index, bytes));
  const StridedView dst{memory->data(), plan.dtype, plan.layout};
  ASARRAY_RETURN_IF_ERROR(
      storage.device != nullptr
          ? cuda_->CastDeviceToDevice(storage.device->device(), src, plan.device.index, dst)
          : cuda_->CastHostToDevice(src, plan.device.index, dst, PinForDevice(storage.host.get())));
  tensor->device_memory = std::move(memory);
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<ShmSegment>> Converter::BeginUpload(
    const v1::ConvertUploadHeader& header, const Caller& caller) {
  ASARRAY_ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(header.dtype()));
  ASARRAY_ASSIGN_OR_RETURN(const Layout layout, LayoutFromProto(header.layout()));
  ASARRAY_RETURN_IF_ERROR(OptionsFromProto(header.options()).status());
  ASARRAY_ASSIGN_OR_RETURN(const uint64_t needed, RequiredStorageBytes(layout, dtype));
  if (header.storage_size() != needed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upload declares ", header.storage_size(), " bytes of storage but a ", DTypeName(dtype),
        " view with shape ", DimsToString(layout.shape), ", strides ", DimsToString(layout.strides),
        " and offset ", layout.offset, " needs exactly ", needed));
  }
  // Unreserved: the receiver writes every byte in and checks each write.
  return store_->NewSegment(needed, ResultKind(caller, /*local=*/false, /*named_memory=*/false),
                            /*reserve=*/false);
}

absl::StatusOr<Tensor> Converter::FinishUpload(const v1::ConvertUploadHeader& header,
                                               std::shared_ptr<ShmSegment> storage,
                                               const Caller& caller) {
  ASARRAY_ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(header.dtype()));
  ASARRAY_ASSIGN_OR_RETURN(const Layout layout, LayoutFromProto(header.layout()));
  ASARRAY_ASSIGN_OR_RETURN(const ConvertOptions options, OptionsFromProto(header.options()));
  const unsigned char* data = storage->data();
  const uint64_t size = storage->size();
  // The received segment is the inline source; when the plan aliases, it is
  // the result itself and no second copy is made.
  ASARRAY_ASSIGN_OR_RETURN(Prepared prepared,
                           PrepareArray({SourceKind::kInline, dtype, layout, Device{}}, options,
                                        Storage::Host(data, size, std::move(storage))));
  return Run(std::move(prepared), nullptr, caller,
             ResultKind(caller, /*local=*/false, /*named_memory=*/false));
}

}  // namespace asarray::server
