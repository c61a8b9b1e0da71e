// Malformed requests to every RPC, one table row each: each gets its precise
// gRPC code and a message that names what is wrong, and afterwards the server
// still answers a health check and holds no tensor, segment, client region or
// byte more than before.
#include <fcntl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "asarray/v1/asarray.grpc.pb.h"
#include "client/client.h"
#include "gmock/gmock.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "server/local_transport.h"
#include "tests/server/test_server.h"
#include "wire/posix_util.h"
#include "wire/proto_convert.h"

namespace asarray::testing {
namespace {

using ::testing::HasSubstr;
using Code = absl::StatusCode;

// The table's server: a 1 MiB message limit and a 4 MiB quota, so that the
// limits are reachable with small requests.
constexpr int64_t kMaxMessage = 1 << 20;
constexpr uint64_t kQuota = 4 << 20;

// What every row may use: the server and raw, typed and generic stubs.
class Rpc {
 public:
  explicit Rpc(const TestServer& server) : address_(server.address()) {
    grpc::ChannelArguments args;
    args.SetMaxSendMessageSize(-1);
    args.SetMaxReceiveMessageSize(-1);
    channel_ =
        grpc::CreateCustomChannel(server.address(), grpc::InsecureChannelCredentials(), args);
    stub_ = v1::AsArray::NewStub(channel_);
    client_ = server.NewClient();
  }

  Client& client() { return *client_; }

  absl::Status Convert(const v1::ConvertRequest& request) {
    grpc::ClientContext context;
    v1::ConvertResponse response;
    return FromGrpcStatus(stub_->Convert(&context, request, &response));
  }

  // The same request over the local transport.
  absl::Status LocalConvert(const v1::ConvertRequest& request) {
    LocalConnection local(address_);
    if (!local.connected()) return absl::UnavailableError("no local transport");
    return local.Convert(request);
  }

  // Over gRPC and over the local transport, which must agree; gRPC's status.
  absl::Status ConvertBothWays(const v1::ConvertRequest& request) {
    const absl::Status grpc = Convert(request);
    const absl::Status local = LocalConvert(request);
    EXPECT_EQ(local.code(), grpc.code()) << "local transport: " << local << "; gRPC: " << grpc;
    EXPECT_EQ(local.message(), grpc.message());
    return grpc;
  }

  absl::Status ConvertToData(const v1::ConvertRequest& request) {
    grpc::ClientContext context;
    auto reader = stub_->ConvertToData(&context, request);
    v1::ReadResponse response;
    while (reader->Read(&response)) {
    }
    return FromGrpcStatus(reader->Finish());
  }

  absl::Status Upload(const std::vector<v1::ConvertUploadRequest>& messages) {
    grpc::ClientContext context;
    v1::ConvertResponse response;
    auto writer = stub_->ConvertUpload(&context, &response);
    for (const v1::ConvertUploadRequest& m : messages) {
      if (!writer->Write(m)) break;
    }
    writer->WritesDone();
    return FromGrpcStatus(writer->Finish());
  }

  absl::Status Read(const v1::ReadRequest& request) {
    grpc::ClientContext context;
    auto reader = stub_->Read(&context, request);
    v1::ReadResponse response;
    while (reader->Read(&response)) {
    }
    return FromGrpcStatus(reader->Finish());
  }

  absl::Status Release(const v1::ReleaseRequest& request) {
    grpc::ClientContext context;
    v1::ReleaseResponse response;
    return FromGrpcStatus(stub_->Release(&context, request, &response));
  }

  absl::Status Renew(const v1::RenewRequest& request) {
    grpc::ClientContext context;
    v1::RenewResponse response;
    return FromGrpcStatus(stub_->Renew(&context, request, &response));
  }

  // `bytes` as the request of `method` ("/asarray.v1.AsArray/List"), unparsed.
  absl::Status RawUnary(const std::string& method, const std::string& bytes) {
    grpc::GenericStub generic(channel_);
    grpc::ClientContext context;
    grpc::Slice slice(bytes);
    grpc::ByteBuffer request(&slice, 1);
    grpc::ByteBuffer response;
    std::promise<grpc::Status> done;
    generic.UnaryCall(&context, method, grpc::StubOptions(), &request, &response,
                      [&](grpc::Status s) { done.set_value(std::move(s)); });
    return FromGrpcStatus(done.get_future().get());
  }

  // `messages`, unparsed, as the stream of a client-streaming `method`.
  absl::Status RawStream(const std::string& method, const std::vector<std::string>& messages) {
    grpc::GenericStub generic(channel_);
    grpc::ClientContext context;
    grpc::CompletionQueue cq;
    auto next = [&cq] {
      void* tag;
      bool ok = false;
      return cq.Next(&tag, &ok) && ok;
    };
    std::unique_ptr<grpc::GenericClientAsyncReaderWriter> call =
        generic.PrepareCall(&context, method, &cq);
    call->StartCall(nullptr);
    bool ok = next();
    for (size_t i = 0; ok && i < messages.size(); ++i) {
      grpc::Slice slice(messages[i]);
      call->Write(grpc::ByteBuffer(&slice, 1), nullptr);
      ok = next();
    }
    if (ok) {
      call->WritesDone(nullptr);
      next();
    }
    grpc::Status status;
    call->Finish(&status, nullptr);
    next();
    cq.Shutdown();
    while (next()) {
    }
    return FromGrpcStatus(status);
  }

  absl::Status HealthOf(const std::string& service) {
    auto health = grpc::health::v1::Health::NewStub(channel_);
    grpc::ClientContext context;
    grpc::health::v1::HealthCheckRequest request;
    request.set_service(service);
    grpc::health::v1::HealthCheckResponse response;
    return FromGrpcStatus(health->Check(&context, request, &response));
  }

