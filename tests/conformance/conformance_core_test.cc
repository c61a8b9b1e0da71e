// Runs every conformance case through the core library alone: array inputs
// as aliasable host memory, nested inputs as literals. Usage:
//   conformance_core_test CASES.jsonl   ($ASARRAY_CONFORMANCE_CASES overrides)
#include <cstdio>
#include <string>
#include <vector>

#include "core/cast.h"
#include "core/plan.h"
#include "gtest/gtest.h"
#include "tests/conformance/case_loader.h"

namespace asarray::testing {
namespace {

std::string g_cases_path;
int g_passed = 0;
int g_failed = 0;

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
  out.status = CastCopy({c.storage.data(), c.dtype, c.layout},
                        {result.data(), plan->dtype, plan->layout});
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
  absl::StatusOr<std::vector<ConformanceCase>> cases = LoadCases(g_cases_path);
  ASSERT_TRUE(cases.ok()) << cases.status();
  ASSERT_FALSE(cases->empty()) << g_cases_path << " holds no cases";
  for (const ConformanceCase& c : *cases) {
    const std::string diff = Judge(c, RunCase(c), /*inline_transport=*/false);
    if (diff.empty()) {
      ++g_passed;
    } else {
      ++g_failed;
      ADD_FAILURE() << c.id << ":" << diff;
    }
  }
}

}  // namespace
}  // namespace asarray::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s CASES.jsonl\n", argv[0]);
    return 2;
  }
  asarray::testing::g_cases_path = asarray::testing::CasesPath(argv[1]);
  std::printf("cases: %s\n", asarray::testing::g_cases_path.c_str());
  const int rc = RUN_ALL_TESTS();
  asarray::testing::PrintSummary(asarray::testing::g_passed, asarray::testing::g_failed);
  return rc;
}
