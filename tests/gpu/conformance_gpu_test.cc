// Runs every conformance case with device=cuda through asarrayd in another
// process, and checks each result twice: against torch's expectation (the
// case), and against the same conversion on the CPU, bit for bit.
//   conformance_gpu_test CASES.jsonl
// Array inputs go in a shared-memory region. Each case takes up to three
// routes:
//   host    the input straight onto cuda:0, cast on the way (every case);
//   device  the input onto cuda:0 as it is, then cast there (a held tensor);
//   back    that device tensor back to the CPU, cast on the way.
// Results on the device are read through their CUDA IPC handles, opened in
// this process. A route that moves to or from the device always copies:
// copy=False must fail with FAILED_PRECONDITION, nothing shares memory, and
// the result has the strides of a copy. Skips without a CUDA device.
#include <cstdio>
#include <cstring>
#include <map>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/conformance/case_loader.h"
#include "tests/conformance/runner.h"
#include "tests/gpu/child_server.h"
#include "tests/server/test_server.h"

namespace asarray::testing {
namespace {

std::map<std::string, std::pair<int, int>> g_routes;  // route -> (passed, failed)

constexpr Device kCuda{Device::Type::kCUDA, 0};

// The case as a move to or from the device must answer it.
ConformanceCase AsDeviceMove(const ConformanceCase& c) {
  ConformanceCase moved = c;
  if (!moved.expect_error && c.options.copy == false) {
    moved.expect_error = absl::StatusCode::kFailedPrecondition;
  }
  moved.expect_shares_memory = false;
  moved.expect_strides = CopyStrides(c.expect_shape, c.expect_strides);
  return moved;
}

class Runner {
 public:
  explicit Runner(Client* client) : client_(client) {}

  Outcome Convert(const ConformanceCase& c, const ConvertOptions& options) {
    if (!c.is_array) return OutcomeOf(client_->ConvertLiteral(c.literal, options));
    return OutcomeOf(ConvertCaseInRegion(*client_, c, options));
  }

  void Check(const std::string& route, const ConformanceCase& c, const ConformanceCase& expect,
             const Outcome& got, const Outcome& cpu) {
    std::string diff = Judge(expect, got, /*inline_transport=*/false);
    if (diff.empty() && got.status.ok() && got.data != cpu.data) {
      diff = absl::StrCat(" bytes differ from the CPU's (", got.data.size(), " vs ",
                          cpu.data.size(), ")");
    }
    ++(diff.empty() ? g_routes[route].first : g_routes[route].second);
    RecordCase(absl::StrCat(c.id, " (", route, ")"), diff);
  }

  void Run(const ConformanceCase& c) {
    const Outcome cpu = Convert(c, c.options);
    const ConformanceCase moved = AsDeviceMove(c);
    ConvertOptions on_cuda = c.options;
    on_cuda.device = kCuda;
    Check("host", c, moved, Convert(c, on_cuda), cpu);
    if (!c.is_array || c.expect_error || c.options.copy == false) return;

    // The input on the device as it is, then the case's conversion from there.
    ConvertOptions as_is;
    as_is.device = kCuda;
    as_is.copy = true;
    absl::StatusOr<MappedTensor> held = ConvertCaseInRegion(*client_, c, as_is);
    if (!held.ok()) {
      RecordCase(c.id,
                 absl::StrCat(" cannot put the input on the device: ", held.status().ToString()));
      return;
    }
    ConformanceCase from_held = moved;
    from_held.expect_shares_memory.reset();  // aliasing the held tensor is right
    Check("device", c, from_held, OutcomeOf(client_->ConvertTensor(held->id(), on_cuda)), cpu);
    ConvertOptions back = c.options;
    back.device = Device{};
    Check("back", c, from_held, OutcomeOf(client_->ConvertTensor(held->id(), back)), cpu);
  }

 private:
  Client* const client_;
};

TEST(ConformanceGpu, EveryCaseOnTheDevice) {
  ASARRAY_REQUIRE_GPU();
  absl::StatusOr<std::vector<ConformanceCase>> cases = LoadRunnerCases();
  ASSERT_TRUE(cases.ok()) << cases.status();
  std::unique_ptr<ChildServer> server = ChildServer::Start();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = server->NewClient();
  Runner runner(client.get());
  for (const ConformanceCase& c : *cases) runner.Run(c);
  absl::StatusOr<v1::StatsResponse> stats = client->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->tensors(), 0u);  // every handle was released
  EXPECT_EQ(stats->cuda_allocations(), 0u);
  for (const auto& [route, counts] : g_routes) {
    std::printf("route %-6s %d passed, %d failed\n", route.c_str(), counts.first, counts.second);
  }
}

}  // namespace

const char kRunnerUsage[] = "CASES.jsonl";

absl::StatusOr<std::string> ConfigureRunner(const std::vector<std::string>& args) {
  if (!args.empty()) return absl::InvalidArgumentError("no argument follows the cases file");
  return "device cuda:0";
}

}  // namespace asarray::testing
