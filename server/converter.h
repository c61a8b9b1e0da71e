// Performs conversions for the service: resolves a request's source into
// memory the server can read (a client region, a held tensor, inline bytes,
// a literal), plans it with the core, and fills a new segment when the plan
// copies. Results are not registered; the caller decides (a handle, or data
// streamed back). Thread-safe; every method may block on big copies, so call
// them off gRPC's callback threads.
#ifndef ASARRAY_SERVER_CONVERTER_H_
#define ASARRAY_SERVER_CONVERTER_H_

#include <sys/types.h>

#include <memory>

#include "absl/status/statusor.h"
#include "asarray/v1/asarray.pb.h"
#include "core/plan.h"
#include "server/tensor_store.h"

namespace asarray::server {

class Converter {
 public:
  explicit Converter(TensorStore* store) : store_(store) {}

  // A unary request: any source kind.
  absl::StatusOr<Tensor> Convert(const v1::ConvertRequest& request, uid_t caller);

  // About how many bytes Convert(request) would copy; 0 when it would only
  // alias or fail. Cheap: no memory is mapped. Lets the service run small
  // requests on the calling thread and hand the rest to workers.
  uint64_t EstimateCopyBytes(const v1::ConvertRequest& request, uid_t caller) const;

  // Checks an upload's header before any byte is received, and returns the
  // segment its storage is written into (exactly header.storage_size bytes).
  absl::StatusOr<std::shared_ptr<ShmSegment>> BeginUpload(const v1::ConvertUploadHeader& header);

  // Converts a completely received upload.
  absl::StatusOr<Tensor> FinishUpload(const v1::ConvertUploadHeader& header,
                                      std::shared_ptr<ShmSegment> storage, uid_t caller);

 private:
  // Converts an array the server can read at `storage` (the layout's element
  // 0 sits at storage + offset * item size). `memory` owns it, or is null for
  // request bytes that die with the call.
  absl::StatusOr<Tensor> ConvertArray(const Source& source, const ConvertOptions& options,
                                      const unsigned char* storage, uint64_t storage_size,
                                      std::shared_ptr<HostMemory> memory, uid_t caller);
  absl::StatusOr<Tensor> ConvertLiteral(const v1::Literal& proto, const ConvertOptions& options,
                                        uid_t caller);

  TensorStore* const store_;
};

// The bytes an array's storage must hold for `layout`: through the last byte
// the view touches. INVALID_ARGUMENT when the view reaches before the start.
absl::StatusOr<uint64_t> RequiredStorageBytes(const Layout& layout, DType dtype);

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_CONVERTER_H_
