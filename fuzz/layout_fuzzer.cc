// Layout and bounds arithmetic: any shape, strides, offset and dtype. When
// the checks accept a view of a storage, every element the view reaches must
// lie inside it: the cast and the row-major copy read a heap buffer of
// exactly the accepted size, so AddressSanitizer sees any byte outside.
#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "core/cast.h"
#include "core/dtype.h"
#include "core/layout.h"
#include "fuzz/fuzz_check.h"
#include "server/converter.h"

namespace asarray {
namespace {

// Large enough for every shape the checks treat differently; small enough
// that an input runs in well under a millisecond.
constexpr int64_t kMaxBytes = 64 << 10;

DType PickDType(FuzzedDataProvider& in) {
  return static_cast<DType>(in.ConsumeIntegralInRange<int>(0, kNumDTypes - 1));
}

int64_t Dim(FuzzedDataProvider& in) {
  // Mostly small values, sometimes anything at all.
  return in.ConsumeBool() ? in.ConsumeIntegralInRange<int64_t>(-3, 9)
                          : in.ConsumeIntegral<int64_t>();
}

}  // namespace
}  // namespace asarray

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace asarray;
  using fuzz::Require;
  FuzzedDataProvider in(data, size);
  const DType src_dtype = PickDType(in);
  const DType dst_dtype = PickDType(in);
  Layout layout;
  const int rank = in.ConsumeIntegralInRange<int>(0, in.ConsumeBool() ? 70 : 5);
  for (int d = 0; d < rank; ++d) layout.shape.push_back(Dim(in));
  const int strides = in.ConsumeBool() ? rank : in.ConsumeIntegralInRange<int>(0, 6);
  for (int d = 0; d < strides; ++d) layout.strides.push_back(Dim(in));
  layout.offset = Dim(in);
  const size_t item = ItemSize(src_dtype);

  const absl::Status valid = ValidateLayout(layout);
  fuzz::RequireExplained(valid);
  const absl::StatusOr<ByteRange> range = ComputeByteRange(layout, item);
  fuzz::RequireExplained(range.status());
  // A valid layout may still span more bytes than int64 counts; never the reverse.
  Require(valid.ok() || !range.ok(), "a byte range for an invalid layout");
  if (!range.ok()) return 0;
  const absl::StatusOr<uint64_t> required = server::RequiredStorageBytes(layout, src_dtype);
  fuzz::RequireExplained(required.status());
  Require(required.ok() == (range->begin >= 0), "RequiredStorageBytes misjudges the start");
  Require(!required.ok() || static_cast<int64_t>(*required) == range->end,
          "RequiredStorageBytes differs from the byte range");
  const int64_t numel = NumElements(layout.shape).value();
  int64_t span;
  const bool span_fits = !__builtin_sub_overflow(range->end, range->begin, &span);
  Require(numel == 0 || !span_fits || span >= static_cast<int64_t>(item),
          "a non-empty view that touches less than an element");
  Require(numel != 0 || (range->begin == 0 && range->end == 0), "an empty view touches bytes");
  // The storage runs from element 0 (or the first byte before it that the
  // view reaches) to the range's end: exactly, so one more byte is an overrun.
  // Broadcast views may have far more elements than bytes: bound both.
  if (range->begin < -kMaxBytes || range->end > kMaxBytes || numel > kMaxBytes) return 0;
  const int64_t first = std::min<int64_t>(range->begin, 0);
  std::vector<unsigned char> storage(static_cast<size_t>(range->end - first));
  for (size_t i = 0; i < storage.size(); ++i) storage[i] = static_cast<unsigned char>(i * 31);
  unsigned char* base = storage.empty() ? nullptr : storage.data() - first;
  if (range->begin >= 0) {
    Require(CheckFitsStorage(layout, item, range->end).ok(), "the view does not fit its range");
    if (range->end > 0) {
      Require(!CheckFitsStorage(layout, item, range->end - 1).ok(),
              "a view fits a storage one byte short of its range");
    }
  }
  const ConstStridedView src{base, src_dtype, layout};

  // A row-major copy of an arbitrary sub-range.
  const int64_t begin = numel == 0 ? 0 : in.ConsumeIntegralInRange<int64_t>(0, numel);
  const int64_t count =
      numel - begin == 0 ? 0 : in.ConsumeIntegralInRange<int64_t>(0, numel - begin);
  std::vector<unsigned char> rows(static_cast<size_t>(count) * item);
  fuzz::RequireExplained(CopyRowMajorRange(src, begin, count, rows.data()));

  // A cast into a fresh, dense destination of another dtype.
  const Layout dense{layout.shape, ContiguousStrides(layout.shape), 0};
  std::vector<unsigned char> out(static_cast<size_t>(numel) * ItemSize(dst_dtype));
  const absl::Status cast = CastCopy(src, {out.empty() ? nullptr : out.data(), dst_dtype, dense});
  fuzz::RequireExplained(cast);
  Require(cast.ok(), "a cast of a valid view into a dense destination failed");
  return 0;
}
