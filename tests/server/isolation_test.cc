// Isolation between callers: every handle belongs to the uid that made it,
// client regions are opened only for the uid that owns them, and TCP is off
// unless named, TLS when given a certificate, and plaintext only on loopback
// unless explicitly allowed. Another uid is a real process: peer_client run
// through setpriv as nobody.
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "asarray/v1/asarray.grpc.pb.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "gtest/gtest.h"
#include "server/peer.h"
#include "tests/server/requests.h"
#include "tests/server/test_server.h"
#include "wire/proto_convert.h"

namespace asarray::testing {
namespace {

using ::testing::HasSubstr;

constexpr uid_t kNobody = 65534;

struct PeerResult {
  std::string code;
  std::string detail;
};

// Runs peer_client with `ops` as uid and gid 65534, without supplementary
// groups; one result per op, in order.
std::vector<PeerResult> RunAsNobody(const std::string& address,
                                    const std::vector<std::string>& ops) {
  const std::string command =
      absl::StrCat("setpriv --reuid=", kNobody, " --regid=", kNobody, " --clear-groups ",
                   ASARRAY_PEER_CLIENT, " ", address, " ", absl::StrJoin(ops, " "), " 2>&1");
  FILE* pipe = popen(command.c_str(), "r");
  std::vector<PeerResult> results;
  if (pipe == nullptr) {
    ADD_FAILURE() << "cannot run " << command;
    return results;
  }
  char line[4096];
  while (std::fgets(line, sizeof(line), pipe) != nullptr) {
    std::vector<std::string> words =
        absl::StrSplit(absl::StripTrailingAsciiWhitespace(line), absl::MaxSplits(' ', 2));
    words.resize(3);
    results.push_back({words[1], words[2]});
  }
  EXPECT_EQ(pclose(pipe), 0) << command;
  EXPECT_EQ(results.size(), ops.size()) << command;
  results.resize(ops.size());
  return results;
}

// The socket path of "unix:/dir/sock/asarrayd.sock".
std::string SocketPath(const TestServer& server) { return server.address().substr(5); }

// An administrator's choice the server must survive: the socket opened to
// every uid. Isolation must then rest on the per-call uid alone.
void OpenSocketToEveryone(const TestServer& server) {
  const std::string path = SocketPath(server);
  const std::string sock_dir = path.substr(0, path.rfind('/'));
  const std::string dir = sock_dir.substr(0, sock_dir.rfind('/'));
  ASSERT_EQ(chmod(dir.c_str(), 0711), 0);
  ASSERT_EQ(chmod(sock_dir.c_str(), 0711), 0);
  ASSERT_EQ(chmod(path.c_str(), 0666), 0);
}

class IsolationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (geteuid() != 0) GTEST_SKIP() << "running a client as another uid needs root";
    server_ = TestServer::Start();
    ASSERT_NE(server_, nullptr);
    OpenSocketToEveryone(*server_);
    client_ = server_->NewClient();
  }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<Client> client_;
};

