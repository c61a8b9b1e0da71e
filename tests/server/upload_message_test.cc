// ParseUploadMessage against protobuf's own parser: the same messages, split
// into pieces at every position, decode to what ParseFromString says.
#include "server/upload_message.h"

#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "asarray/v1/asarray.pb.h"
#include "gtest/gtest.h"

namespace asarray::server {
namespace {

using Part = UploadMessage::Part;

v1::ConvertUploadRequest HeaderMessage() {
  v1::ConvertUploadRequest m;
  v1::ConvertUploadHeader* h = m.mutable_header();
  h->set_dtype(v1::DTYPE_FLOAT32);
  h->mutable_layout()->add_shape(3);
  h->mutable_layout()->add_strides(1);
  h->set_storage_size(12);
  h->mutable_options()->set_device("cpu");
  return m;
}

std::string DataBytes(size_t n) {
  std::string data(n, '\0');
  for (size_t i = 0; i < n; ++i) data[i] = static_cast<char>(i * 37 + 11);
  return data;
}

// The data field's bytes, read back through CopyFromPieces.
std::string DataOf(const std::vector<absl::string_view>& pieces, const UploadMessage& m) {
  std::string out(m.data_size, '\0');
  CopyFromPieces(pieces, m.data_offset, m.data_size, out.data());
  return out;
}

// Every split of `wire` into two pieces, and into one piece per byte.
std::vector<std::vector<absl::string_view>> Splits(const std::string& wire) {
  std::vector<std::vector<absl::string_view>> splits;
  const absl::string_view all(wire);
  for (size_t at = 0; at <= wire.size(); ++at) {
    splits.push_back({all.substr(0, at), all.substr(at)});
  }
  std::vector<absl::string_view> bytes;
  for (size_t i = 0; i < wire.size(); ++i) bytes.push_back(all.substr(i, 1));
  splits.push_back(bytes);
  return splits;
}

TEST(UploadMessageTest, HeaderDecodesAsProtobufDoesInEverySplit) {
  const v1::ConvertUploadRequest sent = HeaderMessage();
  const std::string wire = sent.SerializeAsString();
  for (const auto& pieces : Splits(wire)) {
    absl::StatusOr<UploadMessage> m = ParseUploadMessage(pieces);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->part, Part::kHeader);
    EXPECT_EQ(m->header.SerializeAsString(), sent.header().SerializeAsString());
  }
}

TEST(UploadMessageTest, DataIsLocatedWithoutCopyingInEverySplit) {
  v1::ConvertUploadRequest sent;
  sent.set_data(DataBytes(300));  // a two-byte length
  const std::string wire = sent.SerializeAsString();
  for (const auto& pieces : Splits(wire)) {
    absl::StatusOr<UploadMessage> m = ParseUploadMessage(pieces);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->part, Part::kData);
    EXPECT_EQ(m->data_offset, 3u);  // tag, then two length bytes
    EXPECT_EQ(DataOf(pieces, *m), sent.data());
  }
}

TEST(UploadMessageTest, EmptyMessageAndEmptyDataCarryNothing) {
  absl::StatusOr<UploadMessage> none = ParseUploadMessage({});
  ASSERT_TRUE(none.ok());
  EXPECT_EQ(none->part, Part::kNone);
  v1::ConvertUploadRequest empty_data;
  empty_data.set_data("");
  const std::string wire = empty_data.SerializeAsString();
  absl::StatusOr<UploadMessage> m = ParseUploadMessage({wire});
  ASSERT_TRUE(m.ok());
  EXPECT_EQ(m->part, Part::kData);
  EXPECT_EQ(m->data_size, 0u);
}

TEST(UploadMessageTest, FollowsProtobufOnUnknownFieldsAndRepeatedOneofFields) {
  // Unknown fields of every wire type, and field 2 as a varint, are skipped;
  // of header and data the last one wins; a second header merges.
  v1::ConvertUploadRequest data_first;
  data_first.set_data("abc");
  const v1::ConvertUploadRequest header = HeaderMessage();
  v1::ConvertUploadRequest second_header;
  second_header.mutable_header()->set_storage_size(99);
  const std::string unknown = std::string("\x18\x05", 2) +                    // field 3, varint
                              std::string("\x21", 1) + std::string(8, 'x') +  // 4, fixed64
                              std::string("\x2d", 1) + std::string(4, 'y') +  // 5, fixed32
                              std::string("\x32\x02zz", 4) +                  // 6, bytes
                              std::string("\x10\x07", 2);                     // 2 as a varint
  const std::vector<std::string> wires = {
      unknown + data_first.SerializeAsString(),
      data_first.SerializeAsString() + header.SerializeAsString(),
      header.SerializeAsString() + data_first.SerializeAsString() + unknown,
      header.SerializeAsString() + second_header.SerializeAsString(),
      std::string(100, '\x1b') + std::string(100, '\x1c') + data_first.SerializeAsString(),
  };
  for (const std::string& wire : wires) {
    v1::ConvertUploadRequest expected;
    ASSERT_TRUE(expected.ParseFromString(wire));
    absl::StatusOr<UploadMessage> m = ParseUploadMessage({wire});
    ASSERT_TRUE(m.ok()) << m.status();
    if (expected.has_header()) {
      EXPECT_EQ(m->part, Part::kHeader);
      EXPECT_EQ(m->header.SerializeAsString(), expected.header().SerializeAsString());
    } else {
      EXPECT_EQ(m->part, Part::kData);
      EXPECT_EQ(DataOf({wire}, *m), expected.data());
    }
  }
}

TEST(UploadMessageTest, MalformedMessagesAreInvalidArgumentAsForProtobuf) {
  v1::ConvertUploadRequest data;
  data.set_data(DataBytes(200));
  const std::string whole = data.SerializeAsString();
  const std::string header = HeaderMessage().SerializeAsString();
  const std::vector<std::string> wires = {
      whole.substr(0, whole.size() - 1),           // data cut short
      whole.substr(0, 2),                          // length cut short
      header.substr(0, header.size() - 3),         // header cut short
      std::string("\x00", 1),                      // tag 0
      std::string("\x0a\x02\xff\xff", 4),          // a header that does not parse
      std::string("\x0c", 1),                      // an end-group with no start
      std::string("\x12\xff\xff\xff\xff\x0f", 6),  // a length past the message
      // Found by the fuzzer: varints that a lenient reader takes, protobuf not.
      std::string("\x8a\x80\x80\x80\x80\x00\x00", 7),       // a six-byte tag
      std::string("\x12\x80\x80\x80\x80\x80\x00", 7),       // a six-byte length
      std::string("\x12\x80\x80\x80\x80\x08", 6),           // a length of 2 GiB
      std::string(101, '\x1b') + std::string(101, '\x1c'),  // groups 101 deep
      std::string("\x1b\x24", 2),                           // a group ended by another number
  };
  for (const std::string& wire : wires) {
    v1::ConvertUploadRequest reference;
    EXPECT_FALSE(reference.ParseFromString(wire))
        << "protobuf accepts case " << &wire - wires.data();
    absl::StatusOr<UploadMessage> m = ParseUploadMessage({wire});
    ASSERT_FALSE(m.ok()) << "case " << &wire - wires.data();
    EXPECT_EQ(m.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(m.status().message().find("does not parse"), std::string::npos) << m.status();
  }
}

}  // namespace
}  // namespace asarray::server