  // A live tensor's id; the row releases it (or it expires with the server).
  std::string LiveTensor() {
    absl::StatusOr<MappedTensor> t = client_->ConvertLiteral(Literal::Int(1), {});
    EXPECT_TRUE(t.ok()) << t.status();
    if (!t.ok()) return "";
    t->DetachLease();
    return t->id();
  }

 private:
  const std::string address_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::AsArray::Stub> stub_;
  std::unique_ptr<Client> client_;
};

// --- Request builders ----------------------------------------------------------

v1::ConvertRequest Inline(v1::DType dtype, Dims shape, Dims strides, int64_t offset,
                          size_t storage_bytes) {
  v1::ConvertRequest request;
  v1::InlineArray* a = request.mutable_source()->mutable_inline_array();
  a->set_dtype(dtype);
  LayoutToProto(Layout{std::move(shape), std::move(strides), offset}, a->mutable_layout());
  a->set_storage(std::string(storage_bytes, '\1'));
  return request;
}

// Four float32 elements, well formed; rows spoil one thing.
v1::ConvertRequest FourFloats() { return Inline(v1::DTYPE_FLOAT32, {4}, {1}, 0, 16); }

v1::ConvertRequest WithOptions(v1::ConvertRequest request,
                               const std::function<void(v1::Options*)>& set) {
  set(request.mutable_options());
  return request;
}

v1::ConvertRequest LiteralRequest(const std::function<void(v1::Literal*)>& build) {
  v1::ConvertRequest request;
  build(request.mutable_source()->mutable_literal());
  return request;
}

// [[1, 2], [3]]-like literals: nodes in prefix order; a list is its length.
void Nodes(v1::Literal* l, std::initializer_list<int64_t> lists_then_ints, int lists) {
  int i = 0;
  for (int64_t v : lists_then_ints) {
    if (i++ < lists) {
      l->add_nodes()->set_list_length(static_cast<uint64_t>(v));
    } else {
      l->add_nodes()->set_int_value(v);
    }
  }
}

v1::ConvertRequest Region(const std::string& name, uint64_t offset, uint64_t size, Dims shape) {
  v1::ConvertRequest request;
  v1::SharedMemoryArray* a = request.mutable_source()->mutable_shared_memory();
  a->set_name(name);
  a->set_offset(offset);
  a->set_size(size);
  a->set_dtype(v1::DTYPE_FLOAT32);
  const size_t rank = shape.size();
  LayoutToProto(Layout{std::move(shape), rank == 1 ? Dims{1} : Dims{}, 0}, a->mutable_layout());
  return request;
}

v1::ConvertRequest TensorId(const std::string& id) {
  v1::ConvertRequest request;
  request.mutable_source()->set_tensor_id(id);
  return request;
}

v1::ConvertUploadRequest Header(v1::DType dtype, int64_t elements, uint64_t storage_size) {
  v1::ConvertUploadRequest m;
  v1::ConvertUploadHeader* h = m.mutable_header();
  h->set_dtype(dtype);
  LayoutToProto(Layout{{elements}, {1}, 0}, h->mutable_layout());
  h->set_storage_size(storage_size);
  return m;
}

v1::ConvertUploadRequest Header(uint64_t bytes) {
  return Header(v1::DTYPE_UINT8, static_cast<int64_t>(bytes), bytes);
}

v1::ConvertUploadRequest Data(size_t n) {
  v1::ConvertUploadRequest m;
  m.set_data(std::string(n, 'x'));
  return m;
}

v1::ReleaseRequest ReleaseOf(const std::string& id) {
  v1::ReleaseRequest r;
  r.set_id(id);
  return r;
}

v1::RenewRequest RenewOf(const std::string& id) {
  v1::RenewRequest r;
  r.set_id(id);
  return r;
}

v1::ReadRequest ReadOf(const std::string& id) {
  v1::ReadRequest r;
  r.set_id(id);
  return r;
}

// A client region of `bytes` for the duration of one row.
SharedRegion MakeRegion(size_t bytes) {
  absl::StatusOr<SharedRegion> region = SharedRegion::Create(bytes);
  EXPECT_TRUE(region.ok()) << region.status();
  return *std::move(region);
}

// Something in /dev/shm that is not a segment, under a name of its own;
// removed with this object.
class DevShmEntry {
 public:
  enum class Kind { kDirectory, kSymlink, kSocket, kFifo, kOtherUidFile };

  explicit DevShmEntry(Kind kind)
      : name_(absl::StrCat("/asarray-test-entry-", getpid(), "-", next_++)),
        path_(absl::StrCat("/dev/shm", name_)) {
    switch (kind) {
      case Kind::kDirectory:
        EXPECT_EQ(mkdir(path_.c_str(), 0700), 0) << std::strerror(errno);
        break;
      case Kind::kSymlink:
        target_.emplace(MakeRegion(64));  // a real segment of the caller's
        EXPECT_EQ(symlink(absl::StrCat("/dev/shm", target_->name()).c_str(), path_.c_str()), 0);
        break;
      case Kind::kSocket: {
        socket_ = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::memcpy(addr.sun_path, path_.data(), path_.size());
        EXPECT_EQ(bind(socket_, reinterpret_cast<const sockaddr*>(&addr), sizeof(addr)), 0);
        break;
      }
      case Kind::kFifo:
        EXPECT_EQ(mkfifo(path_.c_str(), 0600), 0) << std::strerror(errno);
        break;
      case Kind::kOtherUidFile: {
        // Mode 0 and, where this test may, another owner: either way the
        // caller's own uid cannot have it.
        const int fd = open(path_.c_str(), O_CREAT | O_EXCL | O_RDWR | O_CLOEXEC, 0);
        EXPECT_GE(fd, 0) << std::strerror(errno);
        EXPECT_EQ(ftruncate(fd, 64), 0);
        if (geteuid() == 0) {
          EXPECT_EQ(fchown(fd, 65534, 65534), 0);
        }
        close(fd);
        break;
      }
    }
  }
  ~DevShmEntry() {
    if (socket_ >= 0) close(socket_);
    if (rmdir(path_.c_str()) != 0) unlink(path_.c_str());
  }
  DevShmEntry(const DevShmEntry&) = delete;
  DevShmEntry& operator=(const DevShmEntry&) = delete;

