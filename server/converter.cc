#include "server/converter.h"

#include <algorithm>
#include <cstring>
#include <utility>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/cast.h"
#include "core/status_macros.h"
#include "server/convert.h"

namespace asarray::server {
namespace {

// A client region this big, used a second time, is page-locked so that
// copies to a device read it directly.
constexpr uint64_t kPinMinBytes = uint64_t{16} << 20;

// Memory the server makes: named for gRPC callers on the Unix socket, who
// map it by name; a memfd, whose descriptor goes with the answer, for local
// ones; private to the server for TCP callers, who map nothing and read the
// bytes.
ShmSegment::Kind ResultKind(const Caller& caller, bool local, bool named_memory) {
  if (named_memory) return ShmSegment::Kind::kNamed;
  if (local) return ShmSegment::Kind::kMemfd;
  return caller.uid == kNoLocalUid ? ShmSegment::Kind::kPrivate : ShmSegment::Kind::kNamed;
}

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
  ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(array.dtype()));
  ASSIGN_OR_RETURN(Layout layout, LayoutFromProto(array.layout()));
  ASSIGN_OR_RETURN(const uint64_t needed, RequiredStorageBytes(layout, dtype));
  if (needed > array.size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        range, " of ", array.size(), " bytes is too small for a ", DTypeName(dtype),
        " view with shape ", DimsToString(layout.shape), ", strides ",
        DimsToString(layout.strides), " and offset ", layout.offset, ", which needs ", needed));
  }
  return RangeArray{dtype, std::move(layout)};
}

}  // namespace

absl::StatusOr<uint64_t> RequiredStorageBytes(const Layout& layout, DType dtype) {
  ASSIGN_OR_RETURN(const ByteRange range, ComputeByteRange(layout, ItemSize(dtype)));
  if (range.begin < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "view with strides ", DimsToString(layout.strides), " and offset ", layout.offset,
        " reaches ", BytesBefore(range), " bytes before the start of its storage"));
  }
  return static_cast<uint64_t>(range.end);
}

absl::StatusOr<Tensor> Converter::Convert(const v1::ConvertRequest& request, const Caller& caller,
                                          const LocalCall* local) {
  ASSIGN_OR_RETURN(const ConvertOptions options, OptionsFromProto(request.options()));
  const v1::Source& source = request.source();
  const ShmSegment::Kind kind = ResultKind(caller, local != nullptr, request.named_memory());
  switch (source.kind_case()) {
    case v1::Source::kInlineArray: {
      const v1::InlineArray& array = source.inline_array();
      ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(array.dtype()));
      ASSIGN_OR_RETURN(const Layout layout, LayoutFromProto(array.layout()));
      ASSIGN_OR_RETURN(const uint64_t needed, RequiredStorageBytes(layout, dtype));
      if (array.storage().size() != needed) {
        return absl::InvalidArgumentError(absl::StrCat(
            "inline storage holds ", array.storage().size(), " bytes but a ", DTypeName(dtype),
            " view with shape ", DimsToString(layout.shape), ", strides ",
            DimsToString(layout.strides), " and offset ", layout.offset, " needs exactly ",
            needed));
      }
      return ConvertArray({SourceKind::kInline, dtype, layout, Device{}}, options,
                          Storage::Host(reinterpret_cast<const unsigned char*>(array.storage().data()),
                                        needed),
                          caller, kind);
    }
    case v1::Source::kLiteral:
      return ConvertLiteral(source.literal(), options, caller, kind);
    case v1::Source::kSharedMemory: {
      const v1::SharedMemoryArray& array = source.shared_memory();
      ASSIGN_OR_RETURN(const RangeArray in_range, ArrayInRange(array, "region"));
      const DType dtype = in_range.dtype;
      const Layout& layout = in_range.layout;
      ASSIGN_OR_RETURN(std::shared_ptr<ClientRegion> region,
                       store_->OpenClientRegion(array.name(), array.offset(), array.size(),
                                                 caller.uid));
      // Not mapped yet: ConvertArray maps it if it copies.
      return ConvertArray({SourceKind::kHostMemory, dtype, layout, Device{}}, options,
                          Storage::Host(nullptr, array.size(), std::move(region)), caller, kind);
    }
    case v1::Source::kFd: {
      const v1::FdArray& array = source.fd();
      ASSIGN_OR_RETURN(const RangeArray in_range, ArrayInRange(array, "region"));
      const DType dtype = in_range.dtype;
      const Layout& layout = in_range.layout;
      ASSIGN_OR_RETURN(std::shared_ptr<ClientRegion> region, OpenFdSource(array, local));
      return ConvertArray({SourceKind::kHostMemory, dtype, layout, Device{}}, options,
                          Storage::Host(nullptr, array.size(), std::move(region)), caller, kind);
    }
    case v1::Source::kCudaIpc: {
      const v1::CudaIpcArray& array = source.cuda_ipc();
      ASSIGN_OR_RETURN(const RangeArray in_range, ArrayInRange(array, "CUDA range"));
      const DType dtype = in_range.dtype;
      const Layout& layout = in_range.layout;
      if (array.device() < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("CUDA device ordinal ", array.device(), " is negative"));
      }
      const Device device{Device::Type::kCUDA, array.device()};
      RETURN_IF_ERROR(cuda_->CheckDevice(device));
      ASSIGN_OR_RETURN(std::shared_ptr<DeviceMemory> memory,
                       cuda_->OpenIpc(array.ipc_handle(), array.device(), array.offset(),
                                      array.size()));
      return ConvertArray({SourceKind::kDeviceMemory, dtype, layout, device}, options,
                          Storage::OnDevice(std::move(memory)), caller, kind);
    }
    case v1::Source::kTensorId: {
      ASSIGN_OR_RETURN(const TensorStore::Lease lease, store_->Get(source.tensor_id(), caller));
      const Tensor& held = *lease.tensor;
      if (held.device_memory != nullptr) {
        return ConvertArray({SourceKind::kDeviceMemory, held.dtype, held.layout, held.device},
                            options, Storage::OnDevice(held.device_memory), caller, kind);
      }
      return ConvertArray({SourceKind::kHostMemory, held.dtype, held.layout, held.device},
                          options,
                          Storage::Host(held.memory->data(), held.memory->size(), held.memory),
                          caller, kind);
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
    return absl::InvalidArgumentError(absl::StrCat(
        "the fd source names descriptor ", array.fd_index(), " but the request has ",
        local->fds->size(), " attached"));
  }
  return store_->OpenClientFdRegion((*local->fds)[array.fd_index()].get(), array.offset(),
                                    array.size(), local->cache);
}

