#include "client/client.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "core/cast.h"
#include "core/status_macros.h"
#include "grpcpp/create_channel.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "server/posix_util.h"
#include "server/socket_path.h"

namespace asarray {
namespace {
// Mappings of handles up to this size are populated when made.
constexpr uint64_t kPopulateMaxBytes = 1 << 20;
}  // namespace

// --- SharedRegion -----------------------------------------------------------

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
    shm_unlink(name_.c_str());
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
    map_ = std::exchange(other.map_, nullptr);
    map_len_ = std::exchange(other.map_len_, 0);
    sizes_ = std::exchange(other.sizes_, ViewSizes{});
    storage_ = std::exchange(other.storage_, nullptr);
    cuda_ = std::move(other.cuda_);
    stub_ = std::move(other.stub_);
  }
  return *this;
}

MappedTensor::~MappedTensor() { Reset(); }

void MappedTensor::Reset() {
  // Close before releasing: the server frees the memory when the lease ends.
  if (map_ != nullptr) munmap(map_, map_len_);
  cuda_.reset();
  map_ = nullptr;
  storage_ = nullptr;
  if (stub_ != nullptr) Release().IgnoreError();  // best effort: the lease expires anyway
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
    RETURN_IF_ERROR(cuda_->CopyToHost(0, host.size(), host.data()));
    storage = reinterpret_cast<const unsigned char*>(host.data());
  }
  RETURN_IF_ERROR(CopyRowMajorRange({storage, dtype(), handle_.layout}, 0, numel(), out.data()));
  return out;
}

absl::Status MappedTensor::Release() {
  if (stub_ == nullptr) return absl::OkStatus();
  grpc::ClientContext context;
  v1::ReleaseRequest request;
  v1::ReleaseResponse response;
  request.set_id(handle_.id);
  const grpc::Status status = stub_->Release(&context, request, &response);
  stub_.reset();
  return FromGrpcStatus(status);
}

// --- Client -----------------------------------------------------------------

Client::Client(std::shared_ptr<grpc::Channel> channel)
    : channel_(std::move(channel)), stub_(v1::AsArray::NewStub(channel_)) {}

absl::StatusOr<std::unique_ptr<Client>> Client::Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  args.SetMaxSendMessageSize(-1);
  auto channel = grpc::CreateCustomChannel(address.empty() ? DefaultAddress() : address,
                                           grpc::InsecureChannelCredentials(), args);
  if (channel == nullptr) return absl::InvalidArgumentError("cannot create a channel to " + address);
  return std::unique_ptr<Client>(new Client(std::move(channel)));
}

absl::StatusOr<v1::ConvertResponse> Client::Convert(const v1::ConvertRequest& request) {
  grpc::ClientContext context;
  v1::ConvertResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->Convert(&context, request, &response)));
  return response;
}

absl::StatusOr<v1::ConvertResponse> Client::Upload(const v1::ConvertUploadHeader& header,
                                                   const void* storage) {
  grpc::ClientContext context;
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
  RETURN_IF_ERROR(FromGrpcStatus(writer->Finish()));
  return response;
}

absl::StatusOr<MappedTensor> Client::Map(const HandleInfo& handle, bool owns_lease) {
  MappedTensor tensor;
  tensor.handle_ = handle;
  ASSIGN_OR_RETURN(tensor.sizes_, ComputeViewSizes(handle.layout, ItemSize(handle.dtype)));
  if (owns_lease) tensor.stub_ = stub_;
  if (!handle.cuda_ipc_handle.empty()) {
    if (!ClientHasCuda()) return tensor;  // nothing this build can open
    RETURN_IF_ERROR(CheckFitsStorage(handle.layout, ItemSize(handle.dtype),
                                     static_cast<int64_t>(handle.cuda_size)));
    ASSIGN_OR_RETURN(tensor.cuda_,
                     CudaIpcMapping::Open(handle.cuda_ipc_handle, handle.device.index,
                                          handle.cuda_offset, handle.cuda_size));
    tensor.storage_ = static_cast<unsigned char*>(tensor.cuda_->data());
    return tensor;
  }
  if (handle.shm_name.empty()) {
    return absl::FailedPreconditionError("the handle names no shared memory to map");
  }
  if (handle.shm_size == 0) return tensor;
  int fd = shm_open(handle.shm_name.c_str(), O_RDWR | O_CLOEXEC, 0);
  const bool writable = fd >= 0;
  if (!writable) fd = shm_open(handle.shm_name.c_str(), O_RDONLY | O_CLOEXEC, 0);
  if (fd < 0) return ErrnoStatus(errno, "opening " + handle.shm_name);
  const uint64_t page = static_cast<uint64_t>(sysconf(_SC_PAGESIZE));
  const uint64_t map_offset = handle.shm_offset / page * page;
  tensor.map_len_ = handle.shm_offset - map_offset + handle.shm_size;
  // A small mapping is populated in the same call: one pass in the kernel is
  // cheaper than the page fault of the first access.
  const int populate = tensor.map_len_ <= kPopulateMaxBytes ? MAP_POPULATE : 0;
  void* p = mmap(nullptr, tensor.map_len_, writable ? PROT_READ | PROT_WRITE : PROT_READ,
                 MAP_SHARED | populate, fd, static_cast<off_t>(map_offset));
  close(fd);
  if (p == MAP_FAILED) return ErrnoStatus(errno, "mapping " + handle.shm_name);
  tensor.map_ = p;
  tensor.storage_ = static_cast<unsigned char*>(p) + (handle.shm_offset - map_offset);
  // The handle's view must lie inside what was mapped.
  RETURN_IF_ERROR(CheckFitsStorage(handle.layout, ItemSize(handle.dtype),
                                   static_cast<int64_t>(handle.shm_size)));
  return tensor;
}

