#include "client/client.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "absl/synchronization/mutex.h"
#include "core/cast.h"
#include "core/status_macros.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "grpcpp/security/credentials.h"
#include "wire/posix_util.h"
#include "wire/socket_path.h"

namespace asarray {

// --- SharedRegion -----------------------------------------------------------

absl::StatusOr<SharedRegion> SharedRegion::CreateMemfd(size_t bytes) {
  SharedRegion region;
  region.fd_ = memfd_create("asarray-client", MFD_CLOEXEC | MFD_ALLOW_SEALING);
  if (region.fd_ < 0) return ErrnoStatus(errno, "creating a memfd");
  region.size_ = bytes;
  if (ftruncate(region.fd_, static_cast<off_t>(bytes)) != 0) {
    return ErrnoStatus(errno, absl::StrCat("sizing a memfd of ", bytes, " bytes"));
  }
  if (fcntl(region.fd_, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW) != 0) {
    return ErrnoStatus(errno, "sealing a memfd");
  }
  if (bytes > 0) {
    const int err = posix_fallocate(region.fd_, 0, static_cast<off_t>(bytes));
    if (err != 0) return ErrnoStatus(err, absl::StrCat("reserving ", bytes, " bytes of a memfd"));
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, region.fd_, 0);
    if (p == MAP_FAILED) return ErrnoStatus(errno, "mapping a memfd");
    region.data_ = p;
  }
  return region;
}

absl::StatusOr<SharedRegion> SharedRegion::Create(size_t bytes) {
  SharedRegion region;
  region.name_ = absl::StrCat("/asarray-client-", getpid(), "-", RandomHex128());
  region.fd_ = shm_open(region.name_.c_str(), O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (region.fd_ < 0) return ErrnoStatus(errno, "creating shared memory " + region.name_);
  region.size_ = bytes;
  if (bytes > 0) {
    const int err = posix_fallocate(region.fd_, 0, static_cast<off_t>(bytes));
    if (err != 0) {
      return ErrnoStatus(err, absl::StrCat("reserving ", bytes, " bytes of shared memory"));
    }
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, region.fd_, 0);
    if (p == MAP_FAILED) return ErrnoStatus(errno, "mapping shared memory");
    region.data_ = p;
  }
  return region;
}

SharedRegion::SharedRegion(SharedRegion&& other) noexcept { *this = std::move(other); }

SharedRegion& SharedRegion::operator=(SharedRegion&& other) noexcept {
  if (this != &other) {
    Reset();
    name_ = std::move(other.name_);
    fd_ = std::exchange(other.fd_, -1);
    data_ = std::exchange(other.data_, nullptr);
    size_ = std::exchange(other.size_, 0);
  }
  return *this;
}

SharedRegion::~SharedRegion() { Reset(); }

void SharedRegion::Reset() {
  if (data_ != nullptr) munmap(data_, size_);
  if (fd_ >= 0) {
    if (!name_.empty()) shm_unlink(name_.c_str());
    close(fd_);
  }
  data_ = nullptr;
  fd_ = -1;
}

// --- MappedTensor -----------------------------------------------------------

MappedTensor::MappedTensor(MappedTensor&& other) noexcept { *this = std::move(other); }

MappedTensor& MappedTensor::operator=(MappedTensor&& other) noexcept {
  if (this != &other) {
    Reset();
    handle_ = std::move(other.handle_);
    mapping_ = std::move(other.mapping_);
    mappings_ = std::move(other.mappings_);
    sizes_ = std::exchange(other.sizes_, ViewSizes{});
    storage_ = std::exchange(other.storage_, nullptr);
    cuda_ = std::move(other.cuda_);
    bytes_ = std::move(other.bytes_);
    link_ = std::move(other.link_);
  }
  return *this;
}

MappedTensor::~MappedTensor() { Reset(); }

void MappedTensor::Reset() {
  // Close before releasing: the server frees the memory when the lease ends.
  if (mappings_ != nullptr) mappings_->Done(std::move(mapping_));
  mapping_.reset();
  mappings_.reset();
  cuda_.reset();
  bytes_.reset();
  storage_ = nullptr;
  if (link_ != nullptr) Release().IgnoreError();  // best effort: the lease ends anyway
}

const void* MappedTensor::data() const { return mutable_data(); }

void* MappedTensor::mutable_data() const {
  if (storage_ == nullptr) return nullptr;
  return storage_ + handle_.layout.offset * static_cast<int64_t>(ItemSize(handle_.dtype));
}

int64_t MappedTensor::numel() const { return sizes_.numel; }

absl::StatusOr<std::string> MappedTensor::RowMajorBytes() const {
  std::string out(static_cast<size_t>(sizes_.nbytes), '\0');
  if (out.empty()) return out;
  const unsigned char* storage = storage_;
  std::string host;  // the device storage, copied over
  if (!handle_.cuda_ipc_handle.empty() && cuda_ == nullptr) {
    return absl::FailedPreconditionError(
        "this client cannot open CUDA IPC handles; read the tensor over gRPC (Client::ReadBytes)");
  }
  if (cuda_ != nullptr) {
    host.resize(cuda_->size());
    ASARRAY_RETURN_IF_ERROR(cuda_->CopyToHost(0, host.size(), host.data()));
    storage = reinterpret_cast<const unsigned char*>(host.data());
  }
  ASARRAY_RETURN_IF_ERROR(
      CopyRowMajorRange({storage, dtype(), handle_.layout}, 0, numel(), out.data()));
  return out;
}

