// Quoting request values in status messages. A message names what is wrong
// and must stay small: gRPC carries it in the trailing metadata, which stock
// clients cap at 8 KiB. So a quoted value is cut at kMaxQuotedBytes, and a
// cut one says how long it was.
#ifndef ASARRAY_CORE_QUOTE_H_
#define ASARRAY_CORE_QUOTE_H_

#include <cstddef>
#include <string>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace asarray {

inline constexpr size_t kMaxQuotedBytes = 128;

// The value with C escapes, or its first 128 bytes, "...", and its length.
inline std::string Cut(absl::string_view value) {
  if (value.size() <= kMaxQuotedBytes) return absl::CHexEscape(value);
  return absl::StrCat(absl::CHexEscape(value.substr(0, kMaxQuotedBytes)), "... (", value.size(),
                      " bytes)");
}

// The value as it reads, printable ASCII kept (quotes too), a backslash
// doubled and any other byte as \xNN; cut as Cut() cuts. For names that a
// message gives in parentheses, such as a batch item's key path.
inline std::string Printable(absl::string_view value) {
  const absl::string_view head = value.substr(0, kMaxQuotedBytes);
  std::string out;
  out.reserve(head.size());
  for (const char c : head) {
    const auto byte = static_cast<unsigned char>(c);
    if (c == '\\') {
      out += "\\\\";
    } else if (byte >= 0x20 && byte < 0x7f) {
      out += c;
    } else {
      static const char kHex[] = "0123456789abcdef";
      out += "\\x";
      out += kHex[byte >> 4];
      out += kHex[byte & 15];
    }
  }
  if (value.size() > kMaxQuotedBytes) absl::StrAppend(&out, "... (", value.size(), " bytes)");
  return out;
}

// 'value' with C escapes, or 'first 128 bytes...' (N bytes) when longer.
inline std::string Quote(absl::string_view value) {
  if (value.size() <= kMaxQuotedBytes) return absl::StrCat("'", absl::CHexEscape(value), "'");
  return absl::StrCat("'", absl::CHexEscape(value.substr(0, kMaxQuotedBytes)), "...' (",
                      value.size(), " bytes)");
}

}  // namespace asarray

#endif  // ASARRAY_CORE_QUOTE_H_