TEST_F(IsolationTest, AnotherUidCannotReachThisUidsHandlesOrRegions) {
  absl::StatusOr<MappedTensor> mine = client_->ConvertLiteral(Literal::Int(5), {});
  ASSERT_TRUE(mine.ok()) << mine.status();
  absl::StatusOr<SharedRegion> my_region = SharedRegion::Create(64);
  ASSERT_TRUE(my_region.ok());
  // Permissions alone would let the other uid in; ownership must still refuse.
  ASSERT_EQ(chmod(absl::StrCat("/dev/shm", my_region->name()).c_str(), 0666), 0);

  const std::vector<PeerResult> theirs = RunAsNobody(
      server_->address(),
      {"literal", "list", absl::StrCat("read:", mine->id()), absl::StrCat("renew:", mine->id()),
       absl::StrCat("release:", mine->id()), absl::StrCat("tensor:", mine->id()),
       absl::StrCat("region:", my_region->name(), ":64"), "own-region:64"});
  ASSERT_EQ(theirs.size(), 8u);
  EXPECT_EQ(theirs[0].code, "OK") << theirs[0].detail;
  const std::string their_id = theirs[0].detail;
  EXPECT_EQ(theirs[1].code, "OK");
  EXPECT_EQ(theirs[1].detail, their_id) << "the other uid lists exactly its own handle";
  for (int i = 2; i <= 5; ++i) EXPECT_EQ(theirs[i].code, "NOT_FOUND") << i;
  EXPECT_EQ(theirs[6].code, "PERMISSION_DENIED");
  EXPECT_EQ(theirs[7].code, "OK") << "a uid may alias a segment of its own";
  const std::string their_region = theirs[7].detail;

  // The handles the other uid made are its own, and invisible from here.
  std::vector<std::string> their_ids;
  for (const server::TensorStore::Lease& lease :
       server_->server().store().List(server::Caller::Local(kNobody))) {
    EXPECT_EQ(lease.tensor->owner.uid, kNobody);
    their_ids.push_back(lease.tensor->id);
  }
  EXPECT_THAT(their_ids, ::testing::Contains(their_id));
  EXPECT_EQ(their_ids.size(), 2u);
  EXPECT_EQ(client_->ReadBytes(their_id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Renew(their_id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->Release(their_id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(client_->ConvertTensor(their_id, {}).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<std::vector<HandleInfo>> listed = client_->List();
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].id, mine->id());
  // Their segment, named by this uid: refused although root could open it.
  absl::StatusOr<v1::ConvertResponse> r = client_->Convert(RegionOfBytes(their_region, 64));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(r.status().message(), HasSubstr(absl::StrCat("belongs to uid ", kNobody)));

  // What this uid holds is untouched.
  EXPECT_TRUE(client_->ReadBytes(mine->id()).ok());
  EXPECT_EQ(server_->server().store().Stats().client_regions, 1u);  // their own alias
  EXPECT_EQ(shm_unlink(their_region.c_str()), 0);
}

// --- TCP ---------------------------------------------------------------------------

// A self-signed certificate for 127.0.0.1 and its key, made by openssl.
class Certificate {
 public:
  Certificate() {
    const std::string command = absl::StrCat(
        "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 "
        "-subj /CN=localhost -addext subjectAltName=IP:127.0.0.1,DNS:localhost -keyout ",
        key_file(), " -out ", cert_file(), " >/dev/null 2>&1");
    EXPECT_EQ(std::system(command.c_str()), 0) << command;
    std::ifstream in(cert_file());
    std::stringstream text;
    text << in.rdbuf();
    pem_ = text.str();
  }
  std::string cert_file() const { return dir_.path() + "/cert.pem"; }
  std::string key_file() const { return dir_.path() + "/key.pem"; }
  const std::string& pem() const { return pem_; }

 private:
  TempDir dir_;
  std::string pem_;
};

std::unique_ptr<v1::AsArray::Stub> TcpStub(const std::string& address,
                                           const std::shared_ptr<grpc::ChannelCredentials>& creds) {
  return v1::AsArray::NewStub(grpc::CreateChannel(address, creds));
}

absl::StatusOr<v1::ConvertResponse> Call(v1::AsArray::Stub& stub,
                                         const v1::ConvertRequest& request) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ConvertResponse response;
  absl::Status s = FromGrpcStatus(stub.Convert(&context, request, &response));
  if (!s.ok()) return s;
  return response;
}

absl::StatusOr<v1::ListResponse> ListOf(v1::AsArray::Stub& stub) {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListResponse response;
  absl::Status s = FromGrpcStatus(stub.List(&context, v1::ListRequest(), &response));
  if (!s.ok()) return s;
  return response;
}

v1::ConvertRequest IntLiteral(int64_t value) {
  v1::ConvertRequest request;
  request.mutable_source()->mutable_literal()->add_nodes()->set_int_value(value);
  return request;
}

TEST(Tcp, TlsServesCallersWithoutALocalUid) {
  Certificate cert;
  std::unique_ptr<TestServer> server = TestServer::Start([&](server::ServerOptions& o) {
    o.listen.push_back("127.0.0.1:0");
    o.tls_cert_file = cert.cert_file();
    o.tls_key_file = cert.key_file();
  });
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(server->server().addresses().size(), 2u);
  const std::string tcp = server->server().addresses()[1];
  grpc::SslCredentialsOptions trust;
  trust.pem_root_certs = cert.pem();
  std::unique_ptr<v1::AsArray::Stub> remote = TcpStub(tcp, grpc::SslCredentials(trust));

  absl::StatusOr<v1::ConvertResponse> converted = Call(*remote, IntLiteral(3));
  ASSERT_TRUE(converted.ok()) << converted.status();
  EXPECT_EQ(server->server().store().List(server::Caller{}).size(), 1u);
  // A local caller's handle is not a TCP caller's, and the other way round.
  std::unique_ptr<Client> local = server->NewClient();
  absl::StatusOr<MappedTensor> mine = local->ConvertLiteral(Literal::Int(4), {});
  ASSERT_TRUE(mine.ok());
  absl::StatusOr<v1::ListResponse> listed = ListOf(*remote);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->tensors_size(), 1);
  EXPECT_EQ(listed->tensors(0).id(), converted->handle().id());
  EXPECT_EQ(local->Release(converted->handle().id()).code(), absl::StatusCode::kNotFound);
  // A TCP caller owns no segment on this host, so it may alias none.
  absl::StatusOr<SharedRegion> region = SharedRegion::Create(16);
  ASSERT_TRUE(region.ok());
  absl::StatusOr<v1::ConvertResponse> aliased = Call(*remote, RegionOfBytes(region->name(), 16));
  EXPECT_EQ(aliased.status().code(), absl::StatusCode::kPermissionDenied);
  EXPECT_THAT(aliased.status().message(), HasSubstr("TCP caller"));

  // Plaintext, or TLS that does not trust this certificate, gets nowhere.
  std::unique_ptr<v1::AsArray::Stub> plain = TcpStub(tcp, grpc::InsecureChannelCredentials());
  EXPECT_EQ(Call(*plain, IntLiteral(1)).status().code(), absl::StatusCode::kUnavailable);
  std::unique_ptr<v1::AsArray::Stub> untrusting =
      TcpStub(tcp, grpc::SslCredentials(grpc::SslCredentialsOptions()));
  EXPECT_EQ(Call(*untrusting, IntLiteral(1)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(server->server().store().List(server::Caller{}).size(), 1u);
}

absl::Status StartWith(const std::function<void(server::ServerOptions&)>& adjust) {
  server::ServerOptions options;
  options.listen.clear();
  options.store.prefix = absl::StrCat("asarrayd-tcp-test-", getpid());
  options.sweep_orphans = false;
  adjust(options);
  return server::Server::Start(options).status();
}

TEST(Tcp, PlaintextOnlyOnLoopbackUnlessExplicitlyAllowed) {
  absl::Status s = StartWith([](server::ServerOptions& o) { o.listen = {"0.0.0.0:0"}; });
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("not a loopback address"));
  s = StartWith([](server::ServerOptions& o) { o.listen = {":0"}; });
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(StartWith([](server::ServerOptions& o) {
                o.listen = {"0.0.0.0:0"};
                o.allow_insecure_tcp = true;
              }).ok());
  EXPECT_TRUE(StartWith([](server::ServerOptions& o) { o.listen = {"127.0.0.1:0"}; }).ok());
  EXPECT_TRUE(StartWith([](server::ServerOptions& o) { o.listen = {"localhost:0"}; }).ok());
}

TEST(Tcp, TlsNeedsBothFilesAndReadableOnes) {
  Certificate cert;
  absl::Status s = StartWith([&](server::ServerOptions& o) {
    o.listen = {"0.0.0.0:0"};
    o.tls_cert_file = cert.cert_file();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("both"));
  s = StartWith([&](server::ServerOptions& o) {
    o.listen = {"0.0.0.0:0"};
    o.tls_cert_file = cert.cert_file();
    o.tls_key_file = cert.key_file() + ".missing";
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr(".missing"));
  // With TLS any address may serve.
  EXPECT_TRUE(StartWith([&](server::ServerOptions& o) {
                o.listen = {"0.0.0.0:0"};
                o.tls_cert_file = cert.cert_file();
                o.tls_key_file = cert.key_file();
              }).ok());
}

TEST(UnixSocket, DefaultListensOnAPrivateUnixSocketOnly) {
  char dir[] = "/tmp/asarrayd-xdg-XXXXXX";
  ASSERT_NE(mkdtemp(dir), nullptr);
  const char* saved = std::getenv("XDG_RUNTIME_DIR");
  const std::string restore = saved != nullptr ? saved : "";
  setenv("XDG_RUNTIME_DIR", dir, 1);
  server::ServerOptions options;
  options.store.prefix = absl::StrCat("asarrayd-default-test-", getpid());
  options.sweep_orphans = false;
  ASSERT_EQ(options.listen, std::vector<std::string>{"default"});
  {
    absl::StatusOr<std::unique_ptr<server::Server>> server = server::Server::Start(options);
    ASSERT_TRUE(server.ok()) << server.status();
    ASSERT_EQ((*server)->addresses().size(), 1u);
    const std::string path = absl::StrCat(dir, "/asarrayd/asarrayd.sock");
    EXPECT_EQ((*server)->addresses()[0], "unix:" + path);
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_TRUE(S_ISSOCK(st.st_mode));
    EXPECT_EQ(st.st_mode & 0777, 0600u);
    ASSERT_EQ(stat(absl::StrCat(dir, "/asarrayd").c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 0777, 0700u);
  }
  if (saved != nullptr) {
    setenv("XDG_RUNTIME_DIR", restore.c_str(), 1);
  } else {
    unsetenv("XDG_RUNTIME_DIR");
  }
  EXPECT_EQ(rmdir(absl::StrCat(dir, "/asarrayd").c_str()), 0) << "the socket outlived the server";
  rmdir(dir);
}

TEST(UnixSocket, ASharedDirectoryIsRefusedAndLeftAsItIs) {
  TempDir dir;
  // Sticky and open to all, like /tmp; and open to all holding a file, like
  // a directory others use. Neither may be narrowed to 0700 under them.
  const std::string sticky = dir.path() + "/sticky";
  const std::string busy = dir.path() + "/busy";
  ASSERT_EQ(mkdir(sticky.c_str(), 0700), 0);
  ASSERT_EQ(chmod(sticky.c_str(), 01777), 0);
  ASSERT_EQ(mkdir(busy.c_str(), 0700), 0);
  ASSERT_EQ(chmod(busy.c_str(), 0755), 0);
  { std::ofstream(busy + "/notes.txt") << "someone else's"; }
  for (const std::pair<std::string, mode_t>& shared :
       {std::pair<std::string, mode_t>{sticky, 01777}, {busy, 0755}}) {
    const std::string& path = shared.first;
    const mode_t mode = shared.second;
    const std::string listen = absl::StrCat("unix:", path, "/asarrayd.sock");
    absl::Status s = StartWith([&](server::ServerOptions& o) { o.listen = {listen}; });
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << path;
    EXPECT_THAT(s.message(), HasSubstr("admits others")) << s;
    EXPECT_THAT(s.message(), HasSubstr(absl::StrCat(path, "/asarrayd/asarrayd.sock"))) << s;
    struct stat st;
    ASSERT_EQ(stat(path.c_str(), &st), 0);
    EXPECT_EQ(st.st_mode & 07777, mode) << path;
  }
  // The server's own directory, left open by whoever made it, is narrowed.
  const std::string own = dir.path() + "/own";
  ASSERT_EQ(mkdir(own.c_str(), 0700), 0);
  ASSERT_EQ(chmod(own.c_str(), 0755), 0);
  EXPECT_TRUE(StartWith([&](server::ServerOptions& o) {
                o.listen = {absl::StrCat("unix:", own, "/asarrayd.sock")};
              }).ok());
  struct stat st;
  ASSERT_EQ(stat(own.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 07777, 0700u);
}

TEST(UnixSocket, ALiveServersSocketIsNotTakenOver) {
  std::unique_ptr<TestServer> first = TestServer::Start();
  ASSERT_NE(first, nullptr);
  absl::Status s = StartWith([&](server::ServerOptions& o) { o.listen = {first->address()}; });
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("already listening"));
  EXPECT_TRUE(first->NewClient()->Health().ok());
}

TEST(UnixSocket, AbstractNamesAreRefused) {
  absl::Status s = StartWith([](server::ServerOptions& o) { o.listen = {"unix:@asarrayd"}; });
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("abstract"));
}

TEST(UnixSocket, CallerUidIsTheConnectingProcesses) {
  // Only Unix sockets the server accepted itself name a local uid.
  EXPECT_EQ(server::PeerUid("ipv4:127.0.0.1:5000"), server::kNoLocalUid);
  EXPECT_EQ(server::PeerUid("unix:/tmp/x.sock"), server::kNoLocalUid);
  EXPECT_EQ(server::PeerUid("fd:0x1"), server::kNoLocalUid);
  int pair[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM, 0, pair), 0);
  EXPECT_EQ(server::PeerUid(absl::StrCat("fd:", pair[0])), geteuid());
  close(pair[0]);
  close(pair[1]);
  // A descriptor that is not a Unix socket names nobody.
  const int file = open("/dev/null", O_RDONLY | O_CLOEXEC);
  ASSERT_GE(file, 0);
  EXPECT_EQ(server::PeerUid(absl::StrCat("fd:", file)), server::kNoLocalUid);
  close(file);
}

}  // namespace
}  // namespace asarray::testing
