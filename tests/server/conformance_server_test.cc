// Runs every conformance case through a real server, over one transport:
//   conformance_server_test CASES.jsonl shm|inline
// "shm" places array inputs in a client shared-memory region and references
// it; "inline" sends them as bytes. Each result is checked through its handle,
// mapped in this process. $ASARRAY_CONFORMANCE_CASES overrides the file.
#include <cstdio>
#include <cstring>
#include <optional>
#include <string>

#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/conformance/case_loader.h"
#include "tests/server/test_server.h"

namespace asarray::testing {
namespace {

std::string g_cases_path;
bool g_inline = false;
int g_passed = 0;
int g_failed = 0;

// Runs one case; `extra` receives transport-specific problems.
Outcome RunCase(Client& client, const ConformanceCase& c, std::string* extra) {
  const ConvertOptions& options = c.options;
  if (!c.is_array) return OutcomeOf(client.ConvertLiteral(c.literal, options));
  if (g_inline) {
    return OutcomeOf(
        client.ConvertInline(c.storage.data(), c.storage.size(), c.dtype, c.layout, options));
  }
  std::string region;
  absl::StatusOr<MappedTensor> mapped = ConvertCaseInRegion(client, c, options, &region);
  if (mapped.ok() && mapped->handle().shares_memory && mapped->handle().shm_name != region) {
    *extra = " handle claims to share memory but names " + mapped->handle().shm_name;
  }
  return OutcomeOf(mapped);
}

TEST(ConformanceServer, EveryCase) {
  absl::StatusOr<std::vector<ConformanceCase>> cases = LoadCases(g_cases_path);
  ASSERT_TRUE(cases.ok()) << cases.status();
  ASSERT_FALSE(cases->empty());
  std::unique_ptr<TestServer> server = TestServer::Start();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = server->NewClient();
  ASSERT_NE(client, nullptr);
  for (const ConformanceCase& c : *cases) {
    std::string extra;
    const std::string diff = Judge(c, RunCase(*client, c, &extra), g_inline) + extra;
    if (diff.empty()) {
      ++g_passed;
    } else {
      ++g_failed;
      ADD_FAILURE() << c.id << " (" << (g_inline ? "inline" : "shm") << "):" << diff;
    }
  }
  // Every handle was released as its MappedTensor died.
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
  server->Stop();
}

}  // namespace
}  // namespace asarray::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (argc < 3 || (std::strcmp(argv[2], "shm") != 0 && std::strcmp(argv[2], "inline") != 0)) {
    std::fprintf(stderr, "usage: %s CASES.jsonl shm|inline\n", argv[0]);
    return 2;
  }
  asarray::testing::g_cases_path = asarray::testing::CasesPath(argv[1]);
  asarray::testing::g_inline = std::strcmp(argv[2], "inline") == 0;
  std::printf("cases: %s (%s)\n", asarray::testing::g_cases_path.c_str(), argv[2]);
  const int rc = RUN_ALL_TESTS();
  asarray::testing::PrintSummary(asarray::testing::g_passed, asarray::testing::g_failed);
  return rc;
}