// --- ClientLink ---------------------------------------------------------------

class ClientLink {
 public:
  ClientLink(std::shared_ptr<v1::AsArray::Stub> stub, const ClientOptions& options,
             std::string target, bool remote)
      : stub_(std::move(stub)), options_(options), target_(std::move(target)), remote_(remote) {}

  v1::AsArray::Stub* stub() const { return stub_.get(); }

  enum class Call { kUnary, kStream, kData, kDataStream };
  // Sets a call's deadline (and compression, for one that carries data).
  void Prepare(grpc::ClientContext* context, Call call) const {
    const bool stream = call == Call::kStream || call == Call::kDataStream;
    const absl::Duration timeout = stream ? options_.stream_timeout : options_.call_timeout;
    if (timeout != absl::InfiniteDuration()) {
      context->set_deadline(absl::ToChronoTime(absl::Now() + timeout));
    }
    if (options_.compress && (call == Call::kData || call == Call::kDataStream)) {
      context->set_compression_algorithm(GRPC_COMPRESS_GZIP);
    }
  }

  // A call's status, where UNAVAILABLE also says what this client expected
  // of the connection: the usual cause on TCP is a TLS mismatch.
  absl::Status Done(const grpc::Status& status) const {
    absl::Status out = FromGrpcStatus(status);
    if (out.code() != absl::StatusCode::kUnavailable || !remote_) {
      return out;
    }
    std::string hint;
    if (options_.tls()) {
      hint = absl::StrCat(
          " (TLS to ", target_, ": the server must speak TLS with a certificate that ",
          options_.tls_ca_file.empty() ? "the system's roots" : options_.tls_ca_file,
          " trusts, for this host name",
          options_.tls_cert_file.empty()
              ? "; a server that requires client certificates needs a certificate and key"
              : absl::StrCat(", and accept this client's certificate ", options_.tls_cert_file),
          ")");
    } else {
      hint = absl::StrCat(" (plaintext TCP to ", target_,
                          ": a server that serves TLS there closes the connection; give a "
                          "TLS CA bundle to connect with TLS)");
    }
    return absl::Status(out.code(), absl::StrCat(out.message(), hint));
  }
  bool local() const { return local_.valid(); }
  void set_local(UniqueFd socket) { local_ = std::move(socket); }

  // One call over the local transport: its response when OK, and the
  // descriptors that came with it in *received. One call at a time.
  absl::StatusOr<v1::LocalResponse> CallLocal(const v1::LocalRequest& request,
                                              absl::Span<const int> fds,
                                              std::vector<UniqueFd>* received) {
    std::string bytes;
    request.SerializeToString(&bytes);
    if (bytes.size() > kMaxLocalMessageBytes) {
      return absl::InvalidArgumentError(absl::StrCat("a request of ", bytes.size(),
                                                     " bytes is past the local transport's ",
                                                     kMaxLocalMessageBytes, "; send it over gRPC"));
    }
    absl::StatusOr<LocalDatagram> answer;
    {
      absl::MutexLock lock(&mu_);
      ASARRAY_RETURN_IF_ERROR(SendLocal(local_.get(), bytes, fds));
      answer = ReceiveLocal(local_.get(), kMaxLocalMessageBytes);
    }
    if (!answer.ok()) return answer.status();
    v1::LocalResponse response;
    if (!response.ParseFromString(answer->bytes)) {
      return absl::InternalError("the server's answer does not parse as a LocalResponse");
    }
    if (response.code() != 0) {
      return absl::Status(static_cast<absl::StatusCode>(response.code()), response.message());
    }
    if (received != nullptr) *received = std::move(answer->fds);
    return response;
  }

  absl::Status Release(const std::string& id) { return Release(absl::MakeConstSpan(&id, 1)); }
  // Every one of `ids`, kIdsPerCall a call.
  absl::Status Release(absl::Span<const std::string> ids) {
    absl::Status status;
    for (size_t at = 0; at < ids.size(); at += kIdsPerCall) {
      status.Update(ReleaseSome(ids.subspan(at, kIdsPerCall)));
    }
    return status;
  }

  // Ids a Release or Renew carries at most: a local datagram holds about
  // 1,900 of them.
  static constexpr size_t kIdsPerCall = 1024;

 private:
  absl::Status ReleaseSome(absl::Span<const std::string> ids) {
    v1::ReleaseRequest request;
    request.set_id(ids.front());
    for (size_t i = 1; i < ids.size(); ++i) request.add_more_ids(ids[i]);
    if (local()) {
      v1::LocalRequest local;
      *local.mutable_release() = request;
      return CallLocal(local, {}, nullptr).status();
    }
    grpc::ClientContext context;
    Prepare(&context, Call::kUnary);
    v1::ReleaseResponse response;
    return Done(stub_->Release(&context, request, &response));
  }