  const std::string& name() const { return name_; }

 private:
  static inline std::atomic<int> next_{0};
  const std::string name_;
  const std::string path_;
  std::optional<SharedRegion> target_;
  int socket_ = -1;
};

// A region source naming a DevShmEntry of `kind`, over gRPC and the local transport.
absl::Status ConvertEntry(Rpc& r, DevShmEntry::Kind kind) {
  DevShmEntry entry(kind);
  return r.ConvertBothWays(Region(entry.name(), 0, 16, {4}));
}

// An inline float32 broadcast of `elements` (stride 0) over 4 bytes.
v1::ConvertRequest Broadcast(int64_t elements, bool return_data) {
  v1::ConvertRequest request = Inline(v1::DTYPE_FLOAT32, {elements}, {0}, 0, 4);
  request.set_return_data(return_data);
  return request;
}

// --- The table -------------------------------------------------------------------

struct BadRequest {
  const char* name;
  std::function<absl::Status(Rpc&)> send;
  Code code;
  const char* says;  // a substring of the message
};

void PrintTo(const BadRequest& row, std::ostream* os) { *os << row.name; }

const std::vector<BadRequest>& Table() {
  static const auto* table = new std::vector<BadRequest>{
      // Convert: the request itself.
      {"ConvertWithoutSource", [](Rpc& r) { return r.Convert({}); }, Code::kInvalidArgument,
       "no source"},
      {"ConvertUnparseableBytes",
       [](Rpc& r) { return r.RawUnary("/asarray.v1.AsArray/Convert", "\x0a\xff\xff\xff\x0f"); },
       Code::kInvalidArgument, "does not parse"},
      {"ConvertOverTheMessageLimit",
       [](Rpc& r) {
         return r.Convert(Inline(v1::DTYPE_UINT8, {kMaxMessage + 1}, {1}, 0, kMaxMessage + 1));
       },
       Code::kResourceExhausted, "larger than max"},
      // Convert: inline arrays.
      {"InlineDtypeUnspecified",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_UNSPECIFIED, {4}, {1}, 0, 16)); },
       Code::kInvalidArgument, "dtype"},
      {"InlineDtypeUnknown",
       [](Rpc& r) { return r.Convert(Inline(static_cast<v1::DType>(99), {4}, {1}, 0, 16)); },
       Code::kInvalidArgument, "dtype"},
      {"InlineStorageShort",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_FLOAT32, {4}, {1}, 0, 12)); },
       Code::kInvalidArgument, "needs exactly 16"},
      {"InlineStorageLong",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_FLOAT32, {4}, {1}, 0, 20)); },
       Code::kInvalidArgument, "needs exactly 16"},
      {"InlineNegativeSize",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_FLOAT32, {-1}, {1}, 0, 0)); },
       Code::kInvalidArgument, "negative size"},
      {"InlineStridesRankMismatch",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_FLOAT32, {2, 2}, {1}, 0, 16)); },
       Code::kInvalidArgument, "dims but strides"},
      {"InlineNegativeOffset",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_FLOAT32, {4}, {1}, -1, 16)); },
       Code::kInvalidArgument, "negative"},
      {"InlineElementCountOverflows",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_FLOAT32, {INT64_MAX, 4}, {1, 1}, 0, 16)); },
       Code::kInvalidArgument, "more elements than int64"},
      {"InlineStrideOverflows",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_FLOAT32, {4}, {INT64_MAX / 2}, 0, 16)); },
       Code::kInvalidArgument, "overflow"},
      {"InlineOffsetOverflows",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_FLOAT64, {1}, {1}, INT64_MAX, 8)); },
       Code::kInvalidArgument, "more bytes than int64"},
      {"InlineRankPastTheMaximum",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_UINT8, Dims(65, 1), Dims(65, 1), 0, 1)); },
       Code::kInvalidArgument, "exceeds the maximum"},
      {"InlineReachesBeforeStorage",
       [](Rpc& r) { return r.Convert(Inline(v1::DTYPE_FLOAT32, {4}, {-1}, 0, 16)); },
       Code::kInvalidArgument, "before the start"},
      // Convert: options.
      {"OptionsDtypeUnknown",
       [](Rpc& r) {
         return r.Convert(
             WithOptions(FourFloats(), [](v1::Options* o) { o->set_dtype(static_cast<v1::DType>(42)); }));
       },
       Code::kInvalidArgument, "dtype"},
      {"OptionsDeviceUnknown",
       [](Rpc& r) {
         return r.Convert(WithOptions(FourFloats(), [](v1::Options* o) { o->set_device("tpu"); }));
       },
       Code::kInvalidArgument, "unknown device"},
      {"OptionsDeviceOrdinalMissing",
       [](Rpc& r) {
         return r.Convert(WithOptions(FourFloats(), [](v1::Options* o) { o->set_device("cuda:"); }));
       },
       Code::kInvalidArgument, "unknown device"},
      {"OptionsDeviceOrdinalNegative",
       [](Rpc& r) {
         return r.Convert(
             WithOptions(FourFloats(), [](v1::Options* o) { o->set_device("cuda:-1"); }));
       },
       Code::kInvalidArgument, "unknown device"},
      {"OptionsDeviceUpperCase",
       [](Rpc& r) {
         return r.Convert(WithOptions(FourFloats(), [](v1::Options* o) { o->set_device("CPU"); }));
       },
       Code::kInvalidArgument, "unknown device"},
      {"OptionsCopyFalseOnInlineBytes",
       [](Rpc& r) {
         return r.Convert(WithOptions(FourFloats(), [](v1::Options* o) { o->set_copy(false); }));
       },
       Code::kFailedPrecondition, "inline"},
      {"OptionsRequiresGradOnIntegers",
       [](Rpc& r) {
         return r.Convert(WithOptions(Inline(v1::DTYPE_INT32, {4}, {1}, 0, 16),
                                      [](v1::Options* o) { o->set_requires_grad(true); }));
       },
       Code::kInvalidArgument, "requires_grad"},
      {"OptionsCudaDeviceWithoutBackend",
       [](Rpc& r) {
         return r.Convert(WithOptions(FourFloats(), [](v1::Options* o) { o->set_device("cuda:0"); }));
       },
       Code::kFailedPrecondition, "no CUDA device"},
      {"CudaIpcSourceWithoutDtype",
       [](Rpc& r) {
         v1::ConvertRequest request;
         request.mutable_source()->mutable_cuda_ipc()->set_ipc_handle(std::string(64, '\0'));
         return r.Convert(request);
       },
       Code::kInvalidArgument, "dtype"},
      // Convert: literals.
      {"LiteralWithoutNodes", [](Rpc& r) { return r.Convert(LiteralRequest([](v1::Literal*) {})); },
       Code::kInvalidArgument, "literal"},
      {"LiteralNodeWithoutValue",
       [](Rpc& r) { return r.Convert(LiteralRequest([](v1::Literal* l) { l->add_nodes(); })); },
       Code::kInvalidArgument, "literal"},
      {"LiteralNotANumber",
       [](Rpc& r) {
         return r.Convert(LiteralRequest([](v1::Literal* l) {
           l->add_nodes()->set_list_length(1);
           l->add_nodes()->set_not_a_number("the string \"a\"");
         }));
       },
       Code::kInvalidArgument, "string"},
      {"LiteralTooDeep",
       [](Rpc& r) {
         return r.Convert(LiteralRequest([](v1::Literal* l) {
           for (int i = 0; i < 90; ++i) l->add_nodes()->set_list_length(1);
           l->add_nodes()->set_int_value(1);
         }));
       },
       Code::kInvalidArgument, "deeper"},
      {"LiteralListLongerThanItsNodes",
       [](Rpc& r) {
         return r.Convert(LiteralRequest([](v1::Literal* l) { Nodes(l, {-1, 1}, 1); }));
       },
       Code::kInvalidArgument, "only 1 nodes follow"},
      {"LiteralNodesAfterTheEnd",
       [](Rpc& r) { return r.Convert(LiteralRequest([](v1::Literal* l) { Nodes(l, {1, 2}, 0); })); },
       Code::kInvalidArgument, "literal"},
      {"LiteralRagged",
       [](Rpc& r) {
         // [[1, 2], [3]]
         return r.Convert(LiteralRequest([](v1::Literal* l) {
           Nodes(l, {2, 2}, 2);
           l->add_nodes()->set_int_value(1);
           l->add_nodes()->set_int_value(2);
           l->add_nodes()->set_list_length(1);
           l->add_nodes()->set_int_value(3);
         }));
       },
       Code::kInvalidArgument, "index"},
      {"LiteralIntegerOverflowsDtype",
       [](Rpc& r) {
         v1::ConvertRequest request =
             LiteralRequest([](v1::Literal* l) { Nodes(l, {1, 300}, 1); });
         request.mutable_options()->set_dtype(v1::DTYPE_INT8);
         return r.Convert(request);
       },
       Code::kInvalidArgument, "overflow"},
      {"LiteralComplexIntoRealDtype",
       [](Rpc& r) {
         v1::ConvertRequest request = LiteralRequest([](v1::Literal* l) {
           l->add_nodes()->mutable_complex_value()->set_imag(1);
         });
         request.mutable_options()->set_dtype(v1::DTYPE_FLOAT32);
         return r.Convert(request);
       },
       Code::kInvalidArgument, "complex"},
      // Convert: shared-memory regions.
      {"RegionNameRelative",
       [](Rpc& r) { return r.Convert(Region("relative", 0, 16, {4})); }, Code::kInvalidArgument,
       "must start with '/'"},
      {"RegionNameWithSlash", [](Rpc& r) { return r.Convert(Region("/a/b", 0, 16, {4})); },
       Code::kInvalidArgument, "may hold only"},
      {"RegionNameWithDots", [](Rpc& r) { return r.Convert(Region("/x..y", 0, 16, {4})); },
       Code::kInvalidArgument, "'..'"},
      {"RegionNameEmpty", [](Rpc& r) { return r.Convert(Region("", 0, 16, {4})); },
       Code::kInvalidArgument, "must start with '/'"},
      {"RegionNameTooLong",
       [](Rpc& r) { return r.Convert(Region("/" + std::string(300, 'a'), 0, 16, {4})); },
       Code::kInvalidArgument, "longer than 255"},
      {"RegionNameWithSpace", [](Rpc& r) { return r.Convert(Region("/a b", 0, 16, {4})); },
       Code::kInvalidArgument, "may hold only"},
      {"RegionNameWithNul",
       [](Rpc& r) { return r.Convert(Region(std::string("/ab\0cd", 6), 0, 16, {4})); },
       Code::kInvalidArgument, "may hold only"},
      {"RegionMissing",
       [](Rpc& r) { return r.Convert(Region("/asarray-no-such-segment", 0, 16, {4})); },
       Code::kNotFound, "asarray-no-such-segment"},
      {"RegionPastItsSegment",
       [](Rpc& r) {
         SharedRegion region = MakeRegion(64);
         return r.Convert(Region(region.name(), 32, 64, {8}));
       },
       Code::kInvalidArgument, "outside segment"},
      {"RegionOffsetWrapsAround",
       [](Rpc& r) {
         SharedRegion region = MakeRegion(64);
         return r.Convert(Region(region.name(), UINT64_MAX - 8, 16, {4}));
       },
       Code::kInvalidArgument, "outside segment"},
      {"RegionTooSmallForTheLayout",
       [](Rpc& r) {
         SharedRegion region = MakeRegion(64);
         return r.Convert(Region(region.name(), 0, 64, {17}));
       },
       Code::kInvalidArgument, "too small"},
      {"RegionCopyPastTheQuota",
       [](Rpc& r) {
         SharedRegion region = MakeRegion(kQuota + 4096);
         v1::ConvertRequest request =
             Region(region.name(), 0, kQuota + 4096, {static_cast<int64_t>(kQuota / 4 + 1)});
         request.mutable_options()->set_copy(true);
         return r.Convert(request);
       },
       Code::kResourceExhausted, "quota"},
      {"ReturnDataPastTheMessageLimit",
       [](Rpc& r) {
         SharedRegion region = MakeRegion(kMaxMessage);
         v1::ConvertRequest request =
             Region(region.name(), 0, kMaxMessage, {static_cast<int64_t>(kMaxMessage / 4)});
         request.set_return_data(true);
         return r.Convert(request);
       },
       Code::kResourceExhausted, "ConvertToData"},
      // Names of things that are not segments, and of other uids' segments.
      {"RegionNameIsTheShmDirectory",
       [](Rpc& r) { return r.ConvertBothWays(Region("/.", 0, 16, {4})); },
       Code::kInvalidArgument, "directory"},
      {"RegionNameIsADirectory",
       [](Rpc& r) { return ConvertEntry(r, DevShmEntry::Kind::kDirectory); },
       Code::kInvalidArgument, "directory"},
      {"RegionNameIsASymlinkToASegment",
       [](Rpc& r) { return ConvertEntry(r, DevShmEntry::Kind::kSymlink); },
       Code::kInvalidArgument, "symbolic link"},
      {"RegionNameIsASocket",
       [](Rpc& r) { return ConvertEntry(r, DevShmEntry::Kind::kSocket); },
       Code::kInvalidArgument, "opening client segment"},
      {"RegionNameIsAFifo", [](Rpc& r) { return ConvertEntry(r, DevShmEntry::Kind::kFifo); },
       Code::kInvalidArgument, "FIFO"},
      {"RegionNameIsAnotherUidsFile",
       [](Rpc& r) { return ConvertEntry(r, DevShmEntry::Kind::kOtherUidFile); },
       Code::kPermissionDenied, "client segment"},
      {"RegionName64KiB",
       [](Rpc& r) { return r.Convert(Region("/" + std::string(65535, 'a'), 0, 16, {4})); },
       Code::kInvalidArgument, "(65536 bytes)"},
      // (A local-transport datagram holds at most 64 KiB.)
      {"RegionName60000Bytes",
       [](Rpc& r) { return r.ConvertBothWays(Region("/" + std::string(59999, 'a'), 0, 16, {4})); },
       Code::kInvalidArgument, "(60000 bytes)"},
      // Views whose element bytes exceed int64: once a heap overflow.
      {"BroadcastOf2To61FloatsAsData",
       [](Rpc& r) { return r.Convert(Broadcast(int64_t{1} << 61, true)); },
       Code::kResourceExhausted, "more bytes than int64"},
      {"BroadcastOf2To62FloatsAsData",
       [](Rpc& r) { return r.Convert(Broadcast(int64_t{1} << 62, true)); },
       Code::kResourceExhausted, "more bytes than int64"},
      {"BroadcastOf2To62FloatsAsAHandle",
       [](Rpc& r) { return r.ConvertBothWays(Broadcast(int64_t{1} << 62, false)); },
       Code::kResourceExhausted, "more bytes than int64"},
      {"BroadcastOf2To62FloatsStreamed",
       [](Rpc& r) { return r.ConvertToData(Broadcast(int64_t{1} << 62, false)); },
       Code::kResourceExhausted, "more bytes than int64"},
      {"BroadcastOf2To62FloatsUploaded",
       [](Rpc& r) {
         v1::ConvertUploadRequest header;
         header.mutable_header()->set_dtype(v1::DTYPE_FLOAT32);
         LayoutToProto(Layout{{int64_t{1} << 62}, {0}, 0}, header.mutable_header()->mutable_layout());
         header.mutable_header()->set_storage_size(4);
         v1::ConvertUploadRequest data;
         data.set_data(std::string(4, '\0'));
         return r.Upload({header, data});
       },
       Code::kResourceExhausted, "more bytes than int64"},
      {"BroadcastOfInt64MaxBools",
       [](Rpc& r) {
         v1::ConvertRequest request = Inline(v1::DTYPE_BOOL, {INT64_MAX}, {0}, 0, 1);
         request.set_return_data(true);
         return r.Convert(request);
       },
       Code::kResourceExhausted, "ConvertToData"},
      // Long values are quoted in part.
      {"TensorId64KiB", [](Rpc& r) { return r.Convert(TensorId(std::string(65536, 'f'))); },
       Code::kNotFound, "(65536 bytes)"},
      {"TensorId60000Bytes",
       [](Rpc& r) { return r.ConvertBothWays(TensorId(std::string(60000, 'f'))); },
       Code::kNotFound, "(60000 bytes)"},
      {"TensorId9000Bytes", [](Rpc& r) { return r.Read(ReadOf(std::string(9000, 'f'))); },
       Code::kNotFound, "(9000 bytes)"},
      {"Device64KiB",
       [](Rpc& r) {
         return r.Convert(WithOptions(FourFloats(), [](v1::Options* o) {
           o->set_device("cuda:" + std::string(65536, '9'));
         }));
       },
       Code::kInvalidArgument, "(65541 bytes)"},
      {"LiteralNotANumber64KiB",
       [](Rpc& r) {
         return r.Convert(LiteralRequest([](v1::Literal* l) {
           l->add_nodes()->set_not_a_number(std::string(65536, 's'));
         }));
       },
       Code::kInvalidArgument, "(65536 bytes)"},
      {"Rank64OfHugeSizes",
       [](Rpc& r) {
         return r.Convert(Inline(v1::DTYPE_FLOAT32, Dims(64, INT64_MAX), Dims(64, 1), 0, 4));
       },
       Code::kInvalidArgument, "(64 dims)"},
      // Convert: held tensors.
      {"TensorIdUnknown", [](Rpc& r) { return r.Convert(TensorId("0123456789abcdef")); },
       Code::kNotFound, "0123456789abcdef"},
      {"TensorIdEmpty", [](Rpc& r) { return r.Convert(TensorId("")); }, Code::kNotFound,
       "no tensor ''"},
      {"TensorIdReleased",
       [](Rpc& r) {
         const std::string id = r.LiveTensor();
         EXPECT_TRUE(r.client().Release(id).ok());
         return r.Convert(TensorId(id));
       },
       Code::kNotFound, "released"},
      {"TensorCastWithCopyFalse",
       [](Rpc& r) {
         const std::string id = r.LiveTensor();
         v1::ConvertRequest request = TensorId(id);
         request.mutable_options()->set_dtype(v1::DTYPE_FLOAT64);
         request.mutable_options()->set_copy(false);
         absl::Status s = r.Convert(request);
         EXPECT_TRUE(r.client().Release(id).ok());
         return s;
       },
       Code::kFailedPrecondition, "copy"},
      // ConvertToData: the same validation, streamed.
      {"ConvertToDataWithoutSource", [](Rpc& r) { return r.ConvertToData({}); },
       Code::kInvalidArgument, "no source"},
      {"ConvertToDataBadLayout",
       [](Rpc& r) { return r.ConvertToData(Inline(v1::DTYPE_FLOAT32, {4}, {-1}, 0, 16)); },
       Code::kInvalidArgument, "before the start"},
      {"ConvertToDataBadLiteral",
       [](Rpc& r) { return r.ConvertToData(LiteralRequest([](v1::Literal* l) { l->add_nodes(); })); },
       Code::kInvalidArgument, "literal"},
      {"ConvertToDataUnknownTensor",
       [](Rpc& r) { return r.ConvertToData(TensorId("feedface")); }, Code::kNotFound,
       "feedface"},
      {"ConvertToDataCopyFalseOnInlineBytes",
       [](Rpc& r) {
         return r.ConvertToData(WithOptions(FourFloats(), [](v1::Options* o) { o->set_copy(false); }));
       },
       Code::kFailedPrecondition, "inline"},
      // ConvertUpload.
      {"UploadEmptyStream", [](Rpc& r) { return r.Upload({}); }, Code::kInvalidArgument,
       "before its header"},
      {"UploadDataBeforeHeader", [](Rpc& r) { return r.Upload({Data(10)}); },
       Code::kInvalidArgument, "before its header"},
      {"UploadTwoHeaders", [](Rpc& r) { return r.Upload({Header(10), Header(10)}); },
       Code::kInvalidArgument, "second header"},
      {"UploadDeclaredSizeWrong",
       [](Rpc& r) { return r.Upload({Header(v1::DTYPE_UINT8, 10, 11), Data(11)}); },
       Code::kInvalidArgument, "needs exactly 10"},
      {"UploadDtypeUnknown",
       [](Rpc& r) { return r.Upload({Header(static_cast<v1::DType>(77), 10, 10), Data(10)}); },
       Code::kInvalidArgument, "dtype"},
      {"UploadBadOptions",
       [](Rpc& r) {
         v1::ConvertUploadRequest header = Header(10);
         header.mutable_header()->mutable_options()->set_device("gpu");
         return r.Upload({header, Data(10)});
       },
       Code::kInvalidArgument, "unknown device"},
      {"UploadCopyFalse",
       [](Rpc& r) {
         v1::ConvertUploadRequest header = Header(10);
         header.mutable_header()->mutable_options()->set_copy(false);
         return r.Upload({header, Data(10)});
       },
       Code::kFailedPrecondition, "inline"},
      {"UploadPastTheDeclaredSize",
       [](Rpc& r) { return r.Upload({Header(100), Data(60), Data(60)}); },
       Code::kInvalidArgument, "past the declared"},
      {"UploadEndsEarly", [](Rpc& r) { return r.Upload({Header(100), Data(40), Data(40)}); },
       Code::kInvalidArgument, "80 of 100"},
      {"UploadPastTheQuota", [](Rpc& r) { return r.Upload({Header(kQuota + 1), Data(10)}); },
       Code::kResourceExhausted, "quota"},
      {"UploadUnparseableBytes",
       [](Rpc& r) {
         return r.RawStream("/asarray.v1.AsArray/ConvertUpload", {std::string("\x12\x80", 2)});
       },
       Code::kInvalidArgument, "does not parse"},
      {"UploadChunkCutShort",
       [](Rpc& r) {
         // Declares 11 bytes of data and carries 10.
         return r.RawStream("/asarray.v1.AsArray/ConvertUpload",
                            {Header(10).SerializeAsString(),
                             std::string("\x12\x0b", 2) + std::string(10, 'x')});
       },
       Code::kInvalidArgument, "does not parse"},
      {"UploadChunkOverTheMessageLimit",
       [](Rpc& r) { return r.Upload({Header(2 * kMaxMessage), Data(kMaxMessage + 1)}); },
       Code::kResourceExhausted, "larger than max"},
      // Read.
      {"ReadUnknownId", [](Rpc& r) { return r.Read(ReadOf("0123")); }, Code::kNotFound,
       "no tensor '0123'"},
      {"ReadEmptyId", [](Rpc& r) { return r.Read(ReadOf("")); }, Code::kNotFound,
       "no tensor ''"},
      {"ReadReleasedId",
       [](Rpc& r) {
         const std::string id = r.LiveTensor();
         EXPECT_TRUE(r.client().Release(id).ok());
         return r.Read(ReadOf(id));
       },
       Code::kNotFound, "released"},
      {"ReadUnparseableBytes",
       [](Rpc& r) {
         // A server stream's request must parse too; sent as a unary call.
         return r.RawUnary("/asarray.v1.AsArray/Read", "\x12\x80");
       },
       Code::kInvalidArgument, "does not parse"},
      // Release.
      {"ReleaseUnknownId", [](Rpc& r) { return r.Release(ReleaseOf("0123")); }, Code::kNotFound,
       "no tensor '0123'"},
      {"ReleaseEmptyId", [](Rpc& r) { return r.Release(ReleaseOf("")); }, Code::kNotFound,
       "no tensor ''"},
      {"ReleaseTwice",
       [](Rpc& r) {
         const std::string id = r.LiveTensor();
         EXPECT_TRUE(r.client().Release(id).ok());
         return r.Release(ReleaseOf(id));
       },
       Code::kNotFound, "released"},
      {"ReleaseBatchWithAnUnknownId",
       [](Rpc& r) {
         v1::ReleaseRequest request = ReleaseOf(r.LiveTensor());
         request.add_more_ids("no-such-id");
         request.add_more_ids(r.LiveTensor());
         return r.Release(request);
       },
       Code::kNotFound, "no-such-id"},
      {"ReleaseUnparseableBytes",
       [](Rpc& r) { return r.RawUnary("/asarray.v1.AsArray/Release", "\xff\xff"); },
       Code::kInvalidArgument, "does not parse"},
      // Renew.
      {"RenewUnknownId", [](Rpc& r) { return r.Renew(RenewOf("0123")); }, Code::kNotFound,
       "no tensor '0123'"},
      {"RenewEmptyId", [](Rpc& r) { return r.Renew(RenewOf("")); }, Code::kNotFound,
       "no tensor ''"},
      {"RenewReleasedId",
       [](Rpc& r) {
         const std::string id = r.LiveTensor();
         EXPECT_TRUE(r.client().Release(id).ok());
         return r.Renew(RenewOf(id));
       },
       Code::kNotFound, "released"},
      {"RenewUnparseableBytes",
       [](Rpc& r) { return r.RawUnary("/asarray.v1.AsArray/Renew", "\x0a\x05" "ab"); },
       Code::kInvalidArgument, "does not parse"},
      // List and Stats take no fields: only their bytes can be malformed.
      {"ListUnparseableBytes",
       [](Rpc& r) { return r.RawUnary("/asarray.v1.AsArray/List", "\x0a\x7f"); },
       Code::kInvalidArgument, "does not parse"},
      {"StatsUnparseableBytes",
       [](Rpc& r) { return r.RawUnary("/asarray.v1.AsArray/Stats", "\x08"); },
       Code::kInvalidArgument, "does not parse"},
      // Names that do not exist.
      {"UnknownMethod", [](Rpc& r) { return r.RawUnary("/asarray.v1.AsArray/Delete", ""); },
       Code::kUnimplemented, ""},
      {"UnknownService", [](Rpc& r) { return r.RawUnary("/asarray.v2.AsArray/Convert", ""); },
       Code::kUnimplemented, ""},
      {"HealthOfUnknownService", [](Rpc& r) { return r.HealthOf("asarray.v9.Nothing"); },
       Code::kNotFound, ""},
  };
  return *table;
}

