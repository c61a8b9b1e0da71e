#include "server/converter.h"

#include <algorithm>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/cast.h"
#include "core/status_macros.h"
#include "server/convert.h"

namespace asarray::server {
namespace {

absl::Status CheckDeviceAvailable(const Device& device) {
  if (device.type == Device::Type::kCPU) return absl::OkStatus();
  return absl::FailedPreconditionError(
      absl::StrCat("no CUDA device is available for ", DeviceName(device),
                   ": this server was built without the CUDA backend"));
}

Tensor NewTensor(const Plan& plan, uid_t caller) {
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

absl::StatusOr<uint64_t> RequiredStorageBytes(const Layout& layout, DType dtype) {
  ASSIGN_OR_RETURN(const ByteRange range, ComputeByteRange(layout, ItemSize(dtype)));
  if (range.begin < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "view with strides ", DimsToString(layout.strides), " and offset ", layout.offset,
        " reaches ", -range.begin, " bytes before the start of its storage"));
  }
  return static_cast<uint64_t>(range.end);
}

absl::StatusOr<Tensor> Converter::Convert(const v1::ConvertRequest& request, uid_t caller) {
  ASSIGN_OR_RETURN(const ConvertOptions options, OptionsFromProto(request.options()));
  const v1::Source& source = request.source();
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
                          reinterpret_cast<const unsigned char*>(array.storage().data()), needed,
                          nullptr, caller);
    }
    case v1::Source::kLiteral:
      return ConvertLiteral(source.literal(), options, caller);
    case v1::Source::kSharedMemory: {
      const v1::SharedMemoryArray& array = source.shared_memory();
      ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(array.dtype()));
      ASSIGN_OR_RETURN(const Layout layout, LayoutFromProto(array.layout()));
      ASSIGN_OR_RETURN(const uint64_t needed, RequiredStorageBytes(layout, dtype));
      if (needed > array.size()) {
        return absl::InvalidArgumentError(absl::StrCat(
            "region of ", array.size(), " bytes is too small for a ", DTypeName(dtype),
            " view with shape ", DimsToString(layout.shape), ", strides ",
            DimsToString(layout.strides), " and offset ", layout.offset, ", which needs ",
            needed));
      }
      ASSIGN_OR_RETURN(std::shared_ptr<ClientRegion> region,
                       store_->OpenClientRegion(array.name(), array.offset(), array.size(),
                                                 caller));
      const unsigned char* data = region->data();
      return ConvertArray({SourceKind::kHostMemory, dtype, layout, Device{}}, options, data,
                          array.size(), std::move(region), caller);
    }
    case v1::Source::kCudaIpc:
      return absl::UnimplementedError(
          "CUDA IPC sources need the CUDA backend, which this server was built without");
    case v1::Source::kTensorId: {
      ASSIGN_OR_RETURN(const TensorStore::Lease lease, store_->Get(source.tensor_id(), caller));
      const Tensor& held = *lease.tensor;
      return ConvertArray({SourceKind::kHostMemory, held.dtype, held.layout, held.device},
                          options, held.memory->data(), held.memory->size(), held.memory,
                          caller);
    }
    case v1::Source::KIND_NOT_SET:
      break;
  }
  return absl::InvalidArgumentError("request has no source");
}

uint64_t Converter::EstimateCopyBytes(const v1::ConvertRequest& request, uid_t caller) const {
  const v1::Source& source = request.source();
  Source array;
  switch (source.kind_case()) {
    case v1::Source::kInlineArray:
      return source.inline_array().storage().size();
    case v1::Source::kLiteral:
      return static_cast<uint64_t>(source.literal().nodes_size()) * 16;
    case v1::Source::kSharedMemory: {
      absl::StatusOr<DType> dtype = DTypeFromProto(source.shared_memory().dtype());
      absl::StatusOr<Layout> layout = LayoutFromProto(source.shared_memory().layout());
      if (!dtype.ok() || !layout.ok()) return 0;
      array = {SourceKind::kHostMemory, *dtype, *std::move(layout), Device{}};
      break;
    }
    case v1::Source::kTensorId: {
      absl::StatusOr<TensorStore::Lease> held = store_->Get(source.tensor_id(), caller);
      if (!held.ok()) return 0;
      const Tensor& t = *held->tensor;
      array = {SourceKind::kHostMemory, t.dtype, t.layout, t.device};
      break;
    }
    default:
      return 0;
  }
  absl::StatusOr<ConvertOptions> options = OptionsFromProto(request.options());
  if (!options.ok()) return 0;
  absl::StatusOr<Plan> plan = PlanConversion(array, *options);
  if (!plan.ok() || plan->action == Plan::Action::kAlias) return 0;
  return NumElements(plan->layout.shape).value_or(0) *
         std::max(ItemSize(plan->dtype), ItemSize(array.dtype));
}

