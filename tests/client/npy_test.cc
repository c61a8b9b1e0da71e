#include "client/npy.h"

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asarray {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// A string literal's bytes, embedded NULs included.
template <size_t N>
std::string Bytes(const char (&s)[N]) {
  return std::string(s, N - 1);
}

// A .npy image of the given version around `dict`, then `data`.
std::string Image(int major, absl::string_view dict, absl::string_view data = "") {
  std::string out("\x93NUMPY", 6);
  out.push_back(static_cast<char>(major));
  out.push_back(0);
  const uint32_t len = static_cast<uint32_t>(dict.size());
  const int len_bytes = major == 1 ? 2 : 4;
  for (int i = 0; i < len_bytes; ++i) out.push_back(static_cast<char>(len >> (8 * i)));
  return absl::StrCat(out, dict, data);
}

std::string Dict(absl::string_view descr, absl::string_view shape, bool fortran = false) {
  return absl::StrCat("{'descr': '", descr, "', 'fortran_order': ", fortran ? "True" : "False",
                      ", 'shape': ", shape, ", }\n");
}

TEST(NpyTest, EncodeThenParseRoundTripsEveryDType) {
  const Dims shape = {2, 3};
  for (int i = 0; i < kNumDTypes; ++i) {
    const DType dtype = AllDTypes()[i];
    SCOPED_TRACE(DTypeName(dtype));
    std::string data(6 * ItemSize(dtype), '\0');
    for (size_t b = 0; b < data.size(); ++b) data[b] = static_cast<char>(b % 2);  // bool-safe
    const absl::StatusOr<std::string> image = EncodeNpy(dtype, shape, data);
    ASSERT_TRUE(image.ok()) << image.status();
    if (dtype == DType::kBFloat16) {
      EXPECT_THAT(*image, HasSubstr("'descr': '<u2'"));
    }
    const absl::StatusOr<NpyHeader> header = ParseNpyHeader(*image);
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_EQ(header->dtype, dtype);
    EXPECT_EQ(header->layout.shape, shape);
    EXPECT_THAT(header->layout.strides, ElementsAre(3, 1));
    EXPECT_EQ(header->data_offset % 64, 0u);
    EXPECT_EQ(header->data_bytes, data.size());
    EXPECT_EQ(image->substr(header->data_offset), data);
  }
}

TEST(NpyTest, ReadsVersions1To3) {
  for (int major : {1, 2, 3}) {
    SCOPED_TRACE(major);
    const std::string dict = Dict("<i4", "(2,)");
    const absl::StatusOr<NpyHeader> header = ParseNpyHeader(Image(major, dict, "abcdefgh"));
    ASSERT_TRUE(header.ok()) << header.status();
    EXPECT_EQ(header->dtype, DType::kInt32);
    EXPECT_THAT(header->layout.shape, ElementsAre(2));
    EXPECT_EQ(header->data_offset, (major == 1 ? 10u : 12u) + dict.size());
    EXPECT_EQ(header->data_bytes, 8u);
  }
}

TEST(NpyTest, FortranOrderIsColumnMajor) {
  const absl::StatusOr<NpyHeader> header = ParseNpyHeader(Image(1, Dict("<f8", "(2, 3, 4)", true)));
  ASSERT_TRUE(header.ok()) << header.status();
  EXPECT_THAT(header->layout.shape, ElementsAre(2, 3, 4));
  EXPECT_THAT(header->layout.strides, ElementsAre(1, 2, 6));
}

TEST(NpyTest, ScalarVectorAndEmptyShapes) {
  absl::StatusOr<NpyHeader> h = ParseNpyHeader(Image(1, Dict("<f4", "()")));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_TRUE(h->layout.shape.empty());
  EXPECT_EQ(h->data_bytes, 4u);
  h = ParseNpyHeader(Image(1, Dict("<f4", "(5,)")));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_THAT(h->layout.shape, ElementsAre(5));
  EXPECT_EQ(h->data_bytes, 20u);
  h = ParseNpyHeader(Image(1, Dict("<f4", "(0, 3)")));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_THAT(h->layout.shape, ElementsAre(0, 3));
  EXPECT_EQ(h->data_bytes, 0u);
}

TEST(NpyTest, NativeAndNotApplicableByteOrders) {
  absl::StatusOr<NpyHeader> h = ParseNpyHeader(Image(1, Dict("=f4", "(1,)")));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->dtype, DType::kFloat32);
  h = ParseNpyHeader(Image(1, Dict("|u1", "(1,)")));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->dtype, DType::kUInt8);
  h = ParseNpyHeader(Image(1, Dict("=b1", "(1,)")));
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ(h->dtype, DType::kBool);
}

