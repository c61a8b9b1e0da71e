// Performs conversions for the service: resolves a request's source into
// memory the server can read (a client region, a held tensor, inline bytes,
// a literal), plans it with the core, and fills a new segment when the plan
// copies. Results are not registered; the caller decides (a handle, or data
// streamed back). Thread-safe; every method may block on big copies, so call
// them off gRPC's callback threads.
#ifndef ASARRAY_SERVER_CONVERTER_H_
#define ASARRAY_SERVER_CONVERTER_H_

#include <sys/types.h>

#include <functional>
#include <memory>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "asarray/v1/asarray.pb.h"
#include "core/literal.h"
#include "core/plan.h"
#include "server/cuda_backend.h"
#include "server/tensor_store.h"
#include "wire/local_socket.h"

namespace asarray::server {

// What a call over the local transport brings beside its request, and takes
// back beside its response.
struct LocalCall {
  uint64_t connection = 0;                     // for the leases tied to it
  const std::vector<UniqueFd>* fds = nullptr;  // attached to the request
  ClientFdCache* cache = nullptr;              // the connection's mapped memfds
  // Filled by the service: the memory whose descriptors go with the
  // response, in FdLocation.fd_index order; held until sent.
  std::vector<std::shared_ptr<const HostMemory>> reply_memory;
  // The attached descriptors checked and opened so far, by index: the items
  // of a batch that name one descriptor check it once.
  mutable std::vector<std::shared_ptr<ClientSegment>> opened;
};

// The most items one ConvertBatch takes.
inline constexpr int kMaxBatchItems = 4096;

class Converter {
 private:
  // Where a source's storage is: host bytes the server can read (owned by
  // `host`, or request bytes that die with the call when `host` is null), or
  // device memory. The layout's element 0 sits at storage + offset * item size.
  struct Storage {
    static Storage Host(const unsigned char* data, uint64_t size,
                        std::shared_ptr<HostMemory> owner = nullptr) {
      return Storage{data, size, std::move(owner), nullptr};
    }
    static Storage OnDevice(std::shared_ptr<DeviceMemory> memory) {
      const auto* data = static_cast<const unsigned char*>(memory->data());
      const uint64_t size = memory->size();
      return Storage{data, size, nullptr, std::move(memory)};
    }
    const unsigned char* data;
    uint64_t size;
    std::shared_ptr<HostMemory> host;
    std::shared_ptr<DeviceMemory> device;
  };

 public:
  Converter(TensorStore* store, CudaBackend* cuda) : store_(store), cuda_(cuda) {}

  // The kind of memory the server makes for `caller`'s results: over the
  // local transport (`local`) or gRPC, in named memory if asked.
  static ShmSegment::Kind ResultKind(const Caller& caller, bool local, bool named_memory);

  // A conversion checked, resolved and planned, but not run: every check on
  // the request is behind it, and it knows the new host memory its result
  // needs, so that a batch makes one arena for all of its items before it
  // runs any. It holds what its source needs (a client's region, a held
  // tensor); the request must outlive it.
  class Prepared {
   public:
    // Whether Run() needs new host memory, and how many bytes of it.
    bool needs_host_memory() const { return needs_host_memory_; }
    uint64_t host_bytes() const { return host_bytes_; }

   private:
    friend class Converter;
    Prepared(Source source, Storage storage)
        : source_(std::move(source)), storage_(std::move(storage)) {}
    Source source_;
    Storage storage_;
    Plan plan_;
    std::shared_ptr<const Literal> literal_;  // for a literal source
    LiteralInfo literal_info_;
    bool needs_host_memory_ = false;
    uint64_t host_bytes_ = 0;
  };
  // Checks and plans `request` (its source and options) for `caller`;
  // `local` as for Convert.
  absl::StatusOr<Prepared> Prepare(const v1::ConvertRequest& request, const Caller& caller,
                                   const LocalCall* local = nullptr);
  // Runs a prepared conversion. `host`: host_bytes() of new memory when it
  // needs some, or null to have a new segment of `kind` made for it.
  absl::StatusOr<Tensor> Run(Prepared prepared, std::shared_ptr<HostMemory> host,
                             const Caller& caller, ShmSegment::Kind kind);

  // A unary request: any source kind. `local`: the call came over the local
  // transport (null over gRPC); an fd source needs it, and results it makes
  // are then memfds unless the request asks for named memory.
  absl::StatusOr<Tensor> Convert(const v1::ConvertRequest& request, const Caller& caller,
                                 const LocalCall* local = nullptr);

