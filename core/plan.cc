#include "core/plan.h"

#include <cstdint>
#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "core/cast.h"
#include "core/quote.h"

namespace asarray {

absl::StatusOr<Device> ParseDevice(absl::string_view text) {
  if (text == "cpu") return Device{Device::Type::kCPU, 0};
  absl::string_view rest = text;
  if (absl::ConsumePrefix(&rest, "cuda")) {
    if (rest.empty()) return Device{Device::Type::kCUDA, 0};
    int index;
    if (absl::ConsumePrefix(&rest, ":") && !rest.empty() &&
        absl::ascii_isdigit(static_cast<unsigned char>(rest[0])) &&
        absl::SimpleAtoi(rest, &index) && index >= 0 && index < 1024) {
      return Device{Device::Type::kCUDA, index};
    }
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown device ", Quote(text), "; expected cpu, cuda or cuda:N"));
}

std::string DeviceName(const Device& device) {
  if (device.type == Device::Type::kCPU) return "cpu";
  return absl::StrCat("cuda:", device.index);
}

namespace {

absl::Status CheckRequiresGrad(DType dtype, bool requires_grad) {
  if (requires_grad && !CanRequireGrad(dtype)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "requires_grad=True needs a floating point or complex dtype, not ", DTypeName(dtype)));
  }
  return absl::OkStatus();
}

// Why a copy=False request must fail, or "" when the source can be aliased.
std::string WhyNotAliasable(const Source& source, DType dtype, const Device& device) {
  if (source.kind == SourceKind::kInline) {
    return "inline data arrived in the request and lives in another process, so it cannot "
           "be aliased; send a shared-memory reference instead";
  }
  if (source.device != device) {
    return absl::StrCat("the source is on ", DeviceName(source.device), " and moving it to ",
                        DeviceName(device), " needs a copy");
  }
  if (source.dtype != dtype) {
    return absl::StrCat("the source has dtype ", DTypeName(source.dtype), " and converting it to ",
                        DTypeName(dtype), " needs a copy");
  }
  if (HasNegativeStride(source.layout.strides)) {
    return absl::StrCat("the source has negative strides ", DimsToString(source.layout.strides),
                        ", which no tensor can alias; only a copy can represent it");
  }
  return "";
}

Layout CopyLayout(const Layout& source) {
  Dims magnitudes = source.strides;
  for (int64_t& s : magnitudes) s = s == INT64_MIN ? INT64_MAX : std::llabs(s);
  Layout out;
  out.shape = source.shape;
  out.strides = CopyStrides(source.shape, magnitudes);
  out.offset = 0;
  return out;
}

}  // namespace

absl::StatusOr<Plan> PlanConversion(const Source& source, const ConvertOptions& options) {
  if (source.kind == SourceKind::kLiteral) {
    return absl::InvalidArgumentError("a literal source is planned with PlanLiteral");
  }
  absl::Status valid = ValidateLayout(source.layout);
  if (!valid.ok()) return valid;

  Plan plan;
  plan.dtype = options.dtype.value_or(source.dtype);
  plan.device = options.device.value_or(source.device);
  plan.requires_grad = options.requires_grad;
  const bool needs_copy = source.dtype != plan.dtype || source.device != plan.device ||
                          HasNegativeStride(source.layout.strides);

  if (options.copy == false) {
    const std::string why = WhyNotAliasable(source, plan.dtype, plan.device);
    if (!why.empty()) {
      return absl::FailedPreconditionError(absl::StrCat("copy=False, but ", why));
    }
  }
  absl::Status grad = CheckRequiresGrad(plan.dtype, plan.requires_grad);
  if (!grad.ok()) return grad;

  if (options.copy == true || needs_copy) {
    plan.action = Plan::Action::kCopy;
    plan.layout = CopyLayout(source.layout);
    if (CastDiscardsImaginary(source.dtype, plan.dtype)) {
      plan.warnings.push_back(absl::StrCat("casting ", DTypeName(source.dtype), " to ",
                                           DTypeName(plan.dtype), " discards the imaginary part"));
    }
  } else {
    plan.action = Plan::Action::kAlias;
    plan.layout = source.layout;
    plan.shares_memory = source.kind != SourceKind::kInline;
  }
  return plan;
}

absl::StatusOr<Plan> PlanLiteral(const Literal& literal, const ConvertOptions& options,
                                 LiteralInfo* info) {
  if (options.copy == false) {
    return absl::FailedPreconditionError(
        "copy=False, but a nested literal has no memory to alias: it must be copied into a "
        "new tensor");
  }
  absl::StatusOr<LiteralInfo> analyzed = AnalyzeLiteral(literal, options.dtype);
  if (!analyzed.ok()) return analyzed.status();
  // Value errors come before the requires_grad check, as in torch.
  absl::Status values = StoreLiteral(literal, *analyzed, /*dst=*/nullptr);
  if (!values.ok()) return values;
  absl::Status grad = CheckRequiresGrad(analyzed->dtype, options.requires_grad);
  if (!grad.ok()) return grad;
  Plan plan;
  plan.action = Plan::Action::kCopy;
  plan.dtype = analyzed->dtype;
  plan.layout.shape = analyzed->shape;
  plan.layout.strides = ContiguousStrides(analyzed->shape);
  plan.device = options.device.value_or(Device{});
  plan.requires_grad = options.requires_grad;
  *info = *std::move(analyzed);
  return plan;
}

}  // namespace asarray
