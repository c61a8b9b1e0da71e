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
  return absl::StrCat(absl::CHexEscape(value.substr(0, kMaxQuotedBytes)), "... (",
                      value.size(), " bytes)");
}

// 'value' with C escapes, or 'first 128 bytes...' (N bytes) when longer.
inline std::string Quote(absl::string_view value) {
  if (value.size() <= kMaxQuotedBytes) return absl::StrCat("'", absl::CHexEscape(value), "'");
  return absl::StrCat("'", absl::CHexEscape(value.substr(0, kMaxQuotedBytes)), "...' (",
                      value.size(), " bytes)");
}

}  // namespace asarray

#endif  // ASARRAY_CORE_QUOTE_H_