  // What Convert(request) would do, found cheaply (no memory is mapped), so
  // that the service runs small requests on the calling thread and hands the
  // rest to workers.
  struct WorkEstimate {
    uint64_t copy_bytes = 0;   // about how many bytes it copies; 0 to alias or fail
    bool uses_device = false;  // whether it touches a CUDA device (which can block)
  };

  // A batch checked and planned (see Prepare), and where each result's host
  // copy goes in the arena its run makes.
  struct PreparedBatch {
    std::vector<Prepared> items;
    std::vector<uint64_t> offsets;  // into the arena, for the items that need memory
    uint64_t arena_bytes = 0;
    bool has_arena = false;
    WorkEstimate work;  // what running it costs
  };
  // Every item of a batch, all or nothing (see ConvertBatchRequest): checks
  // and plans them all, and finds the arena's layout; nothing is made yet. A
  // failing item's status keeps its code, and its message names the item.
  absl::StatusOr<PreparedBatch> PrepareBatch(const v1::ConvertBatchRequest& batch,
                                             const Caller& caller,
                                             const LocalCall* local = nullptr);
  // Makes the arena and runs every item of a prepared batch: the results in
  // the items' order, or nothing.
  absl::StatusOr<std::vector<Tensor>> RunBatch(PreparedBatch prepared,
                                               const v1::ConvertBatchRequest& batch,
                                               const Caller& caller, bool local);

  // For tests: called with a batch item's index before it runs, once the
  // arena is made and the items before it have been written into it; a
  // status it returns fails that item there (as a device out of memory
  // would). Set it before any call.
  void set_batch_fault_for_testing(std::function<absl::Status(int item)> fault) {
    batch_fault_ = std::move(fault);
  }

  WorkEstimate EstimateWork(const v1::ConvertRequest& request, const Caller& caller) const;
  // Whether `request` names a CUDA device (its source, or the device asked
  // for), whose work can block: a held tensor's device is found only once
  // it is looked up.
  static bool NamesDevice(const v1::ConvertRequest& request);

  // Elements [begin, begin + count) of a tensor, row-major, into `dst`
  // (count * item size bytes), from host or device memory.
  absl::Status ReadElements(const Tensor& tensor, int64_t begin, int64_t count, void* dst) const;

  // Checks an upload's header before any byte is received, and returns the
  // segment its storage is written into (exactly header.storage_size bytes).
  // Unless it came warm from the pool, the segment is not reserved: the
  // receiver must write every byte of it, checking each write (WriteChunk).
  absl::StatusOr<std::shared_ptr<ShmSegment>> BeginUpload(const v1::ConvertUploadHeader& header,
                                                          const Caller& caller);

  // Converts a completely received upload.
  absl::StatusOr<Tensor> FinishUpload(const v1::ConvertUploadHeader& header,
                                      std::shared_ptr<ShmSegment> storage, const Caller& caller);

 private:
  // Plans a source whose storage is resolved.
  absl::StatusOr<Prepared> PrepareArray(Source source, const ConvertOptions& options,
                                        Storage storage);
  absl::StatusOr<Prepared> PrepareLiteral(const v1::Literal& proto, const ConvertOptions& options);
  // Page-locks the segment of a client region that is big and used again,
  // once (see ClientSegment); returns whether `memory` is pinned.
  bool PinForDevice(const HostMemory* memory);
  // Fills new memory with the cast of `source`: `host` on the CPU, a new
  // allocation on a device.
  absl::Status CopyInto(const Source& source, const Storage& storage, const Plan& plan,
                        std::shared_ptr<HostMemory> host, Tensor* tensor);
  // The region of a local request's attached memfd that an fd source names.
  absl::StatusOr<std::shared_ptr<ClientRegion>> OpenFdSource(const v1::FdArray& array,
                                                             const LocalCall* local);

  TensorStore* const store_;
  CudaBackend* const cuda_;
  std::function<absl::Status(int)> batch_fault_;
};

// The bytes an array's storage must hold for `layout`: through the last byte
// the view touches. INVALID_ARGUMENT when the view reaches before the start.
absl::StatusOr<uint64_t> RequiredStorageBytes(const Layout& layout, DType dtype);

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_CONVERTER_H_
