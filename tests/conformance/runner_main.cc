// The main of every conformance runner; see runner.h.
#include <cstdio>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/conformance/case_loader.h"
#include "tests/conformance/runner.h"

namespace asarray::testing {
namespace {

std::string g_cases_path;
int g_passed = 0;
int g_failed = 0;

}  // namespace

absl::StatusOr<std::vector<ConformanceCase>> LoadRunnerCases() {
  absl::StatusOr<std::vector<ConformanceCase>> cases = LoadCases(g_cases_path);
  if (cases.ok() && cases->empty()) {
    return absl::InvalidArgumentError(absl::StrCat(g_cases_path, " holds no cases"));
  }
  return cases;
}

void RecordCase(const std::string& what, const std::string& diff) {
  if (diff.empty()) {
    ++g_passed;
    return;
  }
  ++g_failed;
  ADD_FAILURE() << what << ":" << diff;
}

}  // namespace asarray::testing

int main(int argc, char** argv) {
  namespace t = asarray::testing;
  ::testing::InitGoogleTest(&argc, argv);
  absl::StatusOr<std::string> label = absl::InvalidArgumentError("no cases file given");
  if (argc >= 2) label = t::ConfigureRunner(std::vector<std::string>(argv + 2, argv + argc));
  if (!label.ok()) {
    std::fprintf(stderr, "%s\nusage: %s %s\n", std::string(label.status().message()).c_str(),
                 argv[0], t::kRunnerUsage);
    return 2;
  }
  t::g_cases_path = t::CasesPath(argv[1]);
  std::printf("cases: %s%s\n", t::g_cases_path.c_str(),
              label->empty() ? "" : absl::StrCat(" (", *label, ")").c_str());
  const int rc = RUN_ALL_TESTS();
  if (t::g_passed + t::g_failed == 0) {
    std::printf("conformance: no case ran\n");
  } else {
    std::printf("conformance: %d passed, %d failed\n", t::g_passed, t::g_failed);
  }
  return rc;
}
