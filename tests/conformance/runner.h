// The frame every conformance runner shares: one main (runner_main.cc), the
// cases it was given, and the count of cases judged. A runner is run as
//   RUNNER CASES.jsonl [ARGS...]     ($ASARRAY_CONFORMANCE_CASES overrides the file)
// and ends with the line "conformance: N passed, M failed".
#ifndef ASARRAY_TESTS_CONFORMANCE_RUNNER_H_
#define ASARRAY_TESTS_CONFORMANCE_RUNNER_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "tests/conformance/case_loader.h"

namespace asarray::testing {

// Each runner defines these two. kRunnerUsage is what follows the program's
// name in its usage line. ConfigureRunner takes ARGS; it returns what the
// "cases:" line names after the file (e.g. the transport), or an error
// that is printed with the usage line (the runner then exits 2).
extern const char kRunnerUsage[];
absl::StatusOr<std::string> ConfigureRunner(const std::vector<std::string>& args);

// The cases of the file the runner was given; an error when it does not
// load or holds none.
absl::StatusOr<std::vector<ConformanceCase>> LoadRunnerCases();

// Counts one judged case: an empty `diff` passes, any other fails the
// current test, naming `what` (the case, and where it ran).
void RecordCase(const std::string& what, const std::string& diff);

}  // namespace asarray::testing

#endif  // ASARRAY_TESTS_CONFORMANCE_RUNNER_H_