class BadInputTest : public ::testing::TestWithParam<BadRequest> {
 protected:
  // One server takes the whole table: each row must leave it serving.
  static void SetUpTestSuite() {
    server_ = TestServer::Start([](server::ServerOptions& o) {
                o.max_message_bytes = kMaxMessage;
                o.store.max_bytes = kQuota;
              }).release();
    ASSERT_NE(server_, nullptr);
  }
  static void TearDownTestSuite() {
    delete server_;
    server_ = nullptr;
  }

  static TestServer* server_;
};

TestServer* BadInputTest::server_ = nullptr;

TEST_P(BadInputTest, GetsItsCodeAndLeavesNothing) {
  ASSERT_NE(server_, nullptr);
  const BadRequest& row = GetParam();
  const server::StoreStats before = server_->server().store().Stats();
  absl::Status status;
  {
    Rpc rpc(*server_);
    status = row.send(rpc);
    EXPECT_TRUE(rpc.client().Health().ok()) << "the server stopped serving";
  }
  EXPECT_EQ(status.code(), row.code) << status;
  EXPECT_THAT(status.message(), HasSubstr(row.says));
  // A message quotes at most 128 bytes of any request value.
  EXPECT_LE(status.message().size(), 600u) << status.message().substr(0, 1000);
  // When gRPC itself ends a call (a message past the limit), the client has
  // its status before the server's reactor is done with the call and its
  // segment: wait for the server to settle, then compare.
  const auto settled = [&] {
    const server::StoreStats now = server_->server().store().Stats();
    return now.tensors == before.tensors && now.segments == before.segments &&
           now.bytes_in_use == before.bytes_in_use && now.client_regions == before.client_regions &&
           server_->SegmentsInDevShm() == 0;
  };
  Eventually(settled);
  const server::StoreStats after = server_->server().store().Stats();
  EXPECT_EQ(after.tensors, before.tensors);
  EXPECT_EQ(after.segments, before.segments);
  EXPECT_EQ(after.bytes_in_use, before.bytes_in_use);
  EXPECT_EQ(after.client_regions, before.client_regions);
  EXPECT_EQ(server_->SegmentsInDevShm(), 0);
}