  const std::shared_ptr<v1::AsArray::Stub> stub_;
  const ClientOptions options_;
  const std::string target_;
  const bool remote_;  // TCP
  absl::Mutex mu_;
  UniqueFd local_;  // set once, before any call
};

absl::Status MappedTensor::Release() {
  if (link_ == nullptr) return absl::OkStatus();
  const absl::Status status = link_->Release(handle_.id);
  link_.reset();
  return status;
}

// --- Client -----------------------------------------------------------------

Client::Client(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options,
               std::string target, bool remote)
    : channel_(std::move(channel)),
      stub_(v1::AsArray::NewStub(channel_)),
      link_(std::make_shared<ClientLink>(stub_, options, std::move(target), remote)),
      remote_(remote) {}

namespace {

// Retries on UNAVAILABLE, with backoff, of the calls that change nothing on
// the server or can be repeated safely.
constexpr char kRetryServiceConfig[] = R"json({
  "methodConfig": [{
    "name": [
      {"service": "asarray.v1.AsArray", "method": "Read"},
      {"service": "asarray.v1.AsArray", "method": "ConvertToData"},
      {"service": "asarray.v1.AsArray", "method": "Renew"},
      {"service": "asarray.v1.AsArray", "method": "List"},
      {"service": "asarray.v1.AsArray", "method": "Stats"},
      {"service": "grpc.health.v1.Health", "method": "Check"}
    ],
    "retryPolicy": {
      "maxAttempts": 4,
      "initialBackoff": "0.1s",
      "maxBackoff": "2s",
      "backoffMultiplier": 2,
      "retryableStatusCodes": ["UNAVAILABLE"]
    }
  }]
})json";

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ChannelCredentials(
    const ClientOptions& options, bool unix_socket) {
  if (!options.tls()) return grpc::InsecureChannelCredentials();
  if (unix_socket) {
    return absl::InvalidArgumentError("TLS is for TCP addresses; a Unix socket needs none");
  }
  if (options.tls_cert_file.empty() != options.tls_key_file.empty()) {
    return absl::InvalidArgumentError(
        "a TLS client certificate needs its key, and a key its certificate");
  }
  grpc::SslCredentialsOptions ssl;
  if (!options.tls_ca_file.empty()) {
    ASARRAY_ASSIGN_OR_RETURN(ssl.pem_root_certs,
                             ReadSmallFile(options.tls_ca_file, "TLS CA bundle"));
  }
  if (!options.tls_cert_file.empty()) {
    ASARRAY_ASSIGN_OR_RETURN(ssl.pem_cert_chain,
                             ReadSmallFile(options.tls_cert_file, "TLS certificate"));
    ASARRAY_ASSIGN_OR_RETURN(ssl.pem_private_key, ReadSmallFile(options.tls_key_file, "TLS key"));
  }
  return grpc::SslCredentials(ssl);
}

}  // namespace

Client::~Client() = default;

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& address,
                                                        const ClientOptions& options) {
  const std::string target = address.empty() ? DefaultAddress() : address;
  absl::string_view path = target;
  const bool unix_socket = absl::ConsumePrefix(&path, "unix:");
  ASARRAY_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> credentials,
                           ChannelCredentials(options, unix_socket));
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  if (options.retry_idempotent) args.SetServiceConfigJSON(kRetryServiceConfig);
  if (options.keepalive_time > absl::ZeroDuration()) {
    args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS,
                static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_time)));
    args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 20000);
    args.SetInt(GRPC_ARG_KEEPALIVE_PERMIT_WITHOUT_CALLS, 1);
    args.SetInt(GRPC_ARG_HTTP2_MAX_PINGS_WITHOUT_DATA, 0);
  }
  auto channel = grpc::CreateCustomChannel(target, credentials, args);
  if (channel == nullptr)
    return absl::InvalidArgumentError("cannot create a channel to " + address);
  std::unique_ptr<Client> client(
      new Client(std::move(channel), options, target, /*remote=*/!unix_socket));
  // A remote client streams past 4 MiB: a server's message limit may be
  // small, and a message in flight over a network is best kept short.
  if (client->remote()) client->set_upload_threshold(4 << 20);
  if (options.local_transport && unix_socket && !absl::StartsWith(path, "@")) {
    // A server without one (or an older one) is served over gRPC alone.
    absl::StatusOr<UniqueFd> socket = ConnectLocal(LocalSocketPath(std::string(path)));
    if (socket.ok()) client->link_->set_local(*std::move(socket));
  }
  return client;
}

bool Client::has_local_transport() const { return link_->local(); }

namespace {

// `original`, or a copy in *copy that asks for a TTL lease of `ttl` when it
// asks for none.
template <typename Request>
const Request& WithLeaseTtl(const Request& original, const std::optional<absl::Duration>& ttl,
                            std::optional<Request>* copy) {
  if (!ttl.has_value() || original.has_ttl_ms()) return original;
  copy->emplace(original);
  (*copy)->set_ttl_ms(static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Milliseconds(*ttl))));
  return **copy;
}

