#include "server/upload_message.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream.h"
#include "google/protobuf/wire_format_lite.h"

namespace asarray::server {
namespace {

using google::protobuf::internal::WireFormatLite;

// A ZeroCopyInputStream over the pieces, in order, without copying them.
class PiecesInputStream final : public google::protobuf::io::ZeroCopyInputStream {
 public:
  explicit PiecesInputStream(absl::Span<const absl::string_view> pieces) : pieces_(pieces) {}

  bool Next(const void** data, int* size) override {
    while (index_ < pieces_.size() && offset_ == pieces_[index_].size()) {
      ++index_;
      offset_ = 0;
    }
    if (index_ == pieces_.size()) return false;
    const size_t n = std::min<size_t>(pieces_[index_].size() - offset_, INT_MAX);
    *data = pieces_[index_].data() + offset_;
    *size = static_cast<int>(n);
    offset_ += n;
    count_ += static_cast<int64_t>(n);
    return true;
  }

  // Only ever backs up within the piece Next() returned last.
  void BackUp(int count) override {
    offset_ -= static_cast<size_t>(count);
    count_ -= count;
  }

  bool Skip(int count) override {
    const void* data;
    int size;
    while (count > 0) {
      if (!Next(&data, &size)) return false;
      if (size > count) {
        BackUp(size - count);
        return true;
      }
      count -= size;
    }
    return true;
  }

  int64_t ByteCount() const override { return count_; }

 private:
  const absl::Span<const absl::string_view> pieces_;
  size_t index_ = 0;
  size_t offset_ = 0;  // within pieces_[index_]
  int64_t count_ = 0;
};

absl::Status Unparsable(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(
      "an upload message does not parse as its protobuf message (ConvertUploadRequest): ", why));
}

}  // namespace

absl::StatusOr<UploadMessage> ParseUploadMessage(absl::Span<const absl::string_view> pieces) {
  PiecesInputStream stream(pieces);
  google::protobuf::io::CodedInputStream in(&stream);
  UploadMessage message;
  for (uint32_t tag = in.ReadTag(); tag != 0; tag = in.ReadTag()) {
    const int field = WireFormatLite::GetTagFieldNumber(tag);
    const bool delimited =
        WireFormatLite::GetTagWireType(tag) == WireFormatLite::WIRETYPE_LENGTH_DELIMITED;
    if (!delimited || (field != 1 && field != 2)) {
      // An unknown field, or a known number with the wrong wire type:
      // protobuf keeps both as unknown fields.
      if (!WireFormatLite::SkipField(&in, tag)) return Unparsable("a field is cut short");
      continue;
    }
    uint32_t length;
    if (!in.ReadVarint32(&length)) return Unparsable("a field's length is cut short");
    if (field == 1) {
      std::string bytes;
      if (!in.ReadString(&bytes, static_cast<int>(length))) {
        return Unparsable("the header is cut short");
      }
      if (message.part != UploadMessage::Part::kHeader) message.header.Clear();
      if (!message.header.MergeFromString(bytes)) return Unparsable("the header does not parse");
      message.part = UploadMessage::Part::kHeader;
    } else {
      message.part = UploadMessage::Part::kData;
      message.data_offset = static_cast<uint64_t>(in.CurrentPosition());
      message.data_size = length;
      if (!in.Skip(static_cast<int>(length))) return Unparsable("the data is cut short");
    }
  }
  if (!in.ConsumedEntireMessage()) return Unparsable("a field tag is invalid");
  if (message.part != UploadMessage::Part::kHeader) message.header.Clear();
  return message;
}

void CopyFromPieces(absl::Span<const absl::string_view> pieces, uint64_t offset, uint64_t size,
                    void* out) {
  auto* dest = static_cast<unsigned char*>(out);
  for (const absl::string_view piece : pieces) {
    if (size == 0) return;
    if (offset >= piece.size()) {
      offset -= piece.size();
      continue;
    }
    const uint64_t n = std::min<uint64_t>(piece.size() - offset, size);
    std::memcpy(dest, piece.data() + offset, n);
    dest += n;
    size -= n;
    offset = 0;
  }
}

}  // namespace asarray::server
