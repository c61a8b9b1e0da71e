// .npy parsing: any file. A header that parses must describe a valid,
// dense layout of data_bytes; when those bytes follow, every element is
// read through the layout; and the array encodes and parses back the same.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "client/npy.h"
#include "core/cast.h"
#include "fuzz/fuzz_check.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace asarray;
  using fuzz::Require;
  const absl::string_view file(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<NpyHeader> header = ParseNpyHeader(file);
  fuzz::RequireExplained(header.status());
  if (!header.ok()) return 0;
  const size_t item = ItemSize(header->dtype);
  absl::StatusOr<int64_t> numel = NumElements(header->layout.shape);
  Require(numel.ok(), "a parsed header with an invalid shape");
  Require(header->data_bytes == static_cast<uint64_t>(*numel) * item,
          "data_bytes is not numel * item");
  Require(header->data_offset <= size, "the data starts past the file");
  Require(CheckFitsStorage(header->layout, item, static_cast<int64_t>(header->data_bytes)).ok(),
          "the layout reaches outside data_bytes");
  if (header->data_bytes > size - header->data_offset || *numel > (1 << 20)) return 0;
  // Only the file's own bytes: reading one past them would be an overrun.
  std::vector<unsigned char> body(data + header->data_offset,
                                  data + header->data_offset + header->data_bytes);
  std::string rows(header->data_bytes, '\0');
  Require(CopyRowMajorRange({body.empty() ? nullptr : body.data(), header->dtype, header->layout},
                            0, *numel, rows.data())
              .ok(),
          "a parsed array cannot be read");
  absl::StatusOr<std::string> encoded = EncodeNpy(header->dtype, header->layout.shape, rows);
  Require(encoded.ok(), "a parsed array cannot be encoded");
  absl::StatusOr<NpyHeader> again = ParseNpyHeader(*encoded);
  Require(
      again.ok() && again->dtype == header->dtype && again->layout.shape == header->layout.shape &&
          again->data_bytes == header->data_bytes && encoded->substr(again->data_offset) == rows,
      "an encoded array parses back differently");
  return 0;
}