Converter::WorkEstimate Converter::EstimateWork(const v1::ConvertRequest& request,
                                                const Caller& caller) const {
  const v1::Source& source = request.source();
  WorkEstimate work;
  work.uses_device =
      source.has_cuda_ipc() || absl::StartsWith(request.options().device(), "cuda");
  Source array;
  switch (source.kind_case()) {
    case v1::Source::kInlineArray:
      work.copy_bytes = source.inline_array().storage().size();
      return work;
    case v1::Source::kLiteral:
      work.copy_bytes = static_cast<uint64_t>(source.literal().nodes_size()) * 16;
      return work;
    case v1::Source::kSharedMemory: {
      absl::StatusOr<DType> dtype = DTypeFromProto(source.shared_memory().dtype());
      absl::StatusOr<Layout> layout = LayoutFromProto(source.shared_memory().layout());
      if (!dtype.ok() || !layout.ok()) return work;
      array = {SourceKind::kHostMemory, *dtype, *std::move(layout), Device{}};
      break;
    }
    case v1::Source::kFd: {
      absl::StatusOr<DType> dtype = DTypeFromProto(source.fd().dtype());
      absl::StatusOr<Layout> layout = LayoutFromProto(source.fd().layout());
      if (!dtype.ok() || !layout.ok()) return work;
      array = {SourceKind::kHostMemory, *dtype, *std::move(layout), Device{}};
      break;
    }
    case v1::Source::kTensorId: {
      absl::StatusOr<TensorStore::Lease> held = store_->Get(source.tensor_id(), caller);
      if (!held.ok()) return work;
      const Tensor& t = *held->tensor;
      const bool on_device = t.device_memory != nullptr;
      work.uses_device |= on_device;
      array = {on_device ? SourceKind::kDeviceMemory : SourceKind::kHostMemory, t.dtype,
               t.layout, t.device};
      break;
    }
    default:
      return work;
  }
  absl::StatusOr<ConvertOptions> options = OptionsFromProto(request.options());
  if (!options.ok()) return work;
  absl::StatusOr<Plan> plan = PlanConversion(array, *options);
  if (!plan.ok() || plan->action == Plan::Action::kAlias) return work;
  absl::StatusOr<ViewSizes> sizes = ComputeViewSizes(
      plan->layout, std::max(ItemSize(plan->dtype), ItemSize(array.dtype)));
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
  RETURN_IF_ERROR(tensor.memory->Map());
  return CopyRowMajorRange({tensor.memory->data(), tensor.dtype, tensor.layout}, begin, count,
                           dst);
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

absl::StatusOr<Tensor> Converter::ConvertArray(const Source& source,
                                               const ConvertOptions& options, Storage storage,
                                               const Caller& caller, ShmSegment::Kind kind) {
  ASSIGN_OR_RETURN(const Plan plan, PlanConversion(source, options));
  RETURN_IF_ERROR(cuda_->CheckDevice(plan.device));
  Tensor tensor = NewTensor(plan, caller);
  if (plan.action == Plan::Action::kCopy) {
    if (storage.host != nullptr) {  // a client's segment is mapped on first need
      RETURN_IF_ERROR(storage.host->Map());
      storage.data = storage.host->data();
    }
    RETURN_IF_ERROR(CopyInto(source, storage, plan, kind, &tensor));
    return tensor;
  }
  if (storage.device != nullptr) {
    tensor.device_memory = std::move(storage.device);
    return tensor;
  }
  if (storage.host == nullptr) {
    // Request bytes die with the call: the result keeps a copy of the
    // storage as it arrived, with the source's layout.
    ASSIGN_OR_RETURN(std::shared_ptr<ShmSegment> segment,
                     store_->NewSegment(storage.size, kind));
    if (storage.size > 0) std::memcpy(segment->data(), storage.data, storage.size);
    storage.host = std::move(segment);
  }
  tensor.memory = std::move(storage.host);
  return tensor;
}

absl::Status Converter::CopyInto(const Source& source, const Storage& storage, const Plan& plan,
                                 ShmSegment::Kind kind, Tensor* tensor) {
  ASSIGN_OR_RETURN(const uint64_t bytes, RequiredStorageBytes(plan.layout, plan.dtype));
  const ConstStridedView src{storage.data, source.dtype, source.layout};
  if (plan.device.type == Device::Type::kCPU) {
    ASSIGN_OR_RETURN(std::shared_ptr<ShmSegment> segment, store_->NewSegment(bytes, kind));
    const StridedView dst{segment->data(), plan.dtype, plan.layout};
    RETURN_IF_ERROR(storage.device != nullptr
                        ? cuda_->CastDeviceToHost(storage.device->device(), src, dst)
                        : CastCopy(src, dst));
    tensor->memory = std::move(segment);
    return absl::OkStatus();
  }
  ASSIGN_OR_RETURN(std::shared_ptr<DeviceMemory> memory, cuda_->Allocate(plan.device.index, bytes));
  const StridedView dst{memory->data(), plan.dtype, plan.layout};
  RETURN_IF_ERROR(storage.device != nullptr
                      ? cuda_->CastDeviceToDevice(storage.device->device(), src,
                                                  plan.device.index, dst)
                      : cuda_->CastHostToDevice(src, plan.device.index, dst,
                                                PinForDevice(storage.host.get())));
  tensor->device_memory = std::move(memory);
  return absl::OkStatus();
}

absl::StatusOr<Tensor> Converter::ConvertLiteral(const v1::Literal& proto,
                                                 const ConvertOptions& options, const Caller& caller,
                                                 ShmSegment::Kind kind) {
  ASSIGN_OR_RETURN(const Literal literal, LiteralFromProto(proto));
  LiteralInfo info;
  ASSIGN_OR_RETURN(const Plan plan, PlanLiteral(literal, options, &info));
  RETURN_IF_ERROR(cuda_->CheckDevice(plan.device));
  ASSIGN_OR_RETURN(const uint64_t bytes, RequiredStorageBytes(plan.layout, plan.dtype));
  Tensor tensor = NewTensor(plan, caller);
  if (plan.device.type == Device::Type::kCPU) {
    ASSIGN_OR_RETURN(std::shared_ptr<ShmSegment> segment, store_->NewSegment(bytes, kind));
    RETURN_IF_ERROR(StoreLiteral(literal, info, segment->data()));
    tensor.memory = std::move(segment);
    return tensor;
  }
  // Built on the host in its final dtype and layout, then copied over.
  std::vector<unsigned char> host(bytes);
  RETURN_IF_ERROR(StoreLiteral(literal, info, host.data()));
  RETURN_IF_ERROR(CopyInto({SourceKind::kInline, plan.dtype, plan.layout, Device{}},
                           Storage::Host(host.data(), bytes), plan, kind, &tensor));
  return tensor;
}

absl::StatusOr<std::shared_ptr<ShmSegment>> Converter::BeginUpload(
    const v1::ConvertUploadHeader& header, const Caller& caller) {
  ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(header.dtype()));
  ASSIGN_OR_RETURN(const Layout layout, LayoutFromProto(header.layout()));
  RETURN_IF_ERROR(OptionsFromProto(header.options()).status());
  ASSIGN_OR_RETURN(const uint64_t needed, RequiredStorageBytes(layout, dtype));
  if (header.storage_size() != needed) {
    return absl::InvalidArgumentError(absl::StrCat(
        "upload declares ", header.storage_size(), " bytes of storage but a ", DTypeName(dtype),
        " view with shape ", DimsToString(layout.shape), ", strides ",
        DimsToString(layout.strides), " and offset ", layout.offset, " needs exactly ", needed));
  }
  // Unreserved: the receiver writes every byte in and checks each write.
  return store_->NewSegment(needed, ResultKind(caller, /*local=*/false, /*named_memory=*/false),
                            /*reserve=*/false);
}

absl::StatusOr<Tensor> Converter::FinishUpload(const v1::ConvertUploadHeader& header,
                                               std::shared_ptr<ShmSegment> storage,
                                               const Caller& caller) {
  ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(header.dtype()));
  ASSIGN_OR_RETURN(const Layout layout, LayoutFromProto(header.layout()));
  ASSIGN_OR_RETURN(const ConvertOptions options, OptionsFromProto(header.options()));
  const unsigned char* data = storage->data();
  const uint64_t size = storage->size();
  // The received segment is the inline source; when the plan aliases, it is
  // the result itself and no second copy is made.
  return ConvertArray({SourceKind::kInline, dtype, layout, Device{}}, options,
                      Storage::Host(data, size, std::move(storage)), caller,
                      ResultKind(caller, /*local=*/false, /*named_memory=*/false));
}

}  // namespace asarray::server