absl::StatusOr<Tensor> Converter::ConvertArray(const Source& source,
                                               const ConvertOptions& options,
                                               const unsigned char* storage,
                                               uint64_t storage_size,
                                               std::shared_ptr<HostMemory> memory,
                                               uid_t caller) {
  ASSIGN_OR_RETURN(const Plan plan, PlanConversion(source, options));
  RETURN_IF_ERROR(CheckDeviceAvailable(plan.device));
  Tensor tensor = NewTensor(plan, caller);
  if (plan.action == Plan::Action::kAlias) {
    if (memory == nullptr) {
      // Request bytes die with the call: the result keeps a copy of the
      // storage as it arrived, with the source's layout.
      ASSIGN_OR_RETURN(std::shared_ptr<ShmSegment> segment, store_->NewSegment(storage_size));
      if (storage_size > 0) std::memcpy(segment->data(), storage, storage_size);
      memory = std::move(segment);
    }
    tensor.memory = std::move(memory);
    return tensor;
  }
  ASSIGN_OR_RETURN(const uint64_t bytes, RequiredStorageBytes(plan.layout, plan.dtype));
  ASSIGN_OR_RETURN(std::shared_ptr<ShmSegment> segment, store_->NewSegment(bytes));
  RETURN_IF_ERROR(CastCopy({storage, source.dtype, source.layout},
                           {segment->data(), plan.dtype, plan.layout}));
  tensor.memory = std::move(segment);
  return tensor;
}

absl::StatusOr<Tensor> Converter::ConvertLiteral(const v1::Literal& proto,
                                                 const ConvertOptions& options, uid_t caller) {
  ASSIGN_OR_RETURN(const Literal literal, LiteralFromProto(proto));
  LiteralInfo info;
  ASSIGN_OR_RETURN(const Plan plan, PlanLiteral(literal, options, &info));
  RETURN_IF_ERROR(CheckDeviceAvailable(plan.device));
  ASSIGN_OR_RETURN(const uint64_t bytes, RequiredStorageBytes(plan.layout, plan.dtype));
  ASSIGN_OR_RETURN(std::shared_ptr<ShmSegment> segment, store_->NewSegment(bytes));
  RETURN_IF_ERROR(StoreLiteral(literal, info, segment->data()));
  Tensor tensor = NewTensor(plan, caller);
  tensor.memory = std::move(segment);
  return tensor;
}

absl::StatusOr<std::shared_ptr<ShmSegment>> Converter::BeginUpload(
    const v1::ConvertUploadHeader& header) {
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
  return store_->NewSegment(needed);
}

absl::StatusOr<Tensor> Converter::FinishUpload(const v1::ConvertUploadHeader& header,
                                               std::shared_ptr<ShmSegment> storage,
                                               uid_t caller) {
  ASSIGN_OR_RETURN(const DType dtype, DTypeFromProto(header.dtype()));
  ASSIGN_OR_RETURN(const Layout layout, LayoutFromProto(header.layout()));
  ASSIGN_OR_RETURN(const ConvertOptions options, OptionsFromProto(header.options()));
  const unsigned char* data = storage->data();
  const uint64_t size = storage->size();
  // The received segment is the inline source; when the plan aliases, it is
  // the result itself and no second copy is made.
  return ConvertArray({SourceKind::kInline, dtype, layout, Device{}}, options, data, size,
                      std::move(storage), caller);
}

}  // namespace asarray::server