INSTANTIATE_TEST_SUITE_P(AllRpcs, BadInputTest, ::testing::ValuesIn(Table()),
                         [](const ::testing::TestParamInfo<BadRequest>& p) {
                           return std::string(p.param.name);
                         });

TEST(BadInputTable, KeepsAtLeastFortyRows) { EXPECT_GE(Table().size(), 40u); }

// Every errno an operation on a caller's name or descriptor can fail with
// is the caller's to fix: none may read as a fault of the server.
TEST(CallerErrnoStatus, NoErrnoIsInternal) {
  for (int err = 1; err < 134; ++err) {
    const absl::Status s = CallerErrnoStatus(err, "opening client segment '/x'");
    EXPECT_NE(s.code(), Code::kInternal) << err << ": " << s;
    EXPECT_NE(s.code(), Code::kOk) << err;
    EXPECT_THAT(s.message(), HasSubstr(std::strerror(err)));
  }
  EXPECT_EQ(CallerErrnoStatus(ENOENT, "x").code(), Code::kNotFound);
  EXPECT_EQ(CallerErrnoStatus(EACCES, "x").code(), Code::kPermissionDenied);
  EXPECT_EQ(CallerErrnoStatus(ELOOP, "x").code(), Code::kInvalidArgument);
  EXPECT_EQ(CallerErrnoStatus(ENXIO, "x").code(), Code::kInvalidArgument);
  EXPECT_EQ(CallerErrnoStatus(EISDIR, "x").code(), Code::kInvalidArgument);
  EXPECT_EQ(CallerErrnoStatus(EBUSY, "x").code(), Code::kFailedPrecondition);
}