// The descriptor a handle's memory is in: one of the request's `fds` for an
// alias, else one of the answer's; -1 for memory that has none.
absl::StatusOr<int> HandleFd(const HandleInfo& handle, absl::Span<const int> fds,
                             const std::vector<UniqueFd>& received) {
  if (!handle.has_fd) return -1;
  const size_t count = handle.fd_from_request ? fds.size() : received.size();
  if (handle.fd_index >= count) {
    return absl::InternalError(
        absl::StrCat("the handle names descriptor ", handle.fd_index, " of ", count));
  }
  return handle.fd_from_request ? fds[handle.fd_index] : received[handle.fd_index].get();
}

}  // namespace

absl::StatusOr<v1::ConvertResponse> Client::Convert(const v1::ConvertRequest& original,
                                                    absl::Span<const int> fds,
                                                    std::vector<UniqueFd>* received) {
  std::optional<v1::ConvertRequest> with_ttl;
  const v1::ConvertRequest& request = WithLeaseTtl(original, lease_ttl_, &with_ttl);
  // A request past one datagram goes over gRPC, unless descriptors go with it.
  const bool fits = request.ByteSizeLong() + 64 <= kMaxLocalMessageBytes;
  if (link_->local() && !request.return_data() && (fits || !fds.empty())) {
    v1::LocalRequest local;
    *local.mutable_convert() = request;
    ASARRAY_ASSIGN_OR_RETURN(v1::LocalResponse response, link_->CallLocal(local, fds, received));
    return std::move(*response.mutable_convert());
  }
  if (!fds.empty()) {
    return absl::FailedPreconditionError(
        "descriptors travel only over the local transport, which this client has not");
  }
  grpc::ClientContext context;
  link_->Prepare(&context, ClientLink::Call::kData);
  v1::ConvertResponse response;
  ASARRAY_RETURN_IF_ERROR(link_->Done(stub_->Convert(&context, request, &response)));
  return response;
}

absl::StatusOr<v1::ConvertBatchResponse> Client::ConvertBatch(
    const v1::ConvertBatchRequest& original, absl::Span<const int> fds,
    std::vector<UniqueFd>* received) {
  std::optional<v1::ConvertBatchRequest> with_ttl;
  const v1::ConvertBatchRequest& request = WithLeaseTtl(original, lease_ttl_, &with_ttl);
  const bool fits = request.ByteSizeLong() + 64 <= kMaxLocalMessageBytes;
  if (link_->local() && (fits || !fds.empty())) {
    v1::LocalRequest local;
    *local.mutable_convert_batch() = request;
    ASARRAY_ASSIGN_OR_RETURN(v1::LocalResponse response, link_->CallLocal(local, fds, received));
    return std::move(*response.mutable_convert_batch());
  }
  if (!fds.empty()) {
    return absl::FailedPreconditionError(
        "descriptors travel only over the local transport, which this client has not");
  }
  grpc::ClientContext context;
  link_->Prepare(&context, ClientLink::Call::kData);
  v1::ConvertBatchResponse response;
  ASARRAY_RETURN_IF_ERROR(link_->Done(stub_->ConvertBatch(&context, request, &response)));
  return response;
}

absl::StatusOr<std::vector<MappedTensor>> Client::ConvertAndMapBatch(
    const v1::ConvertBatchRequest& request, absl::Span<const int> fds) {
  if (remote_ && !lease_ttl_.has_value()) {
    // Kept on the server just long enough to read each back.
    v1::ConvertBatchRequest held = request;
    if (!held.has_ttl_ms()) held.set_ttl_ms(60000);
    ASARRAY_ASSIGN_OR_RETURN(const v1::ConvertBatchResponse response, ConvertBatch(held));
    std::vector<std::string> ids;
    for (const v1::TensorHandle& h : response.handles()) ids.push_back(h.id());
    std::vector<MappedTensor> out;
    absl::Status status;
    const auto read = [&](const v1::TensorHandle& h) -> absl::StatusOr<MappedTensor> {
      ASARRAY_ASSIGN_OR_RETURN(const HandleInfo handle, HandleFromProto(h));
      ASARRAY_ASSIGN_OR_RETURN(std::string bytes, ReadBytes(h.id()));
      return FromBytes(handle, std::move(bytes));
    };
    for (const v1::TensorHandle& h : response.handles()) {
      absl::StatusOr<MappedTensor> tensor = read(h);
      if (!tensor.ok()) {
        status = tensor.status();
        break;
      }
      out.push_back(*std::move(tensor));
    }
    if (!ids.empty()) status.Update(link_->Release(ids));
    if (!status.ok()) return status;
    return out;
  }
  std::vector<UniqueFd> received;
  ASARRAY_ASSIGN_OR_RETURN(const v1::ConvertBatchResponse response,
                           ConvertBatch(request, fds, &received));
  std::vector<MappedTensor> out;
  out.reserve(static_cast<size_t>(response.handles_size()));
  // Mapped in order; a failure releases the leases of the rest too.
  absl::Status status;
  const auto map = [&](const v1::TensorHandle& h) -> absl::StatusOr<MappedTensor> {
    ASARRAY_ASSIGN_OR_RETURN(const HandleInfo handle, HandleFromProto(h));
    if (remote_) return HeldRemotely(handle);
    ASARRAY_ASSIGN_OR_RETURN(const int fd, HandleFd(handle, fds, received));
    return Map(handle, /*owns_lease=*/true, fd);
  };
  for (const v1::TensorHandle& h : response.handles()) {
    absl::StatusOr<MappedTensor> tensor = map(h);
    if (!tensor.ok() && status.ok()) status = tensor.status();
    if (tensor.ok() && status.ok()) {
      out.push_back(*std::move(tensor));
    } else if (!tensor.ok()) {
      link_->Release(h.id()).IgnoreError();
    }
  }
  if (!status.ok()) return status;
  return out;
}

