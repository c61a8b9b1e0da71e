// Test support: an in-process asarrayd on a private Unix socket, with its own
// shared-memory prefix and a short lease, that checks on teardown that it
// left no segment behind.
#ifndef ASARRAY_TESTS_SERVER_TEST_SERVER_H_
#define ASARRAY_TESTS_SERVER_TEST_SERVER_H_

#include <memory>
#include <string>

#include "client/client.h"
#include "server/server.h"
#include "tests/conformance/case_loader.h"

namespace asarray::testing {

class TestServer {
 public:
  // `adjust` may change the options before the server starts.
  static std::unique_ptr<TestServer> Start(
      const std::function<void(server::ServerOptions&)>& adjust = {});
  // Shuts the server down and fails the running test if a segment with this
  // server's prefix is still in /dev/shm.
  ~TestServer();

  const std::string& address() const { return address_; }
  const std::string& prefix() const { return prefix_; }
  server::Server& server() { return *server_; }
  std::unique_ptr<Client> NewClient() const;

  // Entries in /dev/shm named with this server's prefix.
  int SegmentsInDevShm() const;
  // Stops the server now (as SIGTERM would) and checks the segments.
  void Stop();

 private:
  TestServer() = default;
  std::string dir_;
  std::string address_;
  std::string prefix_;
  std::unique_ptr<server::Server> server_;
};

// Entries in /dev/shm whose names start with `prefix`.
int CountSegments(const std::string& prefix);

// Converts a case's array input placed in a fresh shared-memory region of
// this process, whose name goes to *region_name when given. The region is
// unlinked on return; mappings of it stay valid.
absl::StatusOr<MappedTensor> ConvertCaseInRegion(Client& client, const ConformanceCase& c,
                                                 const ConvertOptions& options,
                                                 std::string* region_name = nullptr);

// What a conversion produced, read through its mapped handle (shared memory,
// or a CUDA allocation opened by IPC).
Outcome OutcomeOf(const absl::StatusOr<MappedTensor>& mapped);

}  // namespace asarray::testing

#endif  // ASARRAY_TESTS_SERVER_TEST_SERVER_H_
