#include "wire/proto_convert.h"

#include <utility>

#include "absl/strings/str_cat.h"
#include "core/quote.h"
#include "core/status_macros.h"

namespace asarray {

static_assert(static_cast<int>(absl::StatusCode::kResourceExhausted) ==
                      static_cast<int>(grpc::StatusCode::RESOURCE_EXHAUSTED) &&
                  static_cast<int>(absl::StatusCode::kUnauthenticated) ==
                      static_cast<int>(grpc::StatusCode::UNAUTHENTICATED),
              "absl and gRPC status codes must agree");

grpc::Status ToGrpcStatus(const absl::Status& status) {
  if (status.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(status.code()), std::string(status.message()));
}

absl::Status FromGrpcStatus(const grpc::Status& status) {
  if (status.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(status.error_code()), status.error_message());
}

namespace {

constexpr DType kProtoOrder[] = {
    DType::kBool,    DType::kUInt8,   DType::kInt8,      DType::kInt16,
    DType::kInt32,   DType::kInt64,   DType::kFloat16,   DType::kBFloat16,
    DType::kFloat32, DType::kFloat64, DType::kComplex64, DType::kComplex128,
};

absl::Status TooDeep() {
  return absl::InvalidArgumentError(
      absl::StrCat("literal nests lists deeper than the maximum rank ", kMaxRank));
}

// Decodes the subtree starting at nodes[*next], advancing *next past it.
absl::Status LiteralFromNodes(const v1::Literal& proto, int depth, int* next, Literal* out) {
  if (*next >= proto.nodes_size()) {
    return absl::InvalidArgumentError(absl::StrCat("literal ends after ", proto.nodes_size(),
                                                   " nodes, inside a list that needs more"));
  }
  const v1::LiteralNode& node = proto.nodes((*next)++);
  switch (node.value_case()) {
    case v1::LiteralNode::kBoolValue:
      *out = Literal::Bool(node.bool_value());
      break;
    case v1::LiteralNode::kIntValue:
      *out = Literal::Int(node.int_value());
      break;
    case v1::LiteralNode::kFloatValue:
      *out = Literal::Float(node.float_value());
      break;
    case v1::LiteralNode::kComplexValue:
      *out = Literal::Complex(node.complex_value().real(), node.complex_value().imag());
      break;
    case v1::LiteralNode::kNotANumber:
      *out = Literal::Invalid(Cut(node.not_a_number()));
      break;
    case v1::LiteralNode::VALUE_NOT_SET:
      return absl::InvalidArgumentError(
          absl::StrCat("literal node ", *next - 1, " has no value set"));
    case v1::LiteralNode::kListLength: {
      if (depth >= kMaxRank) return TooDeep();
      // Every item takes at least one node: a longer list cannot be honest.
      if (node.list_length() > static_cast<uint64_t>(proto.nodes_size() - *next)) {
        return absl::InvalidArgumentError(
            absl::StrCat("literal node ", *next - 1, " declares a list of ", node.list_length(),
                         " items but only ", proto.nodes_size() - *next, " nodes follow"));
      }
      std::vector<Literal> items(node.list_length());
      for (Literal& item : items)
        ASARRAY_RETURN_IF_ERROR(LiteralFromNodes(proto, depth + 1, next, &item));
      *out = Literal::List(std::move(items));
      break;
    }
  }
  return absl::OkStatus();
}

absl::Status LiteralToNodes(const Literal& literal, int depth, v1::Literal* proto) {
  v1::LiteralNode* node = proto->add_nodes();
  switch (literal.kind()) {
    case Literal::Kind::kBool:
      node->set_bool_value(literal.bool_value());
      break;
    case Literal::Kind::kInt:
      node->set_int_value(literal.int_value());
      break;
    case Literal::Kind::kFloat:
      node->set_float_value(literal.float_value());
      break;
    case Literal::Kind::kComplex:
      node->mutable_complex_value()->set_real(literal.float_value());
      node->mutable_complex_value()->set_imag(literal.imag_value());
      break;
    case Literal::Kind::kInvalid:
      node->set_not_a_number(literal.invalid_description());
      break;
    case Literal::Kind::kList:
      if (depth >= kMaxRank) return TooDeep();
      node->set_list_length(literal.items().size());
      for (const Literal& item : literal.items()) {
        ASARRAY_RETURN_IF_ERROR(LiteralToNodes(item, depth + 1, proto));
      }
      break;
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<DType> DTypeFromProto(int proto_dtype) {
  if (proto_dtype >= 1 && proto_dtype <= kNumDTypes) return kProtoOrder[proto_dtype - 1];
  return absl::InvalidArgumentError(proto_dtype == 0
                                        ? std::string("dtype is unspecified")
                                        : absl::StrCat("unknown dtype enum value ", proto_dtype));
}

v1::DType DTypeToProto(DType dtype) {
  for (int i = 0; i < kNumDTypes; ++i) {
    if (kProtoOrder[i] == dtype) return static_cast<v1::DType>(i + 1);
  }
  return v1::DTYPE_UNSPECIFIED;
}

absl::StatusOr<Layout> LayoutFromProto(const v1::Layout& proto) {
  Layout layout;
  layout.shape.assign(proto.shape().begin(), proto.shape().end());
  layout.strides.assign(proto.strides().begin(), proto.strides().end());
  layout.offset = proto.offset();
  ASARRAY_RETURN_IF_ERROR(ValidateLayout(layout));
  return layout;
}

void LayoutToProto(const Layout& layout, v1::Layout* proto) {
  proto->mutable_shape()->Assign(layout.shape.begin(), layout.shape.end());
  proto->mutable_strides()->Assign(layout.strides.begin(), layout.strides.end());
  proto->set_offset(layout.offset);
}

absl::StatusOr<ConvertOptions> OptionsFromProto(const v1::Options& proto) {
  ConvertOptions options;
  if (proto.has_dtype()) {
    ASARRAY_ASSIGN_OR_RETURN(options.dtype, DTypeFromProto(proto.dtype()));
  }
  if (!proto.device().empty()) {
    ASARRAY_ASSIGN_OR_RETURN(options.device, ParseDevice(proto.device()));
  }
  if (proto.has_copy()) options.copy = proto.copy();
  options.requires_grad = proto.requires_grad();
  return options;
}

void OptionsToProto(const ConvertOptions& options, v1::Options* proto) {
  if (options.dtype) proto->set_dtype(DTypeToProto(*options.dtype));
  if (options.device) proto->set_device(DeviceName(*options.device));
  if (options.copy) proto->set_copy(*options.copy);
  proto->set_requires_grad(options.requires_grad);
}

absl::StatusOr<Literal> LiteralFromProto(const v1::Literal& proto) {
  Literal literal;
  int next = 0;
  ASARRAY_RETURN_IF_ERROR(LiteralFromNodes(proto, 0, &next, &literal));
  if (next != proto.nodes_size()) {
    return absl::InvalidArgumentError(absl::StrCat("literal has ", proto.nodes_size() - next,
                                                   " nodes after its end (node ", next, ")"));
  }
  return literal;
}

absl::Status LiteralToProto(const Literal& literal, v1::Literal* proto) {
  proto->Clear();
  return LiteralToNodes(literal, 0, proto);
}

absl::Status HandleToProto(const HandleInfo& info, v1::TensorHandle* proto) {
  ASARRAY_ASSIGN_OR_RETURN(const ViewSizes sizes,
                           ComputeViewSizes(info.layout, ItemSize(info.dtype)));
  proto->set_id(info.id);
  proto->set_dtype(DTypeToProto(info.dtype));
  LayoutToProto(info.layout, proto->mutable_layout());
  proto->set_device(DeviceName(info.device));
  proto->set_requires_grad(info.requires_grad);
  proto->set_shares_memory(info.shares_memory);
  for (const std::string& w : info.warnings) proto->add_warnings(w);
  if (!info.shm_name.empty()) {
    v1::SharedMemoryLocation* shm = proto->mutable_shared_memory();
    shm->set_name(info.shm_name);
    shm->set_offset(info.shm_offset);
    shm->set_size(info.shm_size);
  }
  if (!info.cuda_ipc_handle.empty()) {
    v1::CudaLocation* cuda = proto->mutable_cuda();
    cuda->set_ipc_handle(info.cuda_ipc_handle);
    cuda->set_device(info.device.index);
    cuda->set_offset(info.cuda_offset);
    cuda->set_size(info.cuda_size);
  }
  if (info.has_fd) {
    v1::FdLocation* fd = proto->mutable_fd();
    fd->set_fd_index(info.fd_index);
    fd->set_request_fd(info.fd_from_request);
    fd->set_offset(info.fd_offset);
    fd->set_size(info.fd_size);
  }
  if (info.lease_expires != absl::InfinitePast()) {
    proto->set_lease_expires_unix_ms(absl::ToUnixMillis(info.lease_expires));
  }
  proto->set_nbytes(static_cast<uint64_t>(sizes.nbytes));
  return absl::OkStatus();
}

absl::Duration TtlFromProto(uint64_t ttl_ms) {
  if (ttl_ms > static_cast<uint64_t>(INT64_MAX)) return absl::InfiniteDuration();
  return absl::Milliseconds(static_cast<int64_t>(ttl_ms));
}

absl::StatusOr<HandleInfo> HandleFromProto(const v1::TensorHandle& proto) {
  HandleInfo info;
  info.id = proto.id();
  ASARRAY_ASSIGN_OR_RETURN(info.dtype, DTypeFromProto(proto.dtype()));
  ASARRAY_ASSIGN_OR_RETURN(info.layout, LayoutFromProto(proto.layout()));
  ASARRAY_ASSIGN_OR_RETURN(info.device, ParseDevice(proto.device()));
  info.requires_grad = proto.requires_grad();
  info.shares_memory = proto.shares_memory();
  info.warnings.assign(proto.warnings().begin(), proto.warnings().end());
  if (proto.has_shared_memory()) {
    info.shm_name = proto.shared_memory().name();
    info.shm_offset = proto.shared_memory().offset();
    info.shm_size = proto.shared_memory().size();
  }
  if (proto.has_cuda()) {
    if (info.device.type != Device::Type::kCUDA || proto.cuda().device() != info.device.index) {
      return absl::InvalidArgumentError(absl::StrCat(
          "a handle on ", proto.device(), " names CUDA memory on device ", proto.cuda().device()));
    }
    info.cuda_ipc_handle = proto.cuda().ipc_handle();
    info.cuda_offset = proto.cuda().offset();
    info.cuda_size = proto.cuda().size();
  }
  if (proto.has_fd()) {
    info.has_fd = true;
    info.fd_index = proto.fd().fd_index();
    info.fd_from_request = proto.fd().request_fd();
    info.fd_offset = proto.fd().offset();
    info.fd_size = proto.fd().size();
  }
  if (proto.lease_expires_unix_ms() != 0) {
    info.lease_expires = absl::FromUnixMillis(proto.lease_expires_unix_ms());
  }
  return info;
}

}  // namespace asarray