absl::StatusOr<v1::ConvertResponse> Client::Upload(const v1::ConvertUploadHeader& header,
                                                   const void* storage) {
  grpc::ClientContext context;
  link_->Prepare(&context, ClientLink::Call::kDataStream);
  v1::ConvertResponse response;
  std::unique_ptr<grpc::ClientWriter<v1::ConvertUploadRequest>> writer =
      stub_->ConvertUpload(&context, &response);
  v1::ConvertUploadRequest message;
  *message.mutable_header() = header;
  bool ok = writer->Write(message);
  const auto* bytes = static_cast<const char*>(storage);
  for (uint64_t sent = 0; ok && sent < header.storage_size();) {
    const uint64_t n = std::min<uint64_t>(chunk_size_, header.storage_size() - sent);
    message.set_data(bytes + sent, n);
    ok = writer->Write(message);
    sent += n;
    if (progress_) progress_(sent, header.storage_size());
  }
  writer->WritesDone();
  ASARRAY_RETURN_IF_ERROR(link_->Done(writer->Finish()));
  return response;
}

namespace {

// Maps [offset, offset + size) of `fd` into `tensor` (read-only if
// `writable` is false), through `mappings`, and checks that the handle's
// view lies inside.
absl::Status MapRange(const std::shared_ptr<MappingCache>& mappings, int fd, uint64_t offset,
                      uint64_t size, bool writable, const std::string& what, MappedTensor* tensor,
                      std::shared_ptr<FileMapping>* mapping, unsigned char** storage) {
  ASARRAY_ASSIGN_OR_RETURN(*mapping, mappings->Map(fd, offset, size, writable, what));
  *storage = (*mapping)->at(offset);
  // The handle's view must lie inside what was mapped.
  const HandleInfo& handle = tensor->handle();
  return CheckFitsStorage(handle.layout, ItemSize(handle.dtype), static_cast<int64_t>(size));
}

}  // namespace

absl::Status Client::RefuseRemote(absl::string_view what) const {
  return absl::FailedPreconditionError(
      absl::StrCat("this client is remote (TCP): ", what,
                   " needs memory shared with the server, on its host; send the bytes instead"));
}

absl::StatusOr<MappedTensor> Client::FromBytes(const HandleInfo& handle, std::string bytes) {
  MappedTensor tensor;
  tensor.handle_ = handle;
  tensor.handle_.layout.offset = 0;
  const Layout& layout = tensor.handle_.layout;
  const Layout row_major{layout.shape, ContiguousStrides(layout.shape), 0};
  ASARRAY_ASSIGN_OR_RETURN(tensor.sizes_, ComputeViewSizes(row_major, ItemSize(handle.dtype)));
  if (bytes.size() != static_cast<uint64_t>(tensor.sizes_.nbytes)) {
    return absl::InternalError(absl::StrCat("the server sent ", bytes.size(),
                                            " bytes for a result of ", tensor.sizes_.nbytes));
  }
  if (tensor.sizes_.numel == 0 || IsContiguous(layout.shape, layout.strides)) {
    tensor.bytes_ = std::make_unique<std::string>(std::move(bytes));
  } else {
    // The result's own strides (a transpose, a broadcast): the row-major
    // elements placed in storage of that layout.
    ASARRAY_ASSIGN_OR_RETURN(const ByteRange range,
                             ComputeByteRange(layout, ItemSize(handle.dtype)));
    if (range.begin != 0) {
      return absl::InternalError("the server's result has strides that reach before its start");
    }
    tensor.bytes_ = std::make_unique<std::string>(static_cast<size_t>(range.end), '\0');
    // A broadcast dimension (stride 0) holds one element: its first.
    Layout from = row_major, to = layout;
    for (size_t d = 0; d < to.shape.size(); ++d) {
      if (to.strides[d] == 0) from.shape[d] = to.shape[d] = 1;
    }
    ASARRAY_RETURN_IF_ERROR(
        CastCopy({bytes.data(), handle.dtype, from}, {tensor.bytes_->data(), handle.dtype, to}));
  }
  tensor.storage_ = reinterpret_cast<unsigned char*>(tensor.bytes_->data());
  return tensor;
}

absl::StatusOr<MappedTensor> Client::HeldRemotely(const HandleInfo& handle) {
  MappedTensor tensor;
  tensor.handle_ = handle;
  ASARRAY_ASSIGN_OR_RETURN(tensor.sizes_, ComputeViewSizes(handle.layout, ItemSize(handle.dtype)));
  tensor.link_ = link_;
  return tensor;
}

