#include "tests/server/test_server.h"

#include <dirent.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace asarray::testing {

int CountSegments(const std::string& prefix) {
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return 0;
  int n = 0;
  while (const dirent* e = readdir(dir)) {
    if (absl::StartsWith(e->d_name, prefix)) ++n;
  }
  closedir(dir);
  return n;
}

TempDir::TempDir() {
  char dir[] = "/tmp/asarrayd-test-XXXXXX";
  if (mkdtemp(dir) == nullptr) ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
  path_ = dir;
}

TempDir::~TempDir() {
  if (std::system(absl::StrCat("rm -rf '", path_, "'").c_str()) != 0) {
    ADD_FAILURE() << "cannot remove " << path_;
  }
}

std::unique_ptr<TestServer> TestServer::Start(
    const std::function<void(server::ServerOptions&)>& adjust) {
  static std::atomic<int> counter{0};
  std::unique_ptr<TestServer> t(new TestServer());
  char dir[] = "/tmp/asarrayd-test-XXXXXX";
  if (mkdtemp(dir) == nullptr) {
    ADD_FAILURE() << "mkdtemp: " << std::strerror(errno);
    return nullptr;
  }
  t->dir_ = dir;
  t->prefix_ = absl::StrCat("asarrayd-test-", getpid(), "-", counter++);
  server::ServerOptions options;
  options.listen = {absl::StrCat("unix:", t->dir_, "/sock/asarrayd.sock")};
  options.store.prefix = t->prefix_;
  options.store.default_ttl = absl::Seconds(30);
  options.sweep_interval = absl::Milliseconds(20);
  options.sweep_orphans = false;
  options.workers = 2;
  if (adjust) adjust(options);
  absl::StatusOr<std::unique_ptr<server::Server>> s = server::Server::Start(options);
  if (!s.ok()) {
    ADD_FAILURE() << "server did not start: " << s.status();
    return nullptr;
  }
  t->server_ = *std::move(s);
  t->address_ = t->server_->addresses().front();
  return t;
}

void TestServer::Stop() {
  if (server_ == nullptr) return;
  server_.reset();
  EXPECT_EQ(CountSegments(prefix_), 0) << "segments with prefix " << prefix_
                                       << " outlived the server";
}

TestServer::~TestServer() {
  Stop();
  const std::string sock_dir = dir_ + "/sock";
  rmdir(sock_dir.c_str());
  rmdir(dir_.c_str());
}

std::unique_ptr<Client> TestServer::NewClient() const {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(address_);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

int TestServer::SegmentsInDevShm() const { return CountSegments(prefix_); }

}  // namespace asarray::testing
