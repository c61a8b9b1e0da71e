#include "server/upload_message.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "google/protobuf/io/coded_stream.h"

namespace asarray::server {
namespace {

// Reads the pieces in order, as one stream of bytes, without copying them.
class Cursor {
 public:
  explicit Cursor(absl::Span<const absl::string_view> pieces) : pieces_(pieces) {}

  bool AtEnd() {
    SkipEmpty();
    return index_ == pieces_.size();
  }
  uint64_t position() const { return position_; }

  bool ReadByte(uint8_t* byte) {
    if (AtEnd()) return false;
    *byte = static_cast<uint8_t>(pieces_[index_][offset_++]);
    ++position_;
    return true;
  }

  bool Skip(uint64_t n) { return Advance(n, nullptr); }

  // Appends the next n bytes to `out`.
  bool Read(uint64_t n, std::string* out) { return Advance(n, out); }

 private:
  // Moves n bytes on, appending them to `out` unless it is null.
  bool Advance(uint64_t n, std::string* out) {
    while (n > 0) {
      if (AtEnd()) return false;
      const uint64_t here = std::min<uint64_t>(n, pieces_[index_].size() - offset_);
      if (out != nullptr) out->append(pieces_[index_].data() + offset_, here);
      offset_ += here;
      position_ += here;
      n -= here;
    }
    return true;
  }

  void SkipEmpty() {
    while (index_ < pieces_.size() && offset_ == pieces_[index_].size()) {
      ++index_;
      offset_ = 0;
    }
  }

  const absl::Span<const absl::string_view> pieces_;
  size_t index_ = 0;
  size_t offset_ = 0;  // within pieces_[index_]
  uint64_t position_ = 0;
};

// The wire format as protobuf's own parser (3.21) accepts it, so that a
// message parses here exactly when ParseFromString would parse it.
constexpr int kMaxGroupDepth = 100;          // protobuf's default recursion limit
constexpr uint32_t kMaxSize = INT_MAX - 16;  // ParseContext::kSlopBytes below INT_MAX

// A varint of at most `max_bytes` bytes, truncated to 64 bits.
bool ReadVarint(Cursor& in, int max_bytes, uint64_t* value) {
  *value = 0;
  for (int i = 0; i < max_bytes; ++i) {
    uint8_t byte;
    if (!in.ReadByte(&byte)) return false;
    if (7 * i < 64) *value |= static_cast<uint64_t>(byte & 0x7f) << (7 * i);
    if (byte < 0x80) return true;
  }
  return false;
}

// A tag: at most five bytes, its value truncated to 32 bits.
bool ReadTag(Cursor& in, uint32_t* tag) {
  uint64_t value;
  if (!ReadVarint(in, 5, &value)) return false;
  *tag = static_cast<uint32_t>(value);
  return true;
}

// The length of a length-delimited field: at most five bytes, below 2 GiB.
bool ReadSize(Cursor& in, uint64_t* size) { return ReadVarint(in, 5, size) && *size <= kMaxSize; }

// Skips the value of an unknown field whose tag was just read.
bool SkipField(Cursor& in, uint32_t tag, int depth) {
  if (tag >> 3 == 0) return false;  // field number 0
  uint64_t value;
  switch (tag & 7) {
    case 0:
      return ReadVarint(in, 10, &value);
    case 1:
      return in.Skip(8);
    case 2:
      return ReadSize(in, &value) && in.Skip(value);
    case 3: {  // a group: fields up to the end-group tag of the same number
      if (depth >= kMaxGroupDepth) return false;
      for (;;) {
        uint32_t inner;
        if (!ReadTag(in, &inner)) return false;
        if (inner == tag + 1) return true;  // its end-group
        if (inner == 0 || (inner & 7) == 4) return false;
        if (!SkipField(in, inner, depth + 1)) return false;
      }
    }
    case 5:
      return in.Skip(4);
    default:  // an end-group without its start, or wire types 6 and 7
      return false;
  }
}

absl::Status Unparsable(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat(
      "an upload message does not parse as its protobuf message (ConvertUploadRequest): ", why));
}

}  // namespace

absl::StatusOr<UploadMessage> ParseUploadMessage(absl::Span<const absl::string_view> pieces) {
  Cursor in(pieces);
  UploadMessage message;
  while (!in.AtEnd()) {
    uint32_t tag;
    if (!ReadTag(in, &tag) || tag == 0) return Unparsable("a field tag is invalid");
    const uint32_t field = tag >> 3;
    if ((tag & 7) != 2 || (field != 1 && field != 2)) {
      // An unknown field, or a known number with another wire type: protobuf
      // keeps both as unknown fields.
      if (!SkipField(in, tag, 0)) return Unparsable("an unknown field is malformed or cut short");
      continue;
    }
    uint64_t size;
    if (!ReadSize(in, &size)) return Unparsable("a field's length is malformed or cut short");
    if (field == 1) {
      std::string bytes;
      if (!in.Read(size, &bytes)) return Unparsable("the header is cut short");
      if (message.part != UploadMessage::Part::kHeader) message.header.Clear();
      // A nested message parses one level deeper than the top.
      google::protobuf::io::CodedInputStream nested(reinterpret_cast<const uint8_t*>(bytes.data()),
                                                    static_cast<int>(bytes.size()));
      nested.SetRecursionLimit(kMaxGroupDepth - 1);
      if (!message.header.MergeFromCodedStream(&nested) || !nested.ConsumedEntireMessage()) {
        return Unparsable("the header does not parse");
      }
      message.part = UploadMessage::Part::kHeader;
    } else {
      message.part = UploadMessage::Part::kData;
      message.data_offset = in.position();
      message.data_size = size;
      if (!in.Skip(size)) return Unparsable("the data is cut short");
    }
  }
  if (message.part != UploadMessage::Part::kHeader) message.header.Clear();
  return message;
}

void ForEachPieceRange(absl::Span<const absl::string_view> pieces, uint64_t offset, uint64_t size,
                       absl::FunctionRef<void(const char* data, size_t n)> fn) {
  for (const absl::string_view piece : pieces) {
    if (size == 0) return;
    if (offset >= piece.size()) {
      offset -= piece.size();
      continue;
    }
    const uint64_t n = std::min<uint64_t>(piece.size() - offset, size);
    fn(piece.data() + offset, n);
    size -= n;
    offset = 0;
  }
}

void CopyFromPieces(absl::Span<const absl::string_view> pieces, uint64_t offset, uint64_t size,
                    void* out) {
  auto* dest = static_cast<unsigned char*>(out);
  ForEachPieceRange(pieces, offset, size, [&](const char* data, size_t n) {
    std::memcpy(dest, data, n);
    dest += n;
  });
}

}  // namespace asarray::server
