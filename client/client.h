// asarray::Client: the C++ client of asarrayd. It converts array-likes
// (inline host buffers, literals, shared-memory regions, held tensors) and
// maps the resulting handles into this process without a copy.
//
// On a Unix address the client talks to the server's local transport (see
// LocalRequest in the proto) when it has one: memory travels as file
// descriptors (a SharedRegion made with CreateMemfd, results the server
// makes), nothing is named in /dev/shm, and the handles it makes end when
// the Client is destroyed (or its process dies), unless a TTL is asked for.
// Everything else, and every call on a TCP address, goes over gRPC.
//
// Ownership: a SharedRegion owns a segment or memfd this process created
// (and unlinks a segment); a MappedTensor owns one mapping of a handle and,
// unless told not to, the handle's lease, which it releases on destruction.
// Client methods are thread-safe; a SharedRegion or MappedTensor is used by
// one thread at a time.
#ifndef ASARRAY_CLIENT_CLIENT_H_
#define ASARRAY_CLIENT_CLIENT_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "asarray/v1/asarray.grpc.pb.h"
#include "client/cuda_ipc.h"
#include "client/mappings.h"
#include "core/dtype.h"
#include "core/layout.h"
#include "core/literal.h"
#include "core/plan.h"
#include "wire/local_socket.h"
#include "wire/proto_convert.h"

namespace asarray {

// The calls a MappedTensor makes (its Release) and the Client's transports:
// gRPC, and the local connection when it is up. Shared between them, so that
// a MappedTensor may outlive its Client. Defined in client.cc.
class ClientLink;

// Memory this process creates for data the server may alias: a POSIX
// shared-memory segment (mode 0600), or a memfd with no name. Unmapped,
// closed and (a segment) unlinked on destruction.
class SharedRegion {
 public:
  // A fresh segment "/asarray-client-<pid>-<random>" of `bytes` bytes.
  static absl::StatusOr<SharedRegion> Create(size_t bytes);
  // A memfd of `bytes` bytes, reserved and sealed against shrinking and
  // growing, as the server asks of a descriptor. It has no name: it reaches
  // the server only as a descriptor, over the local transport.
  static absl::StatusOr<SharedRegion> CreateMemfd(size_t bytes);
  SharedRegion(SharedRegion&& other) noexcept;
  SharedRegion& operator=(SharedRegion&& other) noexcept;
  SharedRegion(const SharedRegion&) = delete;
  SharedRegion& operator=(const SharedRegion&) = delete;
  ~SharedRegion();

  void* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }  // "" for a memfd
  int fd() const { return fd_; }
  bool is_memfd() const { return name_.empty(); }

 private:
  SharedRegion() = default;
  void Reset();
  std::string name_;
  int fd_ = -1;
  void* data_ = nullptr;
  size_t size_ = 0;
};

// A tensor handle mapped into this process: a shared-memory handle mmapped,
// or a CUDA handle opened by IPC (then data() is a device pointer). A remote
// client's result holds its bytes instead, with no handle behind it.
class MappedTensor {
 public:
  MappedTensor(MappedTensor&& other) noexcept;
  MappedTensor& operator=(MappedTensor&& other) noexcept;
  MappedTensor(const MappedTensor&) = delete;
  MappedTensor& operator=(const MappedTensor&) = delete;
  // Lets its mapping go (to the client's idle ones, when it is of a whole
  // small file) or closes the CUDA IPC handle, then releases the lease if
  // this object holds it.
  ~MappedTensor();

  // Element [0, ..., 0]: the storage plus the layout's offset. On a CUDA
  // device, a device pointer valid on handle().device, or null when this
  // client was built without CUDA (read the bytes over gRPC instead).
  const void* data() const;
  void* mutable_data() const;
  DType dtype() const { return handle_.dtype; }
  const Dims& shape() const { return handle_.layout.shape; }
  const Dims& strides() const { return handle_.layout.strides; }
  const HandleInfo& handle() const { return handle_; }
  const std::string& id() const { return handle_.id; }
  int64_t numel() const;
  bool on_device() const { return cuda_ != nullptr; }
  // Whether the elements are in this process: mapped, opened on a device,
  // or (remote) read back. False for a handle this client cannot open, and
  // for a remote handle kept on the server: read those with ReadBytes.
  bool has_elements() const { return storage_ != nullptr || sizes_.nbytes == 0; }

  // The elements, row-major and contiguous, in host memory (a copy, for
  // checks and saving; from the device when the tensor is on one).
  absl::StatusOr<std::string> RowMajorBytes() const;

  // Releases the lease now (the mapping stays valid until destruction).
  absl::Status Release();
  // Keeps the lease past this object's life (someone else releases it).
  void DetachLease() { link_.reset(); }