absl::StatusOr<MappedTensor> Client::ConvertRemote(const v1::ConvertRequest& request) {
  if (lease_ttl_.has_value()) {
    ASARRAY_ASSIGN_OR_RETURN(const v1::ConvertResponse held, Convert(request));
    ASARRAY_ASSIGN_OR_RETURN(const HandleInfo handle, HandleFromProto(held.handle()));
    return HeldRemotely(handle);
  }
  v1::ConvertRequest with_data = request;
  with_data.set_return_data(true);
  absl::StatusOr<v1::ConvertResponse> response = Convert(with_data);
  if (response.ok()) {
    ASARRAY_ASSIGN_OR_RETURN(const HandleInfo handle, HandleFromProto(response->handle()));
    return FromBytes(handle, std::move(*response->mutable_data()));
  }
  // Past one message: streamed instead.
  if (response.status().code() != absl::StatusCode::kResourceExhausted) return response.status();
  HandleInfo handle;
  ASARRAY_ASSIGN_OR_RETURN(std::string bytes, ConvertToData(request, &handle));
  return FromBytes(handle, std::move(bytes));
}

absl::StatusOr<MappedTensor> Client::Map(const HandleInfo& handle, bool owns_lease, int fd) {
  if (remote_) return RefuseRemote("mapping a handle");
  MappedTensor tensor;
  tensor.handle_ = handle;
  ASARRAY_ASSIGN_OR_RETURN(tensor.sizes_, ComputeViewSizes(handle.layout, ItemSize(handle.dtype)));
  if (owns_lease) tensor.link_ = link_;
  if (!handle.cuda_ipc_handle.empty()) {
    if (!ClientHasCuda()) return tensor;  // nothing this build can open
    ASARRAY_RETURN_IF_ERROR(CheckFitsStorage(handle.layout, ItemSize(handle.dtype),
                                             static_cast<int64_t>(handle.cuda_size)));
    ASARRAY_ASSIGN_OR_RETURN(tensor.cuda_,
                             CudaIpcMapping::Open(handle.cuda_ipc_handle, handle.device.index,
                                                  handle.cuda_offset, handle.cuda_size));
    tensor.storage_ = static_cast<unsigned char*>(tensor.cuda_->data());
    return tensor;
  }
  if (handle.has_fd) {
    if (fd < 0) {
      return absl::FailedPreconditionError(
          "the handle's memory is a file descriptor, and none came with it");
    }
    if (handle.fd_size == 0) return tensor;
    tensor.mappings_ = mappings_;
    ASARRAY_RETURN_IF_ERROR(MapRange(mappings_, fd, handle.fd_offset, handle.fd_size,
                                     /*writable=*/true, "the handle's memfd", &tensor,
                                     &tensor.mapping_, &tensor.storage_));
    return tensor;
  }
  if (handle.shm_name.empty()) {
    return absl::FailedPreconditionError("the handle names no shared memory to map");
  }
  if (handle.shm_size == 0) return tensor;
  int shm = shm_open(handle.shm_name.c_str(), O_RDWR | O_CLOEXEC, 0);
  const bool writable = shm >= 0;
  if (!writable) shm = shm_open(handle.shm_name.c_str(), O_RDONLY | O_CLOEXEC, 0);
  if (shm < 0) return ErrnoStatus(errno, "opening " + handle.shm_name);
  const UniqueFd owned(shm);
  tensor.mappings_ = mappings_;
  ASARRAY_RETURN_IF_ERROR(MapRange(mappings_, shm, handle.shm_offset, handle.shm_size, writable,
                                   handle.shm_name, &tensor, &tensor.mapping_, &tensor.storage_));
  return tensor;
}

absl::StatusOr<MappedTensor> Client::ConvertAndMap(const v1::ConvertRequest& request,
                                                   absl::Span<const int> fds) {
  if (remote_) return ConvertRemote(request);
  std::vector<UniqueFd> received;
  ASARRAY_ASSIGN_OR_RETURN(const v1::ConvertResponse response, Convert(request, fds, &received));
  ASARRAY_ASSIGN_OR_RETURN(const HandleInfo handle, HandleFromProto(response.handle()));
  ASARRAY_ASSIGN_OR_RETURN(const int fd, HandleFd(handle, fds, received));
  // The received descriptors close on return: the mapping keeps the memory.
  return Map(handle, /*owns_lease=*/true, fd);
}

