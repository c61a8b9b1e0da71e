// Nested literals, from JSON text (the first byte's low bit clear) or from
// the wire's flattened nodes (set). Options come from the next two bytes.
// Whatever plans must store exactly numel elements, and a literal that
// stores must survive the trip through the wire encoding unchanged.
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "asarray/v1/asarray.pb.h"
#include "core/literal.h"
#include "core/literal_json.h"
#include "core/plan.h"
#include "fuzz/fuzz_check.h"
#include "wire/proto_convert.h"

namespace asarray {
namespace {

using fuzz::Require;

// The literal's bytes as the plan stores them; empty when it fails.
absl::StatusOr<std::string> Store(const Literal& literal, const ConvertOptions& options) {
  LiteralInfo info;
  absl::StatusOr<Plan> plan = PlanLiteral(literal, options, &info);
  fuzz::RequireExplained(plan.status());
  if (!plan.ok()) return plan.status();
  const int64_t numel = NumElements(plan->layout.shape).value();
  Require(plan->layout.strides == ContiguousStrides(plan->layout.shape), "a literal not dense");
  if (numel > (1 << 20)) return absl::ResourceExhaustedError("too big to fuzz");
  std::string bytes(static_cast<size_t>(numel) * ItemSize(plan->dtype), '\0');
  absl::Status stored = StoreLiteral(literal, info, bytes.data());
  fuzz::RequireExplained(stored);
  Require(stored.ok() == StoreLiteral(literal, info, nullptr).ok(),
          "validating and storing disagree");
  if (!stored.ok()) return stored;
  return bytes;
}

}  // namespace
}  // namespace asarray

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace asarray;
  if (size < 3) return 0;
  ConvertOptions options;
  if (data[1] % 13 != 0) options.dtype = static_cast<DType>(data[1] % 13 - 1);
  if (data[2] & 1) options.copy = (data[2] & 2) != 0;
  options.requires_grad = (data[2] & 4) != 0;
  absl::StatusOr<Literal> literal;
  if (data[0] & 1) {
    v1::Literal proto;
    if (!proto.ParseFromArray(data + 3, static_cast<int>(size - 3))) return 0;
    literal = LiteralFromProto(proto);
  } else {
    literal =
        ParseLiteralJson(absl::string_view(reinterpret_cast<const char*>(data + 3), size - 3));
  }
  fuzz::RequireExplained(literal.status());
  if (!literal.ok()) return 0;
  absl::StatusOr<std::string> bytes = Store(*literal, options);
  if (!bytes.ok()) return 0;
  v1::Literal wire;
  Require(LiteralToProto(*literal, &wire).ok(), "a stored literal cannot be encoded");
  absl::StatusOr<Literal> back = LiteralFromProto(wire);
  Require(back.ok(), "an encoded literal does not decode");
  absl::StatusOr<std::string> again = Store(*back, options);
  Require(again.ok() && *again == *bytes, "the wire encoding changed the literal's values");
  return 0;
}