 private:
  friend class Client;
  MappedTensor() = default;
  void Reset();
  HandleInfo handle_;
  std::shared_ptr<FileMapping> mapping_;    // of the handle's host memory
  std::shared_ptr<MappingCache> mappings_;  // where mapping_ goes back to
  ViewSizes sizes_;                         // of the handle's layout, checked when it was mapped
  unsigned char* storage_ = nullptr;        // the handle's bytes within mapping_, or
                                            // the device storage of cuda_
  std::unique_ptr<CudaIpcMapping> cuda_;
  // A remote result's elements, which storage_ points into (held by
  // pointer: a moved string may move its bytes).
  std::unique_ptr<std::string> bytes_;
  std::shared_ptr<ClientLink> link_;  // set while this object holds the lease
};

struct ClientOptions {
  // On a Unix address, use the server's local transport when it has one.
  bool local_transport = true;

  // TLS on a TCP address, from PEM files. Any of them turns TLS on; without
  // tls_ca_file the server's certificate must chain to the system's roots.
  // tls_cert_file with tls_key_file is this client's certificate, for a
  // server that requires one (mutual TLS): its subject owns our handles.
  std::string tls_ca_file;
  std::string tls_cert_file;
  std::string tls_key_file;

  // The deadline of each unary call, and of each stream (uploads, reads);
  // an infinite one sets none.
  absl::Duration call_timeout = absl::Seconds(60);
  absl::Duration stream_timeout = absl::InfiniteDuration();
  // Retries with backoff on UNAVAILABLE, through the channel's service
  // config, of the calls that are safe to repeat: Read, ConvertToData,
  // Renew, List, Stats and the health check.
  bool retry_idempotent = true;
  // Pings the server after this long without traffic (zero: never), so that
  // an idle connection survives load balancers and NAT.
  absl::Duration keepalive_time = absl::Seconds(30);
  // gzip the messages that carry data: inline sources, uploads and reads.
  bool compress = false;

  bool tls() const {
    return !tls_ca_file.empty() || !tls_cert_file.empty() || !tls_key_file.empty();
  }
};

// On a TCP address the client is remote: it cannot map the server's memory,
// so each Convert* returns a MappedTensor that holds the result's bytes,
// read back over gRPC (return_data, or ConvertToData past the message
// limit), and no handle outlives the call. With set_lease_ttl the handle is
// kept instead, and the MappedTensor holds its lease but no bytes
// (ReadBytes reads them). Inline sources past the upload threshold stream
// from the caller's memory. Memory references (regions, memfds, CUDA IPC)
// and Map() answer FAILED_PRECONDITION.
class Client {
 public:
  // `address`: "unix:/path" or "host:port"; empty means the default socket.
  static absl::StatusOr<std::unique_ptr<Client>> Connect(const std::string& address = "",
                                                         const ClientOptions& options = {});
  ~Client();

  // Inline bytes: `storage` is what the layout indexes into. Payloads past
  // `upload_threshold` bytes stream through ConvertUpload. Only the bytes the
  // view touches travel.
  absl::StatusOr<MappedTensor> ConvertInline(const void* storage, size_t storage_bytes, DType dtype,
                                             const Layout& layout, const ConvertOptions& options);
  absl::StatusOr<MappedTensor> ConvertLiteral(const Literal& literal,
                                              const ConvertOptions& options);
  // A view into [offset, offset + size) of a region (storage starts at offset).
  absl::StatusOr<MappedTensor> ConvertRegion(const std::string& region_name, uint64_t offset,
                                             uint64_t size, DType dtype, const Layout& layout,
                                             const ConvertOptions& options);
  // The same for a region of this process: a memfd goes as a descriptor
  // (FAILED_PRECONDITION without the local transport), a segment by name.
  absl::StatusOr<MappedTensor> ConvertRegion(const SharedRegion& region, uint64_t offset,
                                             uint64_t size, DType dtype, const Layout& layout,
                                             const ConvertOptions& options);
  absl::StatusOr<MappedTensor> ConvertTensor(const std::string& id, const ConvertOptions& options);
  // A view into [offset, offset + size) of a CUDA allocation of this
  // process's (or another's), named by its IPC handle.
  absl::StatusOr<MappedTensor> ConvertCudaIpc(const std::string& ipc_handle, int device,
                                              uint64_t offset, uint64_t size, DType dtype,
                                              const Layout& layout, const ConvertOptions& options);

  // The raw calls, for callers that manage handles themselves. Convert goes
  // over the local transport when it is up (`fds` beside the request; the
  // answer's descriptors in *received), else over gRPC (then no `fds`).
  absl::StatusOr<v1::ConvertResponse> Convert(const v1::ConvertRequest& request,
                                              absl::Span<const int> fds = {},
                                              std::vector<UniqueFd>* received = nullptr);
  // Many conversions in one call, all or nothing (see ConvertBatchRequest),
  // over the local transport as Convert goes, `fds` beside it for the fd
  // sources of every item (FdArray.fd_index counts in `fds`).
  absl::StatusOr<v1::ConvertBatchResponse> ConvertBatch(const v1::ConvertBatchRequest& request,
                                                        absl::Span<const int> fds = {},
                                                        std::vector<UniqueFd>* received = nullptr);
  // ConvertBatch, and every handle mapped, in the items' order; each result
  // holds its lease. Remote: each result's bytes, read back, and nothing
  // kept on the server (unless set_lease_ttl asks to keep them).
  absl::StatusOr<std::vector<MappedTensor>> ConvertAndMapBatch(
      const v1::ConvertBatchRequest& request, absl::Span<const int> fds = {});
  // Whether calls go over the local transport.
  bool has_local_transport() const;
  // Whether the address is TCP: results come back as bytes.
  bool remote() const { return remote_; }
  // The gRPC channel, for stubs of other services on the same server.
  const std::shared_ptr<grpc::Channel>& channel() const { return channel_; }
  // This client's mappings of handle memory.
  const MappingCache& mappings() const { return *mappings_; }
  // Streams `storage` (exactly header.storage_size bytes) in chunks.
  absl::StatusOr<v1::ConvertResponse> Upload(const v1::ConvertUploadHeader& header,
                                             const void* storage);