absl::StatusOr<MappedTensor> Client::ConvertInline(const void* storage, size_t storage_bytes,
                                                   DType dtype, const Layout& layout,
                                                   const ConvertOptions& options) {
  // Send only the bytes the view touches, with the offset rebased onto them.
  Layout sent = layout;
  const unsigned char* begin = static_cast<const unsigned char*>(storage);
  size_t bytes = storage_bytes;
  absl::StatusOr<ByteRange> range = ComputeByteRange(layout, ItemSize(dtype));
  if (range.ok() && range->begin >= 0 && static_cast<uint64_t>(range->end) <= storage_bytes) {
    sent.offset -= range->begin / static_cast<int64_t>(ItemSize(dtype));
    begin += range->begin;
    bytes = static_cast<size_t>(range->end - range->begin);
  }
  if (bytes > upload_threshold_) {
    v1::ConvertUploadHeader header;
    header.set_dtype(DTypeToProto(dtype));
    LayoutToProto(sent, header.mutable_layout());
    header.set_storage_size(bytes);
    OptionsToProto(options, header.mutable_options());
    ASARRAY_ASSIGN_OR_RETURN(const v1::ConvertResponse response, Upload(header, begin));
    ASARRAY_ASSIGN_OR_RETURN(const HandleInfo handle, HandleFromProto(response.handle()));
    if (!remote_) return Map(handle, /*owns_lease=*/true);
    if (lease_ttl_.has_value()) return HeldRemotely(handle);
    // Read back, and let the server's copy go.
    absl::StatusOr<std::string> result = ReadBytes(handle.id);
    const absl::Status released = Release(handle.id);
    if (!result.ok()) return result.status();
    ASARRAY_RETURN_IF_ERROR(released);
    return FromBytes(handle, *std::move(result));
  }
  v1::ConvertRequest request;
  v1::InlineArray* array = request.mutable_source()->mutable_inline_array();
  array->set_dtype(DTypeToProto(dtype));
  LayoutToProto(sent, array->mutable_layout());
  array->set_storage(begin, bytes);
  OptionsToProto(options, request.mutable_options());
  return ConvertAndMap(request);
}

absl::StatusOr<MappedTensor> Client::ConvertLiteral(const Literal& literal,
                                                    const ConvertOptions& options) {
  v1::ConvertRequest request;
  ASARRAY_RETURN_IF_ERROR(LiteralToProto(literal, request.mutable_source()->mutable_literal()));
  OptionsToProto(options, request.mutable_options());
  return ConvertAndMap(request);
}

namespace {

// The fields a shared-memory and a CUDA source have in common.
template <typename ArrayProto>
void DescribeArray(uint64_t offset, uint64_t size, DType dtype, const Layout& layout,
                   ArrayProto* array) {
  array->set_offset(offset);
  array->set_size(size);
  array->set_dtype(DTypeToProto(dtype));
  LayoutToProto(layout, array->mutable_layout());
}

}  // namespace

absl::StatusOr<MappedTensor> Client::ConvertRegion(const std::string& region_name, uint64_t offset,
                                                   uint64_t size, DType dtype, const Layout& layout,
                                                   const ConvertOptions& options) {
  if (remote_) return RefuseRemote("a shared-memory region");
  v1::ConvertRequest request;
  v1::SharedMemoryArray* array = request.mutable_source()->mutable_shared_memory();
  array->set_name(region_name);
  DescribeArray(offset, size, dtype, layout, array);
  OptionsToProto(options, request.mutable_options());
  return ConvertAndMap(request);
}

absl::StatusOr<MappedTensor> Client::ConvertRegion(const SharedRegion& region, uint64_t offset,
                                                   uint64_t size, DType dtype, const Layout& layout,
                                                   const ConvertOptions& options) {
  if (!region.is_memfd()) return ConvertRegion(region.name(), offset, size, dtype, layout, options);
  if (remote_) return RefuseRemote("a memfd");
  if (!link_->local()) {
    return absl::FailedPreconditionError(
        "a memfd reaches the server only over the local transport, which this client has not");
  }
  v1::ConvertRequest request;
  v1::FdArray* array = request.mutable_source()->mutable_fd();
  array->set_fd_index(0);
  DescribeArray(offset, size, dtype, layout, array);
  OptionsToProto(options, request.mutable_options());
  const int fd = region.fd();
  return ConvertAndMap(request, absl::MakeConstSpan(&fd, 1));
}

absl::StatusOr<MappedTensor> Client::ConvertCudaIpc(const std::string& ipc_handle, int device,
                                                    uint64_t offset, uint64_t size, DType dtype,
                                                    const Layout& layout,
                                                    const ConvertOptions& options) {
  if (remote_) return RefuseRemote("a CUDA IPC handle");
  v1::ConvertRequest request;
  v1::CudaIpcArray* array = request.mutable_source()->mutable_cuda_ipc();
  array->set_ipc_handle(ipc_handle);
  array->set_device(device);
  DescribeArray(offset, size, dtype, layout, array);
  OptionsToProto(options, request.mutable_options());
  return ConvertAndMap(request);
}

absl::StatusOr<MappedTensor> Client::ConvertTensor(const std::string& id,
                                                   const ConvertOptions& options) {
  v1::ConvertRequest request;
  request.mutable_source()->set_tensor_id(id);
  OptionsToProto(options, request.mutable_options());
  return ConvertAndMap(request);
}

namespace {

// Collects a ReadResponse stream: the handle from the first message, then data.
// A handle that does not parse cancels the stream.
absl::StatusOr<std::string> DrainStream(grpc::ClientContext* context,
                                        grpc::ClientReader<v1::ReadResponse>* reader,
                                        const ClientLink& link, HandleInfo* handle,
                                        const Client::Progress& progress) {
  v1::ReadResponse message;
  std::string data;
  uint64_t total = 0;
  bool first = true;
  absl::Status parsed;
  while (parsed.ok() && reader->Read(&message)) {
    if (first) {
      first = false;
      absl::StatusOr<HandleInfo> info = HandleFromProto(message.handle());
      absl::StatusOr<ViewSizes> sizes =
          info.ok() ? ComputeViewSizes(info->layout, ItemSize(info->dtype)) : info.status();
      if (!sizes.ok()) {
        parsed = sizes.status();
        context->TryCancel();
        break;
      }
      total = static_cast<uint64_t>(sizes->nbytes);
      data.reserve(total);
      if (handle != nullptr) *handle = *std::move(info);
    }
    data.append(message.data());
    if (progress) progress(data.size(), total);
  }
  const absl::Status finished = link.Done(reader->Finish());
  ASARRAY_RETURN_IF_ERROR(parsed);
  ASARRAY_RETURN_IF_ERROR(finished);
  return data;
}

}  // namespace

