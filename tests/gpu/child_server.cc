#include "tests/gpu/child_server.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace asarray::testing {

const server::CudaBackend& LocalCuda() {
  static const std::unique_ptr<server::CudaBackend> backend = server::CudaBackend::Create();
  return *backend;
}

std::unique_ptr<ChildServer> ChildServer::Start(const std::vector<std::string>& flags) {
  static std::atomic<int> counter{0};
  std::unique_ptr<ChildServer> s(new ChildServer());
  s->prefix_ = absl::StrCat("asarrayd-gputest-", getpid(), "-", counter++);
  const std::string socket = s->dir_.path() + "/sock/asarrayd.sock";
  s->address_ = "unix:" + socket;
  std::vector<std::string> all_flags = {"--workers=2"};
  all_flags.insert(all_flags.end(), flags.begin(), flags.end());
  s->process_ = StartServerProcess(ASARRAYD_PATH, socket, s->prefix_, all_flags);
  if (s->process_ == nullptr) return nullptr;
  return s;
}

ChildServer::~ChildServer() {
  if (process_ == nullptr) return;
  const int status = process_->Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
      << "asarrayd ended with status " << status;
  EXPECT_EQ(CountSegments(prefix_), 0)
      << "segments with prefix " << prefix_ << " outlived the server";
}

std::unique_ptr<Client> ChildServer::NewClient() const {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(address_);
  return client.ok() ? *std::move(client) : nullptr;
}

}  // namespace asarray::testing