  // Maps a handle (opens a CUDA one by IPC). With `owns_lease` the
  // MappedTensor releases it. A handle whose memory is a descriptor needs it
  // as `fd` (the answer's, or the request's own for an alias); it is not
  // taken, and may be closed once this returns.
  absl::StatusOr<MappedTensor> Map(const HandleInfo& handle, bool owns_lease, int fd = -1);

  // A held tensor's elements, row-major, read over gRPC (for remote use).
  absl::StatusOr<std::string> ReadBytes(const std::string& id, HandleInfo* handle = nullptr);
  // Converts and reads the result back in one call; no tensor outlives it.
  absl::StatusOr<std::string> ConvertToData(const v1::ConvertRequest& request,
                                            HandleInfo* handle = nullptr);

  absl::StatusOr<absl::Time> Renew(const std::string& id,
                                   absl::Duration ttl = absl::ZeroDuration());
  // Every one of `ids` to the same TTL, many a call: their new expiries, in
  // order (NOT_FOUND for an unknown one, after the rest of its call).
  absl::StatusOr<std::vector<absl::Time>> Renew(absl::Span<const std::string> ids,
                                                absl::Duration ttl = absl::ZeroDuration());
  absl::Status Release(const std::string& id);
  // Every one of `ids`, many a call (NOT_FOUND after the rest for an unknown one).
  absl::Status Release(absl::Span<const std::string> ids);
  absl::StatusOr<std::vector<HandleInfo>> List();
  absl::StatusOr<v1::StatsResponse> Stats();
  // SERVING, or the reason it is not.
  absl::Status Health();

  // Called as streamed uploads and reads advance, with bytes done and total.
  using Progress = std::function<void(uint64_t done, uint64_t total)>;
  void set_progress(Progress progress) { progress_ = std::move(progress); }

  // Every Convert asks for a TTL lease of `ttl` (zero: the server's
  // default), so that its handle outlives this client's local connection:
  // for handing a tensor to another process, which takes it by id.
  void set_lease_ttl(absl::Duration ttl) { lease_ttl_ = ttl; }

  // Payloads above this go through ConvertUpload (default 32 MiB; remote
  // clients 4 MiB).
  void set_upload_threshold(size_t bytes) { upload_threshold_ = bytes; }
  // Bytes per streamed upload message (default 1 MiB); keep it below the
  // server's --max-message-bytes.
  void set_chunk_size(size_t bytes) { chunk_size_ = bytes; }
  size_t chunk_size() const { return chunk_size_; }

 private:
  Client(std::shared_ptr<grpc::Channel> channel, const ClientOptions& options, std::string target,
         bool remote);
  // Converts, and maps the answer; `fds` go beside the request. Remote:
  // the result's bytes instead.
  absl::StatusOr<MappedTensor> ConvertAndMap(const v1::ConvertRequest& request,
                                             absl::Span<const int> fds = {});
  absl::StatusOr<MappedTensor> ConvertRemote(const v1::ConvertRequest& request);
  // One Renew call of `ids` (at least one, few enough for a datagram).
  absl::StatusOr<std::vector<absl::Time>> RenewSome(absl::Span<const std::string> ids,
                                                    absl::Duration ttl);
  // A remote handle kept on the server (a TTL lease was asked for), whose
  // lease the result holds; its bytes are read with ReadBytes.
  absl::StatusOr<MappedTensor> HeldRemotely(const HandleInfo& handle);
  // A tensor of `bytes`, the row-major elements `handle` describes.
  static absl::StatusOr<MappedTensor> FromBytes(const HandleInfo& handle, std::string bytes);
  absl::Status RefuseRemote(absl::string_view what) const;

  std::shared_ptr<grpc::Channel> channel_;
  std::shared_ptr<v1::AsArray::Stub> stub_;
  std::shared_ptr<ClientLink> link_;
  const bool remote_;
  std::shared_ptr<MappingCache> mappings_ = std::make_shared<MappingCache>();
  std::optional<absl::Duration> lease_ttl_;
  size_t upload_threshold_ = 32 << 20;
  size_t chunk_size_ = 1 << 20;
  Progress progress_;
};

}  // namespace asarray

#endif  // ASARRAY_CLIENT_CLIENT_H_
