// The decision at the heart of torch.asarray: given where the data is and what
// the caller asked for, either alias the source, copy it (casting on the way)
// into new memory of a given layout, or fail. Pure functions; thread-safe.
#ifndef ASARRAY_CORE_PLAN_H_
#define ASARRAY_CORE_PLAN_H_

#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "core/dtype.h"
#include "core/layout.h"
#include "core/literal.h"

namespace asarray {

struct Device {
  enum class Type : uint8_t { kCPU, kCUDA };
  Type type = Type::kCPU;
  int index = 0;  // always 0 for the CPU; "cuda" alone means cuda:0

  friend bool operator==(const Device& a, const Device& b) {
    return a.type == b.type && a.index == b.index;
  }
  friend bool operator!=(const Device& a, const Device& b) { return !(a == b); }
};

// "cpu", "cuda" or "cuda:N"; INVALID_ARGUMENT otherwise.
absl::StatusOr<Device> ParseDevice(absl::string_view text);
std::string DeviceName(const Device& device);

enum class SourceKind : uint8_t {
  kHostMemory,    // a region the server maps: may be aliased
  kInline,        // bytes carried in the request: never the caller's memory
  kLiteral,       // a nested literal: always materialized
  kDeviceMemory,  // a device allocation the server can open: may be aliased
};

struct Source {
  SourceKind kind = SourceKind::kHostMemory;
  DType dtype = DType::kFloat32;
  Layout layout;
  Device device;
};

struct ConvertOptions {
  std::optional<DType> dtype;
  std::optional<Device> device;
  std::optional<bool> copy;  // None: copy only when needed; true: always; false: never
  bool requires_grad = false;
};

struct Plan {
  enum class Action : uint8_t {
    kAlias,  // the result is the source's memory, with the source's layout
    kCopy,   // the result is new memory with `layout`, filled by a cast
  };
  Action action = Action::kCopy;
  DType dtype = DType::kFloat32;
  Layout layout;  // for kCopy: offset 0 in the new memory
  Device device;
  bool requires_grad = false;
  // Whether the result shares the caller's memory (kAlias of host or device
  // memory; inline bytes and literals never do).
  bool shares_memory = false;
  std::vector<std::string> warnings;
};

// Plans the conversion of an array source (host, inline or device memory).
// FAILED_PRECONDITION when copy=false but a copy is needed (dtype cast, device
// move, inline data, negative strides), INVALID_ARGUMENT for a bad layout or
// requires_grad on a dtype that cannot require gradients.
absl::StatusOr<Plan> PlanConversion(const Source& source, const ConvertOptions& options);

// Plans a literal: checks copy=false first (as torch does), then analyzes the
// literal. The plan is always a contiguous copy; `info` receives what
// StoreLiteral needs to fill it.
absl::StatusOr<Plan> PlanLiteral(const Literal& literal, const ConvertOptions& options,
                                 LiteralInfo* info);

}  // namespace asarray

#endif  // ASARRAY_CORE_PLAN_H_