absl::StatusOr<std::string> Client::ReadBytes(const std::string& id, HandleInfo* handle) {
  grpc::ClientContext context;
  link_->Prepare(&context, ClientLink::Call::kDataStream);
  v1::ReadRequest request;
  request.set_id(id);
  auto reader = stub_->Read(&context, request);
  return DrainStream(&context, reader.get(), *link_, handle, progress_);
}

absl::StatusOr<std::string> Client::ConvertToData(const v1::ConvertRequest& request,
                                                  HandleInfo* handle) {
  grpc::ClientContext context;
  link_->Prepare(&context, ClientLink::Call::kDataStream);
  auto reader = stub_->ConvertToData(&context, request);
  return DrainStream(&context, reader.get(), *link_, handle, progress_);
}

absl::StatusOr<absl::Time> Client::Renew(const std::string& id, absl::Duration ttl) {
  ASARRAY_ASSIGN_OR_RETURN(const std::vector<absl::Time> expires,
                           Renew(absl::MakeConstSpan(&id, 1), ttl));
  return expires.front();
}

absl::StatusOr<std::vector<absl::Time>> Client::Renew(absl::Span<const std::string> ids,
                                                      absl::Duration ttl) {
  std::vector<absl::Time> expires;
  for (size_t at = 0; at < ids.size(); at += ClientLink::kIdsPerCall) {
    ASARRAY_ASSIGN_OR_RETURN(std::vector<absl::Time> some,
                             RenewSome(ids.subspan(at, ClientLink::kIdsPerCall), ttl));
    expires.insert(expires.end(), some.begin(), some.end());
  }
  return expires;
}

absl::StatusOr<std::vector<absl::Time>> Client::RenewSome(absl::Span<const std::string> ids,
                                                          absl::Duration ttl) {
  v1::RenewRequest request;
  request.set_id(ids.front());
  for (size_t i = 1; i < ids.size(); ++i) request.add_more_ids(ids[i]);
  request.set_ttl_ms(static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Milliseconds(ttl))));
  v1::RenewResponse response;
  if (link_->local()) {
    v1::LocalRequest local;
    *local.mutable_renew() = request;
    ASARRAY_ASSIGN_OR_RETURN(const v1::LocalResponse answer, link_->CallLocal(local, {}, nullptr));
    response = answer.renew();
  } else {
    grpc::ClientContext context;
    link_->Prepare(&context, ClientLink::Call::kUnary);
    ASARRAY_RETURN_IF_ERROR(link_->Done(stub_->Renew(&context, request, &response)));
  }
  std::vector<absl::Time> expires = {absl::FromUnixMillis(response.lease_expires_unix_ms())};
  for (int64_t ms : response.more_lease_expires_unix_ms())
    expires.push_back(absl::FromUnixMillis(ms));
  return expires;
}

absl::Status Client::Release(const std::string& id) { return link_->Release(id); }

absl::Status Client::Release(absl::Span<const std::string> ids) {
  if (ids.empty()) return absl::OkStatus();
  return link_->Release(ids);
}

absl::StatusOr<std::vector<HandleInfo>> Client::List() {
  grpc::ClientContext context;
  link_->Prepare(&context, ClientLink::Call::kUnary);
  v1::ListResponse response;
  ASARRAY_RETURN_IF_ERROR(link_->Done(stub_->List(&context, v1::ListRequest(), &response)));
  std::vector<HandleInfo> out;
  for (const v1::TensorHandle& h : response.tensors()) {
    ASARRAY_ASSIGN_OR_RETURN(HandleInfo info, HandleFromProto(h));
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<v1::StatsResponse> Client::Stats() {
  if (link_->local()) {
    v1::LocalRequest local;
    local.mutable_stats();
    ASARRAY_ASSIGN_OR_RETURN(v1::LocalResponse answer, link_->CallLocal(local, {}, nullptr));
    return std::move(*answer.mutable_stats());
  }
  grpc::ClientContext context;
  link_->Prepare(&context, ClientLink::Call::kUnary);
  v1::StatsResponse response;
  ASARRAY_RETURN_IF_ERROR(link_->Done(stub_->Stats(&context, v1::StatsRequest(), &response)));
  return response;
}

absl::Status Client::Health() {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckResponse response;
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  ASARRAY_RETURN_IF_ERROR(
      link_->Done(stub->Check(&context, grpc::health::v1::HealthCheckRequest(), &response)));
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(
        absl::StrCat("server reports ",
                     grpc::health::v1::HealthCheckResponse::ServingStatus_Name(response.status())));
  }
  return absl::OkStatus();
}

}  // namespace asarray
