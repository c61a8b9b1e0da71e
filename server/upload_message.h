// Decodes one ConvertUpload stream message without copying its data. The
// server receives these messages raw (as gRPC's slices) so that a chunk's
// bytes go from the received slices straight into the upload's segment;
// parsing them into a ConvertUploadRequest would first copy every chunk
// into a freshly allocated string.
//
// The decoding follows protobuf's rules for ConvertUploadRequest: unknown
// fields are skipped, and of the oneof's fields the last one present wins
// (a repeated header merges into the one before it). Pure; thread-safe.
#ifndef ASARRAY_SERVER_UPLOAD_MESSAGE_H_
#define ASARRAY_SERVER_UPLOAD_MESSAGE_H_

#include <cstdint>

#include "absl/functional/function_ref.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "asarray/v1/asarray.pb.h"

namespace asarray::server {

struct UploadMessage {
  enum class Part { kNone, kHeader, kData };
  Part part = Part::kNone;
  v1::ConvertUploadHeader header;  // when part == kHeader
  // When part == kData: where the data field's bytes lie within the message
  // (the concatenation of the pieces it was parsed from).
  uint64_t data_offset = 0;
  uint64_t data_size = 0;
};

// `pieces`, concatenated, are the serialized message. A message that does
// not parse is INVALID_ARGUMENT.
absl::StatusOr<UploadMessage> ParseUploadMessage(absl::Span<const absl::string_view> pieces);

// Calls fn(data, n), in order, for each part of the `size` bytes starting
// `offset` bytes into the concatenation of `pieces`. REQUIRES: the range lies
// within the pieces.
void ForEachPieceRange(absl::Span<const absl::string_view> pieces, uint64_t offset, uint64_t size,
                       absl::FunctionRef<void(const char* data, size_t n)> fn);

// Copies those bytes to `out`.
void CopyFromPieces(absl::Span<const absl::string_view> pieces, uint64_t offset, uint64_t size,
                    void* out);

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_UPLOAD_MESSAGE_H_
