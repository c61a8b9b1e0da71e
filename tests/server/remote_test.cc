// Remote clients: TLS and mutual TLS on a loopback TCP listener, identities
// by certificate subject, results that come back as bytes, and the
// conventions of a remote gRPC client (retries, deadlines, keepalive,
// compression). The certificates come from scripts/test_pki.sh.
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asarray/v1/asarray.grpc.pb.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "grpcpp/server_builder.h"
#include "gtest/gtest.h"
#include "server/peer.h"
#include "tests/remote/tls_clients.h"
#include "tests/server/test_server.h"

namespace asarray::testing {
namespace {

using ::testing::HasSubstr;

// The test PKI, made once for the whole program.
const std::string& Pki() {
  static const std::string* dir = [] {
    auto* d = new std::string(absl::StrCat("/tmp/asarrayd-pki-", getpid()));
    const std::string command =
        absl::StrCat("bash ", ASARRAY_SOURCE_DIR, "/scripts/test_pki.sh ", *d, " >/dev/null 2>&1");
    if (std::system(command.c_str()) != 0) ADD_FAILURE() << "failed: " << command;
    std::atexit([] { std::system(absl::StrCat("rm -rf /tmp/asarrayd-pki-", getpid()).c_str()); });
    return d;
  }();
  return *dir;
}

std::string PkiFile(const std::string& name) { return Pki() + "/" + name; }

ClientOptions TlsAs(const std::string& who, const std::string& ca = "ca.pem") {
  return testing::TlsAs(Pki(), who, ca);
}

// A test server with a TLS listener on loopback; with `mutual`, it requires
// client certificates signed by the test CA.
std::unique_ptr<TestServer> StartTls(bool mutual,
                                     const std::function<void(server::ServerOptions&)>& more = {}) {
  return TestServer::Start([&](server::ServerOptions& o) {
    o.listen.push_back("127.0.0.1:0");
    o.tls_cert_file = PkiFile("server.pem");
    o.tls_key_file = PkiFile("server.key");
    if (mutual) o.tls_client_ca_file = PkiFile("ca.pem");
    if (more) more(o);
  });
}

std::unique_ptr<Client> Connect(TestServer& server, const ClientOptions& options) {
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(server.server().addresses().back(), options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

// 0, step, 2 * step, ...: n float32 values, every one exact.
std::vector<float> Ramp(size_t n, float step) {
  std::vector<float> values(n);
  for (size_t i = 0; i < n; ++i) values[i] = static_cast<float>(i) * step;
  return values;
}

TEST(MutualTls, EachCertificateSubjectOwnsItsHandles) {
  std::unique_ptr<TestServer> server = StartTls(/*mutual=*/true);
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> alice = Connect(*server, TlsAs("alice"));
  std::unique_ptr<Client> bob = Connect(*server, TlsAs("bob"));
  ASSERT_NE(alice, nullptr);
  ASSERT_NE(bob, nullptr);
  alice->set_lease_ttl(absl::Minutes(1));  // keep the handle on the server
  absl::StatusOr<MappedTensor> held = alice->ConvertLiteral(Literal::Int(7), {});
  ASSERT_TRUE(held.ok()) << held.status();
  const std::string id = held->id();
  ASSERT_FALSE(id.empty());
  EXPECT_FALSE(held->has_elements());  // kept there: read with ReadBytes

  // The server knows it as alice's subject, not as a uid.
  absl::StatusOr<server::TensorStore::Lease> lease =
      server->server().store().Get(id, server::Caller::Remote("CN=alice,O=asarrayd test"));
  ASSERT_TRUE(lease.ok()) << lease.status();
  EXPECT_EQ(lease->tensor->owner.uid, server::kNoLocalUid);

  // Bob learns nothing of it, whichever way he reaches for it.
  EXPECT_EQ(bob->ReadBytes(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bob->Renew(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bob->Release(id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bob->ConvertTensor(id, {}).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<std::vector<HandleInfo>> bobs = bob->List();
  ASSERT_TRUE(bobs.ok()) << bobs.status();
  EXPECT_TRUE(bobs->empty());
  // Nor does a local caller, nor a TCP caller of the shared identity.
  EXPECT_EQ(server->NewGrpcClient()->Release(id).code(), absl::StatusCode::kNotFound);

  // Alice does.
  absl::StatusOr<std::vector<HandleInfo>> alices = alice->List();
  ASSERT_TRUE(alices.ok()) << alices.status();
  ASSERT_EQ(alices->size(), 1u);
  EXPECT_EQ((*alices)[0].id, id);
  absl::StatusOr<std::string> bytes = alice->ReadBytes(id);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  int64_t value = 0;
  ASSERT_EQ(bytes->size(), sizeof(value));
  std::memcpy(&value, bytes->data(), sizeof(value));
  EXPECT_EQ(value, 7);
  EXPECT_TRUE(alice->Renew(id).ok());
  ConvertOptions to_double;
  to_double.dtype = DType::kFloat64;
  EXPECT_TRUE(alice->ConvertTensor(id, to_double).ok());
  held->DetachLease();  // released by id, below
  EXPECT_TRUE(alice->Release(id).ok());
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
}

TEST(MutualTls, RefusalsSayTheyAreAboutTls) {
  std::unique_ptr<TestServer> server = StartTls(/*mutual=*/true);
  ASSERT_NE(server, nullptr);
  ExpectTlsRefusals(server->server().addresses().back(), Pki());
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
  // A certificate without its key is a usage error, before any connection.
  ClientOptions half = TlsAs("alice");
  half.tls_key_file.clear();
  EXPECT_EQ(Client::Connect(server->server().addresses().back(), half).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(RemoteClient, ResultsComeBackAsBytesAndNothingStays) {
  // A small message limit, so that a result past it streams instead.
  std::unique_ptr<TestServer> server = StartTls(
      /*mutual=*/false, [](server::ServerOptions& o) { o.max_message_bytes = 1 << 20; });
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = Connect(*server, TlsAs(""));
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->remote());
  EXPECT_FALSE(client->has_local_transport());

  // A transposed float32 view cast to float64: the copy keeps torch's strides.
  const std::vector<float> values = {1, 2, 3, 4, 5, 6};
  ConvertOptions to_double;
  to_double.dtype = DType::kFloat64;
  absl::StatusOr<MappedTensor> cast =
      client->ConvertInline(values.data(), values.size() * sizeof(float), DType::kFloat32,
                            {{3, 2}, {1, 3}, 0}, to_double);
  ASSERT_TRUE(cast.ok()) << cast.status();
  EXPECT_TRUE(cast->id().empty());
  EXPECT_EQ(cast->dtype(), DType::kFloat64);
  EXPECT_EQ(cast->shape(), (Dims{3, 2}));
  absl::StatusOr<std::string> row_major = cast->RowMajorBytes();
  ASSERT_TRUE(row_major.ok()) << row_major.status();
  const std::vector<double> want = {1, 4, 2, 5, 3, 6};
  EXPECT_EQ(*row_major, std::string(reinterpret_cast<const char*>(want.data()), 48));

  // Past the upload threshold: streamed, read back, and let go.
  client->set_upload_threshold(64 << 10);
  client->set_chunk_size(32 << 10);
  const std::vector<float> big = Ramp(300000, 0.5f);
  const int64_t n = static_cast<int64_t>(big.size());
  absl::StatusOr<MappedTensor> uploaded =
      client->ConvertInline(big.data(), big.size() * 4, DType::kFloat32, {{n}, {1}, 0}, {});
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  ASSERT_TRUE(uploaded->has_elements());
  EXPECT_EQ(std::memcmp(uploaded->data(), big.data(), big.size() * 4), 0);

  // A result past one message (2.4 MiB of float64 from 1.2 MiB of float32)
  // comes through ConvertToData.
  absl::StatusOr<MappedTensor> wide =
      client->ConvertInline(big.data(), big.size() * 4, DType::kFloat32, {{n}, {1}, 0}, to_double);
  ASSERT_TRUE(wide.ok()) << wide.status();
  EXPECT_EQ(static_cast<const double*>(wide->data())[299999], 299999 * 0.5);

  // Nothing that would need shared memory is even asked for.
  absl::StatusOr<SharedRegion> region = SharedRegion::CreateMemfd(16);
  ASSERT_TRUE(region.ok());
  absl::StatusOr<MappedTensor> refused =
      client->ConvertRegion(*region, 0, 16, DType::kFloat32, {{4}, {1}, 0}, {});
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("remote"));

  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
  EXPECT_EQ(server->SegmentsInDevShm(), 0);
}

TEST(RemoteClient, HeldResultsArePrivateMemoryOfTheServer) {
  std::unique_ptr<TestServer> server = StartTls(/*mutual=*/true);
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = Connect(*server, TlsAs("alice"));
  ASSERT_NE(client, nullptr);
  client->set_lease_ttl(absl::Minutes(1));  // keep the results on the server
  client->set_upload_threshold(64 << 10);
  const int memfds = CountMemfds();  // this process is the server too

  // A streamed upload the result aliases, and a cast of it.
  const std::vector<float> big = Ramp(300000, 0.25f);
  const int64_t n = static_cast<int64_t>(big.size());
  absl::StatusOr<MappedTensor> uploaded =
      client->ConvertInline(big.data(), big.size() * 4, DType::kFloat32, {{n}, {1}, 0}, {});
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  ConvertOptions to_double;
  to_double.dtype = DType::kFloat64;
  absl::StatusOr<MappedTensor> cast = client->ConvertTensor(uploaded->id(), to_double);
  ASSERT_TRUE(cast.ok()) << cast.status();

  const server::Caller alice = server::Caller::Remote("CN=alice,O=asarrayd test");
  for (const MappedTensor* held : {&*uploaded, &*cast}) {
    absl::StatusOr<server::TensorStore::Lease> lease =
        server->server().store().Get(held->id(), alice);
    ASSERT_TRUE(lease.ok()) << lease.status();
    const auto* memory = dynamic_cast<const server::ShmSegment*>(lease->tensor->memory.get());
    ASSERT_NE(memory, nullptr);
    EXPECT_EQ(memory->kind(), server::ShmSegment::Kind::kPrivate);
    EXPECT_EQ(memory->fd(), -1);
    EXPECT_EQ(memory->name(), "");
  }
  EXPECT_EQ(CountMemfds(), memfds);  // no descriptor was made for them
  EXPECT_EQ(server->SegmentsInDevShm(), 0);

  // Their bytes are what was sent, and what torch's cast gives.
  absl::StatusOr<std::string> raw = client->ReadBytes(uploaded->id());
  ASSERT_TRUE(raw.ok()) << raw.status();
  EXPECT_EQ(*raw, std::string(reinterpret_cast<const char*>(big.data()), big.size() * 4));
  absl::StatusOr<std::string> wide = client->ReadBytes(cast->id());
  ASSERT_TRUE(wide.ok()) << wide.status();
  ASSERT_EQ(wide->size(), big.size() * 8);
  double last = 0;
  std::memcpy(&last, wide->data() + wide->size() - 8, 8);
  EXPECT_EQ(last, 299999 * 0.25);

  uploaded = absl::CancelledError("released");  // each releases its lease
  cast = absl::CancelledError("released");
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
}

// Answers List with UNAVAILABLE twice, then OK; Convert always with
// UNAVAILABLE; Stats after 3 s. Counts the calls.
class FlakyService final : public v1::AsArray::CallbackService {
 public:
  std::atomic<int> lists{0};
  std::atomic<int> converts{0};

  grpc::ServerUnaryReactor* List(grpc::CallbackServerContext* context, const v1::ListRequest*,
                                 v1::ListResponse*) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(++lists <= 2 ? grpc::Status(grpc::StatusCode::UNAVAILABLE, "not yet")
                                 : grpc::Status::OK);
    return reactor;
  }
  grpc::ServerUnaryReactor* Convert(grpc::CallbackServerContext* context, const v1::ConvertRequest*,
                                    v1::ConvertResponse*) override {
    ++converts;
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status(grpc::StatusCode::UNAVAILABLE, "not yet"));
    return reactor;
  }
  grpc::ServerUnaryReactor* Stats(grpc::CallbackServerContext* context, const v1::StatsRequest*,
                                  v1::StatsResponse*) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    std::thread([reactor] {
      std::this_thread::sleep_for(std::chrono::seconds(3));
      reactor->Finish(grpc::Status::OK);
    }).detach();
    return reactor;
  }
};

struct FlakyServer {
  FlakyService service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
  FlakyServer() {
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
    builder.RegisterService(&service);
    server = builder.BuildAndStart();
  }
  ~FlakyServer() { server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5)); }
  std::string address() const { return absl::StrCat("127.0.0.1:", port); }
};

TEST(RemoteConventions, RetriesOnlyTheCallsThatAreSafeToRepeat) {
  FlakyServer flaky;
  ASSERT_NE(flaky.port, 0);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(flaky.address());
  ASSERT_TRUE(client.ok()) << client.status();
  EXPECT_TRUE((*client)->List().ok());
  EXPECT_EQ(flaky.service.lists.load(), 3);  // two refusals, retried
  EXPECT_EQ((*client)->ConvertLiteral(Literal::Int(1), {}).status().code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(flaky.service.converts.load(), 1);  // a Convert may have made a handle

  ClientOptions no_retries;
  no_retries.retry_idempotent = false;
  flaky.service.lists = 0;
  client = Client::Connect(flaky.address(), no_retries);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->List().status().code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(flaky.service.lists.load(), 1);
}

TEST(RemoteConventions, EveryUnaryCallHasADeadline) {
  FlakyServer flaky;
  ClientOptions options;
  options.call_timeout = absl::Milliseconds(300);
  absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(flaky.address(), options);
  ASSERT_TRUE(client.ok());
  EXPECT_EQ((*client)->Stats().status().code(), absl::StatusCode::kDeadlineExceeded);
}

TEST(RemoteConventions, AnIdleConnectionThatPingsStaysUp) {
  // The client pings every 200 ms with no call in flight. A server with
  // gRPC's default policy answers the third such ping with GOAWAY
  // ("too_many_pings") and the channel drops; asarrayd accepts them.
  std::unique_ptr<TestServer> server = StartTls(/*mutual=*/false);
  ASSERT_NE(server, nullptr);
  ClientOptions options = TlsAs("");
  options.keepalive_time = absl::Milliseconds(200);
  std::unique_ptr<Client> client = Connect(*server, options);
  ASSERT_NE(client, nullptr);
  ASSERT_TRUE(client->Health().ok());
  ASSERT_EQ(client->channel()->GetState(false), GRPC_CHANNEL_READY);
  for (int i = 0; i < 60; ++i) {  // without asarrayd's policy it drops at about 3 s
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    ASSERT_EQ(client->channel()->GetState(false), GRPC_CHANNEL_READY)
        << "after " << i * 100 << " ms idle";
  }
  EXPECT_TRUE(client->Health().ok());
}

TEST(RemoteConventions, CompressedDataMessagesConvertTheSame) {
  std::unique_ptr<TestServer> server = StartTls(/*mutual=*/false);
  ASSERT_NE(server, nullptr);
  ClientOptions options = TlsAs("");
  options.compress = true;
  std::unique_ptr<Client> client = Connect(*server, options);
  ASSERT_NE(client, nullptr);
  client->set_upload_threshold(1 << 16);
  std::vector<float> values(100000, 0.25f);
  values[12345] = 3;
  ConvertOptions to_half;
  to_half.dtype = DType::kFloat16;
  for (const ConvertOptions& o : {ConvertOptions(), to_half}) {
    absl::StatusOr<MappedTensor> result = client->ConvertInline(
        values.data(), values.size() * 4, DType::kFloat32, {{100000}, {1}, 0}, o);
    ASSERT_TRUE(result.ok()) << result.status();
    ASSERT_EQ(result->numel(), 100000);
    if (o.dtype.has_value()) {
      EXPECT_EQ(static_cast<const uint16_t*>(result->data())[12345], 0x4200);  // 3.0 in half
    } else {
      EXPECT_EQ(std::memcmp(result->data(), values.data(), values.size() * 4), 0);
    }
  }
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
}

}  // namespace
}  // namespace asarray::testing
