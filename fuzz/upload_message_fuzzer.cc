// ConvertUpload messages as the server decodes them (server/upload_message.h),
// against protobuf's own parser of ConvertUploadRequest. The first byte
// picks how the rest is split into pieces (as gRPC's slices would split it);
// the decoding must agree with protobuf on whether the bytes parse, on
// which part they carry, and on that part's contents.
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "asarray/v1/asarray.pb.h"
#include "fuzz/fuzz_check.h"
#include "google/protobuf/stubs/logging.h"
#include "server/upload_message.h"

// protobuf logs every invalid UTF-8 string it refuses; that output would
// cost more than the parsing.
extern "C" int LLVMFuzzerInitialize(int*, char***) {
  google::protobuf::SetLogHandler(nullptr);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using asarray::fuzz::Require;
  using asarray::server::UploadMessage;
  if (size == 0) return 0;
  const size_t step = data[0] == 0 ? size : data[0] % 17 + 1;  // 0: one piece
  const absl::string_view wire(reinterpret_cast<const char*>(data + 1), size - 1);
  std::vector<absl::string_view> pieces;
  for (size_t at = 0; at < wire.size(); at += step) pieces.push_back(wire.substr(at, step));

  asarray::v1::ConvertUploadRequest reference;
  const bool parses = reference.ParseFromArray(wire.data(), static_cast<int>(wire.size()));
  absl::StatusOr<UploadMessage> decoded = asarray::server::ParseUploadMessage(pieces);
  asarray::fuzz::RequireExplained(decoded.status());
  Require(parses == decoded.ok(), "protobuf and the upload decoder disagree on parsing");
  if (!parses) {
    Require(decoded.status().code() == absl::StatusCode::kInvalidArgument,
            "an unparsable message that is not INVALID_ARGUMENT");
    return 0;
  }
  switch (reference.part_case()) {
    case asarray::v1::ConvertUploadRequest::kHeader:
      Require(decoded->part == UploadMessage::Part::kHeader, "a header decoded as another part");
      Require(decoded->header.SerializeAsString() == reference.header().SerializeAsString(),
              "a header decoded differently");
      break;
    case asarray::v1::ConvertUploadRequest::kData: {
      Require(decoded->part == UploadMessage::Part::kData, "data decoded as another part");
      Require(decoded->data_offset + decoded->data_size <= wire.size(), "data past the message");
      std::string bytes(decoded->data_size, '\0');
      asarray::server::CopyFromPieces(pieces, decoded->data_offset, decoded->data_size,
                                      bytes.data());
      Require(bytes == reference.data(), "data decoded differently");
      break;
    }
    case asarray::v1::ConvertUploadRequest::PART_NOT_SET:
      Require(decoded->part == UploadMessage::Part::kNone, "a part where protobuf sees none");
      break;
  }
  return 0;
}