void ExpectInvalid(const std::string& file, absl::string_view word) {
  const absl::StatusOr<NpyHeader> h = ParseNpyHeader(file);
  EXPECT_EQ(h.status().code(), absl::StatusCode::kInvalidArgument) << h.status();
  EXPECT_THAT(std::string(h.status().message()), HasSubstr(std::string(word)));
}

TEST(NpyTest, RejectsWithInvalidArgument) {
  ExpectInvalid("not an npy file at all", "magic");
  ExpectInvalid(Image(4, Dict("<f4", "(1,)")), "version 4");
  ExpectInvalid(Image(1, Dict(">f4", "(1,)")), "big-endian");
  ExpectInvalid(Image(1, Dict("|O", "(1,)")), "object");
  ExpectInvalid(Image(1, "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (1,), }"),
                "structured");
  ExpectInvalid(Image(1, Dict("<u4", "(1,)")), "'<u4'");
  std::string truncated = Image(1, Dict("<f4", "(1,)"));
  truncated.resize(truncated.size() - 5);
  ExpectInvalid(truncated, "past the end");
  ExpectInvalid(Image(1, Dict("<f4", "(-1, 2)")), "'-1'");
  ExpectInvalid(Image(1, Dict("<f4", "(2, x)")), "'x'");
  ExpectInvalid(Image(1, "{'fortran_order': False, 'shape': (1,), }"), "'descr'");
  ExpectInvalid(Image(1, "{'descr': '<f4', 'shape': (1,), }"), "'fortran_order'");
  ExpectInvalid(Image(1, "{'descr': '<f4', 'fortran_order': False, }"), "'shape'");
}

// written by numpy.save (numpy 1.24): np.arange(6, dtype='<f4').reshape(2, 3) * 0.5
constexpr char kNumpyF4[] =
    "\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }      "
    "                                                    \x0a\x00\x00\x00\x00\x00\x00\x00?"
    "\x00\x00\x80?\x00\x00\xc0?\x00\x00\x00@\x00\x00 @";
// written by numpy.save: np.asfortranarray(np.arange(6, dtype='<i2').reshape(2, 3) - 2)
constexpr char kNumpyI2Fortran[] =
    "\x93NUMPY\x01\x00v\x00{'descr': '<i2', 'fortran_order': True, 'shape': (2, 3), }       "
    "                                                    \x0a\xfe\xff\x01\x00\xff\xff\x02"
    "\x00\x00\x00\x03\x00";
// written by numpy.save: np.array([True, False, True])
constexpr char kNumpyBool[] =
    "\x93NUMPY\x01\x00v\x00{'descr': '|b1', 'fortran_order': False, 'shape': (3,), }        "
    "                                                    \x0a\x01\x00\x01";
// written by numpy.save: np.array(2.5)
constexpr char kNumpyScalar[] =
    "\x93NUMPY\x01\x00v\x00{'descr': '<f8', 'fortran_order': False, 'shape': (), }          "
    "                                                    \x0a\x00\x00\x00\x00\x00\x00\x04@";

TEST(NpyTest, ParsesFilesWrittenByNumpy) {
  struct Case {
    std::string file;
    DType dtype;
    Dims shape;
    Dims strides;
  };
  const Case cases[] = {
      {Bytes(kNumpyF4), DType::kFloat32, {2, 3}, {3, 1}},
      {Bytes(kNumpyI2Fortran), DType::kInt16, {2, 3}, {1, 2}},
      {Bytes(kNumpyBool), DType::kBool, {3}, {1}},
      {Bytes(kNumpyScalar), DType::kFloat64, {}, {}},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(DTypeName(c.dtype));
    const absl::StatusOr<NpyHeader> h = ParseNpyHeader(c.file);
    ASSERT_TRUE(h.ok()) << h.status();
    EXPECT_EQ(h->dtype, c.dtype);
    EXPECT_EQ(h->layout.shape, c.shape);
    EXPECT_EQ(h->layout.strides, c.strides);
    EXPECT_EQ(h->data_offset, 128u);
    EXPECT_EQ(h->data_offset + h->data_bytes, c.file.size());
  }
  // Fortran order: element [0, 1] is the third int16 in the file.
  const std::string f = Bytes(kNumpyI2Fortran);
  EXPECT_EQ(static_cast<unsigned char>(f[128 + 2 * 2]), 0xffu);  // a[0, 1] == -1
  // Re-encoding the row-major array gives numpy's bytes exactly.
  const absl::StatusOr<std::string> again =
      EncodeNpy(DType::kFloat32, {2, 3}, Bytes(kNumpyF4).substr(128));
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(*again, Bytes(kNumpyF4));
}

}  // namespace
}  // namespace asarray
