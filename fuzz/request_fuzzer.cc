// Request decoding and validation: serialized ConvertRequest or
// ConvertUploadHeader bytes (the first byte picks which), through the
// server's own converter and a real store (a small quota, segments under
// a prefix of this process). A failure must say why; a result must lie
// inside its memory, and every element is read back through it.
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asarray/v1/asarray.pb.h"
#include "core/cast.h"
#include "fuzz/fuzz_check.h"
#include "server/convert.h"
#include "server/converter.h"
#include "server/peer.h"
#include "server/tensor_store.h"

namespace asarray {
namespace {

using fuzz::Require;

server::TensorStore& Store() {
  static server::TensorStore* store = [] {
    server::StoreOptions options;
    options.prefix = absl::StrCat("asarrayd-fuzz-", getpid());
    options.max_bytes = 4 << 20;
    return new server::TensorStore(options);
  }();
  return *store;
}

// Every element of a converted tensor, read through the checked paths.
void CheckResult(const absl::StatusOr<server::Tensor>& tensor) {
  fuzz::RequireExplained(tensor.status());
  // gRPC sees exactly this code and message.
  const grpc::Status wire = ToGrpcStatus(tensor.status());
  Require(static_cast<int>(wire.error_code()) == static_cast<int>(tensor.status().code()),
          "the gRPC code differs from the status");
  if (!tensor.ok()) return;
  const server::Tensor& t = *tensor;
  Require(t.memory != nullptr, "a result without memory");
  Require(CheckFitsStorage(t.layout, ItemSize(t.dtype), t.memory->size()).ok(),
          "a result's layout reaches outside its memory");
  const int64_t numel = NumElements(t.layout.shape).value();
  if (numel > (1 << 20)) return;
  std::vector<unsigned char> rows(static_cast<size_t>(numel) * ItemSize(t.dtype));
  Require(CopyRowMajorRange({t.memory->data(), t.dtype, t.layout}, 0, numel, rows.data()).ok(),
          "a result cannot be read back");
}

}  // namespace
}  // namespace asarray

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace asarray;
  if (size == 0) return 0;
  server::Converter converter(&Store());
  // No local uid: a shared-memory source is validated, then refused, so no
  // segment on this machine is ever mapped by a fuzzed name.
  const uid_t caller = server::kNoLocalUid;
  if (data[0] & 1) {
    v1::ConvertUploadHeader header;
    if (!header.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
    absl::StatusOr<std::shared_ptr<server::ShmSegment>> storage = converter.BeginUpload(header);
    fuzz::RequireExplained(storage.status());
    if (!storage.ok()) return 0;
    fuzz::Require((*storage)->size() == header.storage_size(), "upload segment of another size");
    if ((*storage)->size() > 0) std::memset((*storage)->data(), 0x5a, (*storage)->size());
    CheckResult(converter.FinishUpload(header, *std::move(storage), caller));
    return 0;
  }
  v1::ConvertRequest request;
  if (!request.ParseFromArray(data + 1, static_cast<int>(size - 1))) return 0;
  converter.EstimateWork(request, caller);
  CheckResult(converter.Convert(request, caller));
  return 0;
}
