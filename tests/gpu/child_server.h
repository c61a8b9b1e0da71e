// Test support for CUDA IPC, which is only valid between processes: asarrayd
// started as a child process on a private socket, with its own shared-memory
// prefix. The destructor stops it with SIGTERM and fails the running test if
// it exited badly or left a segment behind.
#ifndef ASARRAY_TESTS_GPU_CHILD_SERVER_H_
#define ASARRAY_TESTS_GPU_CHILD_SERVER_H_

#include <memory>
#include <string>
#include <vector>

#include "client/client.h"
#include "server/cuda_backend.h"
#include "tests/server/test_server.h"

namespace asarray::testing {

class ChildServer {
 public:
  // Starts the asarrayd binary (ASARRAYD_PATH) with `flags` added, and waits
  // until it answers a health check (StartServerProcess). Null, with a test
  // failure, otherwise.
  static std::unique_ptr<ChildServer> Start(const std::vector<std::string>& flags = {});
  ~ChildServer();

  const std::string& address() const { return address_; }
  const std::string& prefix() const { return prefix_; }
  std::unique_ptr<Client> NewClient() const;

 private:
  ChildServer() = default;
  TempDir dir_;  // destroyed after process_, which stops the server
  std::string address_;
  std::string prefix_;
  std::unique_ptr<Child> process_;
};

// This process's view of the devices, created once.
const server::CudaBackend& LocalCuda();

}  // namespace asarray::testing

// Skips the test, saying why, when this host has no usable CUDA device.
#define ASARRAY_REQUIRE_GPU()                                                           \
  do {                                                                                  \
    if (::asarray::testing::LocalCuda().device_count() == 0) {                          \
      GTEST_SKIP() << "no CUDA device: " << ::asarray::testing::LocalCuda().Describe(); \
    }                                                                                   \
  } while (false)

#endif  // ASARRAY_TESTS_GPU_CHILD_SERVER_H_
