// Runs every conformance case through the core library alone: array inputs
// as aliasable host memory, nested inputs as literals. Usage:
//   conformance_core_test CASES.jsonl   ($ASARRAY_CONFORMANCE_CASES overrides)
#include <string>
#include <vector>

#include "core/cast.h"
#include "core/plan.h"
#include "gtest/gtest.h"
#include "tests/conformance/case_loader.h"
#include "tests/conformance/runner.h"

namespace asarray::testing {
namespace {

// The outcome a plan describes, before any data.
Outcome FromPlan(const Plan& plan) {
  Outcome out;
  out.dtype = plan.dtype;
  out.shape = plan.layout.shape;
  out.strides = plan.layout.strides;
  out.requires_grad = plan.requires_grad;
  out.shares_memory = plan.shares_memory;
  out.warnings = plan.warnings;
  return out;
}

Outcome RunArray(const ConformanceCase& c) {
  Outcome out;
  Source source{SourceKind::kHostMemory, c.dtype, c.layout, Device{}};
  out.status = CheckFitsStorage(c.layout, ItemSize(c.dtype), c.storage.size());
  if (!out.status.ok()) return out;
  absl::StatusOr<Plan> plan = PlanConversion(source, c.options);
  if (!plan.ok()) {
    out.status = plan.status();
    return out;
  }
  out = FromPlan(*plan);
  if (plan->action == Plan::Action::kAlias) {
    out.data = GatherRowMajor(c.storage.data(), plan->dtype, plan->layout);
    return out;
  }
  absl::StatusOr<ByteRange> range = ComputeByteRange(plan->layout, ItemSize(plan->dtype));
  if (!range.ok()) {
    out.status = range.status();
    return out;
  }
  std::vector<unsigned char> result(range->end);
  out.status =
      CastCopy({c.storage.data(), c.dtype, c.layout}, {result.data(), plan->dtype, plan->layout});
  out.data = GatherRowMajor(result.data(), plan->dtype, plan->layout);
  return out;
}

Outcome RunNested(const ConformanceCase& c) {
  LiteralInfo info;
  absl::StatusOr<Plan> plan = PlanLiteral(c.literal, c.options, &info);
  if (!plan.ok()) {
    Outcome out;
    out.status = plan.status();
    return out;
  }
  Outcome out = FromPlan(*plan);
  out.data.resize(NumElements(info.shape).value() * ItemSize(info.dtype));
  out.status = StoreLiteral(c.literal, info, out.data.data());
  return out;
}

Outcome RunCase(const ConformanceCase& c) { return c.is_array ? RunArray(c) : RunNested(c); }

TEST(ConformanceCore, EveryCase) {
  absl::StatusOr<std::vector<ConformanceCase>> cases = LoadRunnerCases();
  ASSERT_TRUE(cases.ok()) << cases.status();
  for (const ConformanceCase& c : *cases) {
    RecordCase(c.id, Judge(c, RunCase(c), /*inline_transport=*/false));
  }
}

}  // namespace

const char kRunnerUsage[] = "CASES.jsonl";

absl::StatusOr<std::string> ConfigureRunner(const std::vector<std::string>& args) {
  if (!args.empty()) return absl::InvalidArgumentError("no argument follows the cases file");
  return "";
}

}  // namespace asarray::testing
