#include "tests/gpu/child_server.h"

#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "tests/server/test_server.h"

extern char** environ;

namespace asarray::testing {

const server::CudaBackend& LocalCuda() {
  static const std::unique_ptr<server::CudaBackend> backend = server::CudaBackend::Create();
  return *backend;
}

std::unique_ptr<ChildServer> ChildServer::Start(const std::vector<std::string>& flags) {
  static std::atomic<int> counter{0};
  std::unique_ptr<ChildServer> s(new ChildServer());
  char dir[] = "/tmp/asarrayd-gpu-XXXXXX";
  if (mkdtemp(dir) == nullptr) {
    ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    return nullptr;
  }
  s->dir_ = dir;
  s->prefix_ = absl::StrCat("asarrayd-gputest-", getpid(), "-", counter++);
  s->address_ = absl::StrCat("unix:", s->dir_, "/sock/asarrayd.sock");
  std::vector<std::string> args = {ASARRAYD_PATH, "--listen=" + s->address_,
                                   "--shm_prefix=" + s->prefix_, "--workers=2"};
  args.insert(args.end(), flags.begin(), flags.end());
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  if (int e = posix_spawn(&s->pid_, argv[0], nullptr, nullptr, argv.data(), environ); e != 0) {
    ADD_FAILURE() << "starting " << argv[0] << ": " << std::strerror(e);
    return nullptr;
  }
  std::unique_ptr<Client> client = s->NewClient();
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!client->Health().ok()) {
    int status = 0;
    if (waitpid(s->pid_, &status, WNOHANG) == s->pid_) {
      s->pid_ = -1;
      ADD_FAILURE() << "asarrayd exited before serving (status " << status << ")";
      return nullptr;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      ADD_FAILURE() << "asarrayd did not answer a health check within 30 s";
      return nullptr;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
    client = s->NewClient();
  }
  return s;
}

ChildServer::~ChildServer() {
  if (pid_ > 0) {
    kill(pid_, SIGTERM);
    int status = 0;
    waitpid(pid_, &status, 0);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
        << "asarrayd ended with status " << status;
    EXPECT_EQ(CountSegments(prefix_), 0) << "segments with prefix " << prefix_
                                         << " outlived the server";
  }
  if (!dir_.empty()) {
    std::string sock = dir_ + "/sock";
    rmdir(sock.c_str());
    rmdir(dir_.c_str());
  }
}

std::unique_ptr<Client> ChildServer::NewClient() const {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(address_);
  return client.ok() ? *std::move(client) : nullptr;
}

}  // namespace asarray::testing
