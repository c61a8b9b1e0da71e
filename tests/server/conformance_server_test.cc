// Runs every conformance case through a real server, over one transport:
//   conformance_server_test CASES.jsonl shm|inline|fd|remote
// "shm" places array inputs in a client shared-memory region and references
// it by name over gRPC; "inline" sends them as bytes over gRPC; "fd" places
// them in a memfd sent over the local transport, whose results are memfds
// too (and then nothing may appear in /dev/shm); "remote" is a client on a
// TCP address, which sends bytes and reads each result's bytes back (small
// inputs inline, big ones as streamed uploads), and keeps no handle. Each result is checked
// through its handle, mapped in this process. $ASARRAY_CONFORMANCE_CASES
// overrides the file.
#include <cstring>
#include <optional>
#include <string>

#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/conformance/case_loader.h"
#include "tests/conformance/runner.h"
#include "tests/server/test_server.h"

namespace asarray::testing {
namespace {

std::string g_transport;
bool g_inline = false;

// Runs one case; `extra` receives transport-specific problems.
Outcome RunCase(Client& client, const ConformanceCase& c, std::string* extra) {
  const ConvertOptions& options = c.options;
  if (!c.is_array) return OutcomeOf(client.ConvertLiteral(c.literal, options));
  if (g_inline) {
    absl::StatusOr<MappedTensor> result =
        client.ConvertInline(c.storage.data(), c.storage.size(), c.dtype, c.layout, options);
    if (g_transport == "remote" && result.ok() && !result->id().empty()) {
      *extra = " a remote result kept a handle";
    }
    return OutcomeOf(result);
  }
  if (g_transport == "fd") {
    absl::StatusOr<SharedRegion> region = SharedRegion::CreateMemfd(c.storage.size());
    if (!region.ok()) return OutcomeOf(region.status());
    if (!c.storage.empty()) std::memcpy(region->data(), c.storage.data(), c.storage.size());
    absl::StatusOr<MappedTensor> mapped =
        client.ConvertRegion(*region, 0, region->size(), c.dtype, c.layout, options);
    if (mapped.ok() && !mapped->handle().has_fd) *extra = " the handle's memory is no descriptor";
    if (mapped.ok() && mapped->handle().shares_memory != mapped->handle().fd_from_request) {
      *extra = " an alias that is not the request's own descriptor, or the reverse";
    }
    return OutcomeOf(mapped);
  }
  std::string region;
  absl::StatusOr<MappedTensor> mapped = ConvertCaseInRegion(client, c, options, &region);
  if (mapped.ok() && mapped->handle().shares_memory && mapped->handle().shm_name != region) {
    *extra = " handle claims to share memory but names " + mapped->handle().shm_name;
  }
  return OutcomeOf(mapped);
}

TEST(ConformanceServer, EveryCase) {
  absl::StatusOr<std::vector<ConformanceCase>> cases = LoadRunnerCases();
  ASSERT_TRUE(cases.ok()) << cases.status();
  const bool remote = g_transport == "remote";
  std::unique_ptr<TestServer> server = TestServer::Start([&](server::ServerOptions& o) {
    if (remote) o.listen.push_back("127.0.0.1:0");
  });
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client;
  if (remote) {
    absl::StatusOr<std::unique_ptr<Client>> connected =
        Client::Connect(server->server().addresses().back());
    ASSERT_TRUE(connected.ok()) << connected.status();
    client = *std::move(connected);
    ASSERT_TRUE(client->remote());
    // Inputs past 4 KiB stream as uploads, so both ways are exercised.
    client->set_upload_threshold(4096);
  } else {
    client = g_transport == "fd" ? server->NewClient() : server->NewGrpcClient();
  }
  ASSERT_NE(client, nullptr);
  ASSERT_EQ(client->has_local_transport(), g_transport == "fd");
  for (const ConformanceCase& c : *cases) {
    std::string extra;
    const std::string diff = Judge(c, RunCase(*client, c, &extra), g_inline) + extra;
    RecordCase(absl::StrCat(c.id, " (", g_transport, ")"), diff);
  }
  if (g_transport == "fd" || remote) {
    EXPECT_EQ(server->SegmentsInDevShm(), 0)
        << "the " << g_transport << " path named memory in /dev/shm";
    EXPECT_EQ(CountSegments(absl::StrCat("asarray-client-", getpid(), "-")), 0);
  }
  // Every handle was released as its MappedTensor died.
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
  server->Stop();
}

}  // namespace

const char kRunnerUsage[] = "CASES.jsonl shm|inline|fd|remote";

absl::StatusOr<std::string> ConfigureRunner(const std::vector<std::string>& args) {
  const std::string transport = args.size() == 1 ? args[0] : "";
  if (transport != "shm" && transport != "inline" && transport != "fd" && transport != "remote") {
    return absl::InvalidArgumentError("name one transport after the cases file");
  }
  g_transport = transport;
  g_inline = transport == "inline" || transport == "remote";
  return transport;
}

}  // namespace asarray::testing
