#include "client/npy.h"

#include <cstdint>
#include <cstring>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/status_macros.h"

namespace asarray {
namespace {

constexpr absl::string_view kMagic("\x93NUMPY", 6);

struct Descr {
  absl::string_view text;
  DType dtype;
};
constexpr Descr kDescrs[] = {
    {"|b1", DType::kBool},    {"|u1", DType::kUInt8},     {"|i1", DType::kInt8},
    {"<i2", DType::kInt16},   {"<i4", DType::kInt32},     {"<i8", DType::kInt64},
    {"<f2", DType::kFloat16}, {"<u2", DType::kBFloat16},  {"<f4", DType::kFloat32},
    {"<f8", DType::kFloat64}, {"<c8", DType::kComplex64}, {"<c16", DType::kComplex128},
};

absl::Status Bad(absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("not a supported .npy file: ", why));
}

// The value of 'key' in the header dict, up to the next top-level ',' or '}'.
absl::StatusOr<absl::string_view> DictValue(absl::string_view dict, absl::string_view key) {
  const std::string quoted[] = {absl::StrCat("'", key, "'"), absl::StrCat("\"", key, "\"")};
  size_t at = absl::string_view::npos;
  for (const std::string& q : quoted) {
    at = dict.find(q);
    if (at != absl::string_view::npos) {
      at += q.size();
      break;
    }
  }
  if (at == absl::string_view::npos) return Bad(absl::StrCat("header has no '", key, "'"));
  absl::string_view rest = absl::StripLeadingAsciiWhitespace(dict.substr(at));
  if (!absl::ConsumePrefix(&rest, ":")) return Bad(absl::StrCat("no ':' after '", key, "'"));
  rest = absl::StripLeadingAsciiWhitespace(rest);
  int depth = 0;
  size_t end = 0;
  for (; end < rest.size(); ++end) {
    const char c = rest[end];
    if (c == '(' || c == '[') ++depth;
    if (c == ')' || c == ']') --depth;
    if (depth == 0 && (c == ',' || c == '}')) break;
  }
  return absl::StripTrailingAsciiWhitespace(rest.substr(0, end));
}

}  // namespace

absl::StatusOr<NpyHeader> ParseNpyHeader(absl::string_view file) {
  if (file.size() < 10 || file.substr(0, 6) != kMagic) return Bad("no \\x93NUMPY magic");
  const int major = static_cast<unsigned char>(file[6]);
  size_t header_len;
  size_t prefix;
  if (major == 1) {
    header_len = static_cast<unsigned char>(file[8]) | static_cast<unsigned char>(file[9]) << 8;
    prefix = 10;
  } else if (major == 2 || major == 3) {
    if (file.size() < 12) return Bad("truncated header length");
    uint32_t len;
    std::memcpy(&len, file.data() + 8, 4);  // little-endian, as x86
    header_len = len;
    prefix = 12;
  } else {
    return Bad(absl::StrCat("version ", major, " (only 1.0, 2.0 and 3.0 are known)"));
  }
  if (header_len > file.size() - prefix) return Bad("header runs past the end of the file");
  const absl::string_view dict = file.substr(prefix, header_len);

  NpyHeader header;
  ASARRAY_ASSIGN_OR_RETURN(absl::string_view descr, DictValue(dict, "descr"));
  if (descr.size() < 2 || (descr.front() != '\'' && descr.front() != '"') ||
      descr.back() != descr.front()) {
    return Bad(absl::StrCat("descr ", descr,
                            " is not a simple type string (structured or "
                            "object arrays are not supported)"));
  }
  descr = descr.substr(1, descr.size() - 2);
  if (!descr.empty() && descr[0] == '>') {
    return Bad(absl::StrCat("big-endian data ('", descr, "'); save it little-endian"));
  }
  if (descr == "|O" || descr == "O") return Bad("object arrays hold Python objects, not numbers");
  std::string normalized(descr);
  if (normalized.size() >= 2 && normalized[0] == '=') normalized[0] = '<';
  if (normalized == "<b1" || normalized == "<u1" || normalized == "<i1") normalized[0] = '|';
  bool known = false;
  for (const Descr& d : kDescrs) {
    if (normalized == d.text) {
      header.dtype = d.dtype;
      known = true;
    }
  }
  if (!known) return Bad(absl::StrCat("dtype '", descr, "' has no torch counterpart"));

  ASARRAY_ASSIGN_OR_RETURN(absl::string_view fortran, DictValue(dict, "fortran_order"));
  if (fortran != "True" && fortran != "False") return Bad("fortran_order is not True or False");

  ASARRAY_ASSIGN_OR_RETURN(absl::string_view shape_text, DictValue(dict, "shape"));
  if (!absl::ConsumePrefix(&shape_text, "(") || !absl::ConsumeSuffix(&shape_text, ")")) {
    return Bad("shape is not a tuple");
  }
  std::vector<absl::string_view> parts = absl::StrSplit(shape_text, ',');
  // "(5,)" ends in an empty part; "()" is one empty part. No other may be empty.
  if (!parts.empty() && absl::StripAsciiWhitespace(parts.back()).empty()) parts.pop_back();
  for (absl::string_view part : parts) {
    part = absl::StripAsciiWhitespace(part);
    int64_t size;
    if (!absl::SimpleAtoi(part, &size) || size < 0) {
      return Bad(absl::StrCat("shape entry '", part, "' is not a size"));
    }
    header.layout.shape.push_back(size);
    if (header.layout.shape.size() > static_cast<size_t>(kMaxRank)) return Bad("too many dims");
  }
  if (fortran == "True") {
    Dims reversed(header.layout.shape.rbegin(), header.layout.shape.rend());
    Dims strides = ContiguousStrides(reversed);
    header.layout.strides.assign(strides.rbegin(), strides.rend());
  } else {
    header.layout.strides = ContiguousStrides(header.layout.shape);
  }
  absl::StatusOr<ViewSizes> sizes = ComputeViewSizes(header.layout, ItemSize(header.dtype));
  if (!sizes.ok()) return Bad(sizes.status().message());
  header.data_offset = prefix + header_len;
  header.data_bytes = static_cast<size_t>(sizes->nbytes);
  return header;
}

absl::StatusOr<std::string> EncodeNpy(DType dtype, const Dims& shape, absl::string_view data) {
  absl::string_view descr;
  for (const Descr& d : kDescrs) {
    if (d.dtype == dtype) descr = d.text;
  }
  std::string shape_text = absl::StrJoin(shape, ", ");
  if (shape.size() == 1) shape_text += ",";
  std::string dict = absl::StrCat("{'descr': '", descr, "', 'fortran_order': False, 'shape': (",
                                  shape_text, "), }");
  // Pad with spaces so that the data starts on a 64-byte boundary.
  const size_t unpadded = 10 + dict.size() + 1;
  dict.append((64 - unpadded % 64) % 64, ' ');
  dict.push_back('\n');
  if (dict.size() > 65535) return absl::InvalidArgumentError("header too long for .npy 1.0");
  std::string out(kMagic);
  out.push_back(1);
  out.push_back(0);
  out.push_back(static_cast<char>(dict.size() & 0xFF));
  out.push_back(static_cast<char>(dict.size() >> 8));
  out += dict;
  out.append(data.data(), data.size());
  return out;
}

}  // namespace asarray
