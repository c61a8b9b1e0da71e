#include "tests/server/test_server.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <cstring>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "core/status_macros.h"
#include "gtest/gtest.h"
#include "server/local_transport.h"

extern char** environ;

namespace asarray::testing {

LocalConnection::LocalConnection(const std::string& grpc_address) {
  absl::StatusOr<UniqueFd> socket =
      ConnectLocal(LocalSocketPath(grpc_address.substr(std::strlen("unix:"))));
  if (socket.ok()) socket_ = *std::move(socket);
}

absl::Status LocalConnection::CallRaw(const std::string& datagram, absl::Span<const int> fds,
                                      v1::LocalResponse* response,
                                      std::vector<UniqueFd>* received) {
  ASARRAY_RETURN_IF_ERROR(SendLocal(socket_.get(), datagram, fds));
  ASARRAY_ASSIGN_OR_RETURN(LocalDatagram answer,
                           ReceiveLocal(socket_.get(), kMaxLocalMessageBytes));
  v1::LocalResponse parsed;
  if (!parsed.ParseFromString(answer.bytes)) {
    return absl::InternalError("the answer does not parse as a LocalResponse");
  }
  if (parsed.code() != 0) {
    if (!answer.fds.empty()) return absl::InternalError("an error answer came with descriptors");
    return absl::Status(static_cast<absl::StatusCode>(parsed.code()), parsed.message());
  }
  if (response != nullptr) *response = std::move(parsed);
  if (received != nullptr) *received = std::move(answer.fds);
  return absl::OkStatus();
}

absl::Status LocalConnection::Convert(const v1::ConvertRequest& request, absl::Span<const int> fds,
                                      v1::ConvertResponse* response,
                                      std::vector<UniqueFd>* received) {
  v1::LocalRequest local;
  *local.mutable_convert() = request;
  v1::LocalResponse answer;
  ASARRAY_RETURN_IF_ERROR(Call(local, fds, &answer, received));
  if (!answer.has_convert()) return absl::InternalError("a Convert answer without a response");
  if (response != nullptr) *response = answer.convert();
  return absl::OkStatus();
}

absl::Status LocalConnection::Release(const v1::ReleaseRequest& request) {
  v1::LocalRequest local;
  *local.mutable_release() = request;
  return Call(local);
}

UniqueFd SealedMemfd(size_t size, const std::string& bytes, int seals) {
  UniqueFd fd(memfd_create("asarray-test", MFD_CLOEXEC | MFD_ALLOW_SEALING));
  EXPECT_TRUE(fd.valid()) << std::strerror(errno);
  EXPECT_EQ(ftruncate(fd.get(), static_cast<off_t>(size)), 0);
  if (!bytes.empty()) {
    EXPECT_EQ(pwrite(fd.get(), bytes.data(), bytes.size(), 0), static_cast<ssize_t>(bytes.size()));
  }
  if (seals != 0) {
    EXPECT_EQ(fcntl(fd.get(), F_ADD_SEALS, seals), 0) << std::strerror(errno);
  }
  return fd;
}

int CountFds(pid_t pid) {
  DIR* dir = opendir(absl::StrCat("/proc/", pid, "/fd").c_str());
  if (dir == nullptr) return -1;
  int n = 0;
  while (const dirent* e = readdir(dir)) {
    if (e->d_name[0] != '.') ++n;
  }
  closedir(dir);
  return pid == getpid() ? n - 1 : n;  // not the directory's own
}

int CountMemfds() {
  int count = 0;
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return -1;
  while (dirent* entry = readdir(dir)) {
    char target[256];
    const std::string link = absl::StrCat("/proc/self/fd/", entry->d_name);
    const ssize_t n = readlink(link.c_str(), target, sizeof(target) - 1);
    if (n > 0 && absl::StartsWith(absl::string_view(target, static_cast<size_t>(n)), "/memfd:")) {
      ++count;
    }
  }
  closedir(dir);
  return count;
}

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

absl::StatusOr<MappedTensor> ConvertCaseInRegion(Client& client, const ConformanceCase& c,
                                                 const ConvertOptions& options,
                                                 std::string* region_name) {
  absl::StatusOr<SharedRegion> region = SharedRegion::Create(c.storage.size());
  if (!region.ok()) return region.status();
  if (!c.storage.empty()) std::memcpy(region->data(), c.storage.data(), c.storage.size());
  if (region_name != nullptr) *region_name = region->name();
  return client.ConvertRegion(region->name(), 0, region->size(), c.dtype, c.layout, options);
}

Outcome OutcomeOf(const absl::StatusOr<MappedTensor>& mapped) {
  if (!mapped.ok()) {
    Outcome out;
    out.status = mapped.status();
    return out;
  }
  return OutcomeOf(*mapped);
}

Outcome OutcomeOf(const MappedTensor& mapped) {
  Outcome out;
  const HandleInfo& h = mapped.handle();
  out.dtype = h.dtype;
  out.shape = h.layout.shape;
  out.strides = h.layout.strides;
  out.requires_grad = h.requires_grad;
  out.shares_memory = h.shares_memory;
  out.warnings = h.warnings;
  absl::StatusOr<std::string> data = mapped.RowMajorBytes();
  if (!data.ok()) {
    out.status = data.status();
    return out;
  }
  out.data = *std::move(data);
  return out;
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

Child::Child(const std::vector<std::string>& argv) {
  int out[2];
  if (pipe2(out, O_CLOEXEC) != 0) {
    ADD_FAILURE() << "pipe: " << std::strerror(errno);
    return;
  }
  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, out[1], STDOUT_FILENO);
  std::vector<char*> args;
  for (const std::string& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const int err = posix_spawnp(&pid_, args[0], &actions, nullptr, args.data(), environ);
  posix_spawn_file_actions_destroy(&actions);
  close(out[1]);
  if (err != 0) {
    ADD_FAILURE() << "spawning " << argv[0] << ": " << std::strerror(err);
    pid_ = -1;
    close(out[0]);
    return;
  }
  out_ = fdopen(out[0], "r");
}

Child::~Child() {
  if (pid_ > 0) Kill(SIGKILL);
  if (out_ != nullptr) fclose(out_);
}

std::string Child::ReadLine() {
  char line[4096];
  if (out_ == nullptr || std::fgets(line, sizeof(line), out_) == nullptr) return "";
  return std::string(absl::StripTrailingAsciiWhitespace(line));
}

int Child::Kill(int signal) {
  int status = 0;
  if (pid_ <= 0) return status;
  kill(pid_, signal);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return status;
}

std::unique_ptr<Child> StartServerProcess(const std::string& binary, const std::string& socket,
                                          const std::string& prefix,
                                          const std::vector<std::string>& flags,
                                          std::vector<std::string> wrapper) {
  std::vector<std::string> argv = std::move(wrapper);
  argv.push_back(binary);
  argv.push_back("--listen=unix:" + socket);
  argv.push_back("--shm_prefix=" + prefix);
  argv.insert(argv.end(), flags.begin(), flags.end());
  auto child = std::make_unique<Child>(argv);
  // Connect once the socket exists, so that no connection attempt fails and
  // backs off.
  struct stat st;
  EXPECT_TRUE(Eventually([&] { return stat(socket.c_str(), &st) == 0; }));
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect("unix:" + socket);
  if (!client.ok() || !Eventually([&] { return (*client)->Health().ok(); })) {
    ADD_FAILURE() << "asarrayd did not answer on " << socket;
    return nullptr;
  }
  return child;
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
  EXPECT_EQ(CountSegments(prefix_), 0)
      << "segments with prefix " << prefix_ << " outlived the server";
}

TestServer::~TestServer() {
  Stop();
  const std::string sock_dir = dir_ + "/sock";
  rmdir(sock_dir.c_str());
  rmdir(dir_.c_str());
}

std::unique_ptr<Client> TestServer::NewClient(const ClientOptions& options) const {
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(address_, options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

int TestServer::SegmentsInDevShm() const { return CountSegments(prefix_); }

}  // namespace asarray::testing
