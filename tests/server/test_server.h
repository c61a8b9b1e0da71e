// Test support: an in-process asarrayd on a private Unix socket, with its own
// shared-memory prefix and a short lease, that checks on teardown that it
// left no segment behind.
#ifndef ASARRAY_TESTS_SERVER_TEST_SERVER_H_
#define ASARRAY_TESTS_SERVER_TEST_SERVER_H_

#include <fcntl.h>
#include <sys/types.h>

#include <chrono>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/types/span.h"
#include "client/client.h"
#include "server/server.h"
#include "tests/conformance/case_loader.h"
#include "wire/local_socket.h"

namespace asarray::testing {

// A connection to a test server's local transport (server/local_transport.h).
class LocalConnection {
 public:
  explicit LocalConnection(const std::string& grpc_address);
  LocalConnection(const LocalConnection&) = delete;
  LocalConnection& operator=(const LocalConnection&) = delete;
  bool connected() const { return socket_.valid(); }
  int socket() const { return socket_.get(); }

  // Sends one datagram with `fds` beside it; the answer's status, with its
  // response and the descriptors that came with it when OK.
  absl::Status CallRaw(const std::string& datagram, absl::Span<const int> fds = {},
                       v1::LocalResponse* response = nullptr,
                       std::vector<UniqueFd>* received = nullptr);
  absl::Status Call(const v1::LocalRequest& request, absl::Span<const int> fds = {},
                    v1::LocalResponse* response = nullptr,
                    std::vector<UniqueFd>* received = nullptr) {
    return CallRaw(request.SerializeAsString(), fds, response, received);
  }
  absl::Status Convert(const v1::ConvertRequest& request, absl::Span<const int> fds = {},
                       v1::ConvertResponse* response = nullptr,
                       std::vector<UniqueFd>* received = nullptr);
  absl::Status Release(const v1::ReleaseRequest& request);

 private:
  UniqueFd socket_;
};

// A memfd of `size` bytes holding `bytes` (zero-filled past them), sealed
// with `seals` (F_SEAL_SHRINK | F_SEAL_GROW: what the server asks for).
UniqueFd SealedMemfd(size_t size, const std::string& bytes = "",
                     int seals = F_SEAL_SHRINK | F_SEAL_GROW);

// The descriptors open in process `pid` (its /proc/PID/fd entries).
int CountFds(pid_t pid);
// How many descriptors of this process are memfds (gRPC's threads open and
// close others meanwhile).
int CountMemfds();

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
  std::unique_ptr<Client> NewClient(const ClientOptions& options = {}) const;
  // A client that makes every call over gRPC: named segments, TTL leases.
  std::unique_ptr<Client> NewGrpcClient() const { return NewClient(GrpcOnly()); }
  static ClientOptions GrpcOnly() {
    ClientOptions options;
    options.local_transport = false;
    return options;
  }

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
Outcome OutcomeOf(const MappedTensor& mapped);

// A fresh directory under /tmp, removed with everything in it on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A child process whose standard output the test reads line by line. The
// destructor kills it (SIGKILL) if it still runs.
class Child {
 public:
  // argv[0] is looked up in PATH.
  explicit Child(const std::vector<std::string>& argv);
  ~Child();
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;

  pid_t pid() const { return pid_; }
  // The next line without its newline; "" at the end of the output.
  std::string ReadLine();
  // Sends `signal` and reaps the child; returns its wait status.
  int Kill(int signal);

 private:
  pid_t pid_ = -1;
  FILE* out_ = nullptr;
};

// Runs asarrayd (`binary`) listening on `socket` with `prefix` and `flags`,
// its command line after `wrapper` (a command that execs it), and waits until
// it answers a health check. Null (and a test failure) if it never does.
std::unique_ptr<Child> StartServerProcess(const std::string& binary, const std::string& socket,
                                          const std::string& prefix,
                                          const std::vector<std::string>& flags,
                                          std::vector<std::string> wrapper = {});

// Polls `done` until it holds or 10 s pass; never a fixed sleep.
template <typename F>
bool Eventually(F&& done) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (std::chrono::steady_clock::now() < deadline) {
    if (done()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  return done();
}

}  // namespace asarray::testing

#endif  // ASARRAY_TESTS_SERVER_TEST_SERVER_H_