// A TTL past what int64 milliseconds hold is the longest lease there is,
// not the default one (it once wrapped negative).
TEST(RenewExtremes, TtlsPastInt64GetTheMaximumLease) {
  std::unique_ptr<TestServer> server = TestServer::Start([](server::ServerOptions& o) {
    o.store.default_ttl = absl::Minutes(1);
    o.store.max_ttl = absl::Hours(2);
  });
  ASSERT_NE(server, nullptr);
  Rpc rpc(*server);
  const std::string id = rpc.LiveTensor();
  auto stub = v1::AsArray::NewStub(
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  for (uint64_t ttl : {uint64_t{1} << 63, UINT64_MAX, uint64_t{INT64_MAX}}) {
    grpc::ClientContext context;
    v1::RenewRequest request;
    request.set_id(id);
    request.set_ttl_ms(ttl);
    v1::RenewResponse response;
    const int64_t now = absl::ToUnixMillis(absl::Now());
    ASSERT_TRUE(stub->Renew(&context, request, &response).ok()) << ttl;
    EXPECT_GE(response.lease_expires_unix_ms(), now + absl::ToInt64Milliseconds(absl::Hours(2)))
        << ttl;
    EXPECT_LE(response.lease_expires_unix_ms(), absl::ToUnixMillis(absl::Now() + absl::Hours(2)))
        << ttl;
  }
  v1::ReleaseRequest release;
  release.set_id(id);
  EXPECT_TRUE(rpc.Release(release).ok());
}

// A stock client (default limits: 4 MiB a message) reads any tensor at any
// chunk_size: no streamed message exceeds 4 MiB, handle included.
TEST(StockClient, ReadsAtTheLargestChunkSizeWithinItsDefaultLimits) {
  std::unique_ptr<TestServer> server = TestServer::Start();
  ASSERT_NE(server, nullptr);
  auto stub = v1::AsArray::NewStub(
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  // 12 MiB of elements in 4 bytes of storage, with a 64-dim layout so that
  // the handle is as large as handles get.
  Dims shape(64, 1), strides(64, 0);
  shape[0] = 3 << 20;
  v1::ConvertRequest convert = Inline(v1::DTYPE_FLOAT32, shape, strides, 0, 4);
  v1::ConvertResponse converted;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(stub->Convert(&context, convert, &converted).ok());
  }
  const uint64_t want = uint64_t{3} << 22;
  auto drain = [&](std::unique_ptr<grpc::ClientReader<v1::ReadResponse>> reader) {
    v1::ReadResponse message;
    uint64_t got = 0;
    int messages = 0;
    while (reader->Read(&message)) {
      EXPECT_LE(message.ByteSizeLong(), server::kMaxStreamMessageBytes);
      EXPECT_EQ(message.has_handle(), messages == 0);
      got += message.data().size();
      ++messages;
    }
    const grpc::Status status = reader->Finish();
    EXPECT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(got, want);
    return messages;
  };
  for (uint64_t chunk : {uint64_t{4} << 20, (uint64_t{4} << 20) + 1, UINT64_MAX}) {
    grpc::ClientContext context;
    v1::ReadRequest read;
    read.set_id(converted.handle().id());
    read.set_chunk_size(chunk);
    EXPECT_GE(drain(stub->Read(&context, read)), 3) << chunk;
  }
  grpc::ClientContext context;
  EXPECT_GE(drain(stub->ConvertToData(&context, convert)), 12);
}

// A chunk_size smaller than one element still moves one element a message
// (it once sent empty messages forever).
TEST(StockClient, ChunksSmallerThanAnElementCarryOneEach) {
  std::unique_ptr<TestServer> server = TestServer::Start();
  ASSERT_NE(server, nullptr);
  auto stub = v1::AsArray::NewStub(
      grpc::CreateChannel(server->address(), grpc::InsecureChannelCredentials()));
  v1::ConvertResponse converted;
  {
    grpc::ClientContext context;
    ASSERT_TRUE(
        stub->Convert(&context, Inline(v1::DTYPE_FLOAT64, {4}, {1}, 0, 32), &converted).ok());
  }
  grpc::ClientContext context;
  v1::ReadRequest read;
  read.set_id(converted.handle().id());
  read.set_chunk_size(1);
  auto reader = stub->Read(&context, read);
  v1::ReadResponse message;
  std::vector<size_t> sizes;
  while (reader->Read(&message)) sizes.push_back(message.data().size());
  EXPECT_TRUE(reader->Finish().ok());
  EXPECT_EQ(sizes, (std::vector<size_t>{8, 8, 8, 8}));
}

}  // namespace
}  // namespace asarray::testing
