// The one place where asarray.v1 messages and core types meet, in both
// directions, for the server and the client alike; and the one conversion of
// absl::Status into grpc::Status. Pure functions; thread-safe.
#ifndef ASARRAY_WIRE_PROTO_CONVERT_H_
#define ASARRAY_WIRE_PROTO_CONVERT_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "asarray/v1/asarray.pb.h"
#include "core/dtype.h"
#include "core/layout.h"
#include "core/literal.h"
#include "core/plan.h"
#include "grpcpp/support/status.h"

namespace asarray {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

// INVALID_ARGUMENT for DTYPE_UNSPECIFIED or a value this build does not know.
absl::StatusOr<DType> DTypeFromProto(int proto_dtype);
v1::DType DTypeToProto(DType dtype);

// Validates as ValidateLayout does.
absl::StatusOr<Layout> LayoutFromProto(const v1::Layout& proto);
void LayoutToProto(const Layout& layout, v1::Layout* proto);

absl::StatusOr<ConvertOptions> OptionsFromProto(const v1::Options& proto);
void OptionsToProto(const ConvertOptions& options, v1::Options* proto);

// Nesting beyond kMaxRank is INVALID_ARGUMENT, never deep recursion.
absl::StatusOr<Literal> LiteralFromProto(const v1::Literal& proto);
absl::Status LiteralToProto(const Literal& literal, v1::Literal* proto);

// Everything a TensorHandle says, in core types.
struct HandleInfo {
  std::string id;
  DType dtype = DType::kFloat32;
  Layout layout;
  Device device;
  bool requires_grad = false;
  bool shares_memory = false;
  std::vector<std::string> warnings;
  std::string shm_name;  // empty when the handle has no shared memory
  uint64_t shm_offset = 0;
  uint64_t shm_size = 0;
  // For a tensor on a CUDA device: its allocation's 64-byte IPC handle, and
  // the byte range of the storage within that allocation.
  std::string cuda_ipc_handle;  // empty when the handle has no CUDA memory
  uint64_t cuda_offset = 0;
  uint64_t cuda_size = 0;
  // For memory that travels as a descriptor (the local transport): which
  // one (FdLocation), and the byte range of the storage in its file.
  bool has_fd = false;
  uint32_t fd_index = 0;
  bool fd_from_request = false;
  uint64_t fd_offset = 0;
  uint64_t fd_size = 0;
  // InfinitePast: none (data only, or a lease that ends with its connection).
  absl::Time lease_expires = absl::InfinitePast();
};

// INVALID_ARGUMENT or RESOURCE_EXHAUSTED when the layout has no checked
// byte count (ComputeViewSizes), which a tensor the server holds always has.
absl::Status HandleToProto(const HandleInfo& info, v1::TensorHandle* proto);

// A requested TTL in milliseconds: 0 (the default) stays zero, and any value
// past what absl::Duration counts in milliseconds reads as infinite (then
// capped to the maximum), never as a negative or wrapped one.
absl::Duration TtlFromProto(uint64_t ttl_ms);
absl::StatusOr<HandleInfo> HandleFromProto(const v1::TensorHandle& proto);

}  // namespace asarray

#endif  // ASARRAY_WIRE_PROTO_CONVERT_H_