absl::StatusOr<MappedTensor> Client::ConvertAndMap(const v1::ConvertRequest& request) {
  ASSIGN_OR_RETURN(const v1::ConvertResponse response, Convert(request));
  ASSIGN_OR_RETURN(const HandleInfo handle, HandleFromProto(response.handle()));
  return Map(handle, /*owns_lease=*/true);
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
    ASSIGN_OR_RETURN(const v1::ConvertResponse response, Upload(header, begin));
    ASSIGN_OR_RETURN(const HandleInfo handle, HandleFromProto(response.handle()));
    return Map(handle, /*owns_lease=*/true);
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
  RETURN_IF_ERROR(LiteralToProto(literal, request.mutable_source()->mutable_literal()));
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

absl::StatusOr<MappedTensor> Client::ConvertRegion(const std::string& region_name,
                                                   uint64_t offset, uint64_t size, DType dtype,
                                                   const Layout& layout,
                                                   const ConvertOptions& options) {
  v1::ConvertRequest request;
  v1::SharedMemoryArray* array = request.mutable_source()->mutable_shared_memory();
  array->set_name(region_name);
  DescribeArray(offset, size, dtype, layout, array);
  OptionsToProto(options, request.mutable_options());
  return ConvertAndMap(request);
}

absl::StatusOr<MappedTensor> Client::ConvertCudaIpc(const std::string& ipc_handle, int device,
                                                    uint64_t offset, uint64_t size, DType dtype,
                                                    const Layout& layout,
                                                    const ConvertOptions& options) {
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
absl::StatusOr<std::string> DrainStream(grpc::ClientReader<v1::ReadResponse>* reader,
                                        HandleInfo* handle, const Client::Progress& progress) {
  v1::ReadResponse message;
  std::string data;
  uint64_t total = 0;
  bool first = true;
  while (reader->Read(&message)) {
    if (first) {
      first = false;
      ASSIGN_OR_RETURN(HandleInfo info, HandleFromProto(message.handle()));
      ASSIGN_OR_RETURN(const ViewSizes sizes,
                       ComputeViewSizes(info.layout, ItemSize(info.dtype)));
      total = static_cast<uint64_t>(sizes.nbytes);
      data.reserve(total);
      if (handle != nullptr) *handle = std::move(info);
    }
    data.append(message.data());
    if (progress) progress(data.size(), total);
  }
  RETURN_IF_ERROR(FromGrpcStatus(reader->Finish()));
  return data;
}

}  // namespace

absl::StatusOr<std::string> Client::ReadBytes(const std::string& id, HandleInfo* handle) {
  grpc::ClientContext context;
  v1::ReadRequest request;
  request.set_id(id);
  auto reader = stub_->Read(&context, request);
  return DrainStream(reader.get(), handle, progress_);
}

absl::StatusOr<std::string> Client::ConvertToData(const v1::ConvertRequest& request,
                                                  HandleInfo* handle) {
  grpc::ClientContext context;
  auto reader = stub_->ConvertToData(&context, request);
  return DrainStream(reader.get(), handle, progress_);
}

absl::StatusOr<absl::Time> Client::Renew(const std::string& id, absl::Duration ttl) {
  grpc::ClientContext context;
  v1::RenewRequest request;
  v1::RenewResponse response;
  request.set_id(id);
  request.set_ttl_ms(static_cast<uint64_t>(std::max<int64_t>(0, absl::ToInt64Milliseconds(ttl))));
  RETURN_IF_ERROR(FromGrpcStatus(stub_->Renew(&context, request, &response)));
  return absl::FromUnixMillis(response.lease_expires_unix_ms());
}

absl::Status Client::Release(const std::string& id) {
  grpc::ClientContext context;
  v1::ReleaseRequest request;
  v1::ReleaseResponse response;
  request.set_id(id);
  return FromGrpcStatus(stub_->Release(&context, request, &response));
}

absl::StatusOr<std::vector<HandleInfo>> Client::List() {
  grpc::ClientContext context;
  v1::ListResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->List(&context, v1::ListRequest(), &response)));
  std::vector<HandleInfo> out;
  for (const v1::TensorHandle& h : response.tensors()) {
    ASSIGN_OR_RETURN(HandleInfo info, HandleFromProto(h));
    out.push_back(std::move(info));
  }
  return out;
}

absl::StatusOr<v1::StatsResponse> Client::Stats() {
  grpc::ClientContext context;
  v1::StatsResponse response;
  RETURN_IF_ERROR(FromGrpcStatus(stub_->Stats(&context, v1::StatsRequest(), &response)));
  return response;
}

absl::Status Client::Health() {
  grpc::ClientContext context;
  context.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  grpc::health::v1::HealthCheckResponse response;
  auto stub = grpc::health::v1::Health::NewStub(channel_);
  RETURN_IF_ERROR(FromGrpcStatus(
      stub->Check(&context, grpc::health::v1::HealthCheckRequest(), &response)));
  if (response.status() != grpc::health::v1::HealthCheckResponse::SERVING) {
    return absl::UnavailableError(absl::StrCat(
        "server reports ", grpc::health::v1::HealthCheckResponse::ServingStatus_Name(
                               response.status())));
  }
  return absl::OkStatus();
}

}  // namespace asarray
