// The whole request path of the service, as gRPC and the local transport
// drive it: one real AsArrayService (a TensorStore with a small quota whose
// segments live under "asarrayd-fuzz-<pid>", the CudaBackend without
// devices, an Executor) and a LocalTransport over it, built once. Every input is a short
// program of calls on it, so a tensor one call makes is the source, the
// stream or the release of the next.
//
// Input format. The first byte picks the mode:
//   0     raw: the rest is a serialized ConvertRequest. It goes through
//         Convert (ConvertNow, as its return_data says), then Read of the
//         handle, ConvertToData and the local transport's Convert.
//   1     raw: the rest is a serialized ConvertUploadHeader: BeginUpload,
//         the storage filled, FinishUpload, the result held and read back.
//   else  a program: up to kMaxOps operations, each an op byte (mod 11) and
//         its operands, read front to back by Reader; an input that ends
//         early reads as zeros (so a trailing zero run means "defaults").
//         0, 10 Convert: FuzzRequest, ReleaseCarried, ConvertNow (held, or
//               return_data)        1 ConvertToData: FuzzRequest, drained
//         2 Read: id, chunk_size    3 Renew: id, ttl_ms
//         4 Release: id, more_ids   5 local transport: a method byte, then
//               a ConvertRequest (FuzzRequest) or a ReleaseRequest, in a
//               LocalRequest, with descriptors (see Attach)
//         6 local transport, raw: a 2-byte little-endian length, the
//               datagram (a LocalRequest's bytes), with descriptors
//         7 upload: a header built as a request's inline array
//         8 RowMajorStream::Open on a held id with any chunk size
//         9 a raw ConvertRequest (2-byte length) through mode 0's calls
//         An id operand is mostly one this input made (byte % count),
//         else a junk id; a request's sources include tensor_id chains.
// Modes 0 and 1 are the format of the older request fuzzer, whose seeds
// stay valid.
//
// Operands come mostly from tables of boundary values (Reader::Int): one
// selector byte gives 0..63, 2^k or 2^k - 1; selector 0xc0 + t gives 8 raw
// little-endian bytes (t = 0), 2^k + 1, -2^k, -(2^k + 1), -(2^k - 1), -1 - k,
// INT64_MAX - k, INT64_MIN + k (t = 1..7, k from the next byte), or a fixed
// table of sizes (t >= 8). Requests are built structurally: dtypes include
// invalid enum values, ranks run 0..5 (to 65 with the high bit), inline
// storage holds exactly what the layout needs when that is at most 64 KiB
// (or one byte less or more, or a fuzzed size). fuzz/request.dict holds
// these values as raw bytes and as protobuf varints.
//
// Shared memory: no source may name a real segment. A shared_memory name
// is either rewritten to a name under "/asarrayd-fuzz-<pid>-absent..." that
// nothing creates (for the caller's own uid), or kept as fuzzed and sent by
// a caller with no local uid (server::kNoLocalUid), which is refused before
// anything is mapped.
//
// Checks, besides the sanitizers: every failure is a code the proto lists
// for a request (never INTERNAL), with a message of at most 1 KiB; gRPC sees
// the same code; a held result lies inside its memory and reads back; a
// return_data result's data is exactly numel * item size bytes; no streamed
// message exceeds kMaxStreamMessageBytes, each holds whole elements, every
// message after the first holds data (else the stream never ends), and a
// whole stream holds exactly the tensor's bytes; a local answer parses, and
// carries descriptors only when OK, one per attached FdLocation.
// ASARRAY_FUZZ_TRACE=1 prints each operation and its outcome.
// At the end of every input each id it made is released, and the store must
// be empty again: no tensor, segment, byte or client region left over.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "asarray/v1/asarray.pb.h"
#include "core/dtype.h"
#include "core/layout.h"
#include "fuzz/fuzz_check.h"
#include "google/protobuf/stubs/logging.h"
#include "server/converter.h"
#include "server/cuda_backend.h"
#include "server/executor.h"
#include "server/local_transport.h"
#include "server/peer.h"
#include "server/service.h"
#include "server/tensor_store.h"
#include "wire/proto_convert.h"

namespace asarray {
namespace {

using fuzz::Require;
using fuzz::RequireRequestStatus;

constexpr uint64_t kKiB = 1 << 10;
constexpr uint64_t kMiB = 1 << 20;
constexpr int kMaxOps = 16;
// Work bounds: a stream is drained for at most this many messages or bytes,
// and one input streams at most kMaxInputStreamBytes in all.
constexpr int kMaxStreamMessages = 16;
constexpr uint64_t kMaxStreamBytes = 8 * kMiB;
constexpr uint64_t kMaxInputStreamBytes = 16 * kMiB;
// Inline storage and uploads are sized exactly up to this.
constexpr uint64_t kMaxExactStorage = 64 * kKiB;
// Held results of at most this many bytes are read back whole.
constexpr uint64_t kMaxReadBack = 64 * kKiB;

struct Fixture {
  Fixture()
      : prefix(absl::StrCat("asarrayd-fuzz-", getpid())),
        store([this] {
          server::StoreOptions options;
          options.prefix = prefix;
          options.max_bytes = 8 * kMiB;
          return options;
        }()),
        cuda(server::CudaBackend::Create()),
        executor(1),
        service(&store, cuda.get(), &executor,
                server::ServiceOptions{/*max_message_bytes=*/static_cast<int64_t>(kMiB)}),
        local(&service) {
    // Descriptors an input may attach to a local request: sealed memfds (a
    // small and a page-sized one), an unsealed memfd, a memfd without the
    // grow seal, a pipe and /dev/null.
    auto memfd = [](size_t size, int seals) {
      const int fd = memfd_create("asarray-fuzz", MFD_CLOEXEC | MFD_ALLOW_SEALING);
      if (ftruncate(fd, static_cast<off_t>(size)) != 0 ||
          (seals != 0 && fcntl(fd, F_ADD_SEALS, seals) != 0)) {
        abort();
      }
      return fd;
    };
    attachable.push_back(memfd(64, F_SEAL_SHRINK | F_SEAL_GROW));
    attachable.push_back(memfd(4096, F_SEAL_SHRINK | F_SEAL_GROW));
    attachable.push_back(memfd(64, 0));
    attachable.push_back(memfd(64, F_SEAL_SHRINK));
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0) abort();
    attachable.push_back(p[0]);
    attachable.push_back(open("/dev/null", O_RDONLY | O_CLOEXEC));
  }

  const std::string prefix;
  server::TensorStore store;
  std::unique_ptr<server::CudaBackend> cuda;
  server::Executor executor;
  server::AsArrayService service;
  server::LocalTransport local;
  std::vector<int> attachable;
};

// Never destroyed: libFuzzer exits without running it down.
Fixture& F() {
  static Fixture* fixture = [] {
    // Fuzzed strings that are not UTF-8 make protobuf log each time.
    google::protobuf::SetLogHandler(nullptr);
    return new Fixture;
  }();
  return *fixture;
}

server::Caller Me() {
  static const server::Caller me = server::Caller::Local(getuid());
  return me;
}

// Reads an input front to back; past its end every read is zero.
class Reader {
 public:
  Reader(const uint8_t* data, size_t size) : data_(data), size_(size) {}

  bool empty() const { return pos_ >= size_; }
  size_t remaining() const { return empty() ? 0 : size_ - pos_; }

  uint8_t Byte() { return empty() ? 0 : data_[pos_++]; }

  uint64_t Raw64() {
    uint64_t v = 0;
    for (int i = 0; i < 8; ++i) v |= static_cast<uint64_t>(Byte()) << (8 * i);
    return v;
  }

  // Up to `n` of the remaining bytes.
  std::string Bytes(size_t n) {
    n = std::min(n, remaining());
    std::string out(reinterpret_cast<const char*>(data_ + pos_), n);
    pos_ += n;
    return out;
  }

  // A boundary-biased 64-bit value (see the header comment).
  int64_t Int() { return static_cast<int64_t>(U64()); }
  uint64_t U64() {
    const uint8_t s = Byte();
    if (s < 0x40) return s;
    if (s < 0x80) return uint64_t{1} << (s - 0x40);
    if (s < 0xc0) return (uint64_t{1} << (s - 0x80)) - 1;
    const int t = s - 0xc0;
    if (t == 0) return Raw64();
    if (t < 8) {
      const int k = Byte() & 63;
      const uint64_t p = uint64_t{1} << k;
      switch (t) {
        case 1:
          return p + 1;
        case 2:
          return 0 - p;
        case 3:
          return 0 - (p + 1);
        case 4:
          return 0 - (p - 1);
        case 5:
          return 0 - static_cast<uint64_t>(k) - 1;
        case 6:
          return static_cast<uint64_t>(INT64_MAX) - static_cast<uint64_t>(k);
        default:
          return static_cast<uint64_t>(INT64_MIN) + static_cast<uint64_t>(k);
      }
    }
    static constexpr uint64_t kTable[] = {
        ~uint64_t{0},                      // -1, 2^64 - 1
        uint64_t{1} << 63,                 // INT64_MIN, 2^63
        static_cast<uint64_t>(INT64_MAX),  //
        static_cast<uint64_t>(INT64_MAX) - 1,
        4 * kMiB,
        4 * kMiB - 1,
        4 * kMiB + 1,
        server::kMaxStreamMessageBytes - 64,
        kMiB,
        kMiB - 4096,
        kMiB - 16384,
        8 * kMiB,
        8 * kMiB + 1,
        64 * kKiB,
        64 * kKiB + 1,
        64 * kMiB,
        uint64_t{1} << 32,
        (uint64_t{1} << 32) - 1,
        (uint64_t{1} << 31) - 1,
        uint64_t{1} << 31,
        255,
        256,
        1000,
        4095,
        4096,
        65535,
        uint64_t{24} * 3600 * 1000,  // the store's max TTL in ms
        uint64_t{24} * 3600 * 1000 + 1,
        static_cast<uint64_t>(INT64_MAX) / 1000,
        static_cast<uint64_t>(INT64_MAX) / 1000 + 1,
        0x8000000000000001ull,
        0xfffffffffffffffeull,
        0x5555555555555555ull,
        0xaaaaaaaaaaaaaaaaull,
        0x7fffffff00000000ull,
        0x0000000100000001ull,
        0x1fffffffffffffffull,  // INT64_MAX / 4
        0x2000000000000000ull,  // 2^61
        0x4000000000000000ull,  // 2^62
        0x4000000000000001ull,
        0x3fffffffffffffffull,
        0x0fffffffffffffffull,
        0x1000000000000000ull,
        0x0800000000000000ull,
        0x4000000000000000ull / 3,
        0x8000000000000000ull / 3,
        0x8000000000000000ull / 5,
        0x8000000000000000ull / 7,
        0x8000000000000000ull / 12,
        0xffffffffffffffffull / 3,
        0xffffffffffffffffull / 5,
        0xffffffffffffffffull / 6,
        0xffffffffffffffffull / 10,
        0xffffffffffffffffull / 12,
        0xffffffffffffffffull / 16,
        0xffffffffffffffffull / 255,
    };
    return kTable[(t - 8) % (sizeof(kTable) / sizeof(kTable[0]))];
  }

 private:
  const uint8_t* data_;
  size_t size_;
  size_t pos_ = 0;
};

// A tensor id this input made, and the caller it belongs to.
struct Held {
  std::string id;
  server::Caller owner;
};

struct Input {
  std::vector<Held> ids;
  uint64_t streamed = 0;  // bytes drained from streams so far
  // The input's local connections, one a caller, closed at its end.
  std::vector<std::unique_ptr<server::LocalTransport::Connection>> connections;

  void Keep(const std::string& id, server::Caller owner) {
    Require(!id.empty(), "a handle without an id");
    ids.push_back({id, owner});
  }
  server::LocalTransport::Connection* Connection(server::Caller caller);
  void CloseConnections();
};

server::LocalTransport::Connection* Input::Connection(server::Caller caller) {
  for (const auto& c : connections) {
    if (c->caller == caller) return c.get();
  }
  connections.push_back(F().local.OpenConnection(caller));
  return connections.back().get();
}

void Input::CloseConnections() {
  for (const auto& c : connections) F().local.CloseConnection(c.get());
  connections.clear();
}

// --- checks -----------------------------------------------------------------

// ASARRAY_FUZZ_TRACE=1 prints each operation and failure, to read a crashing input.
bool Trace() {
  static const bool trace = getenv("ASARRAY_FUZZ_TRACE") != nullptr;
  return trace;
}

void CheckFailure(const absl::Status& status) {
  if (Trace()) fprintf(stderr, "  failed: %s\n", status.ToString().c_str());
  RequireRequestStatus(status);
  // gRPC sees exactly this code.
  const grpc::Status wire = ToGrpcStatus(status);
  Require(static_cast<int>(wire.error_code()) == static_cast<int>(status.code()),
          "the gRPC code differs from the status");
  Require(wire.error_message() == std::string(status.message()),
          "the gRPC message differs from the status");
}

// The checked sizes of a handle's tensor; every handle the server sends has them.
ViewSizes HandleSizes(const v1::TensorHandle& handle, DType* dtype_out = nullptr) {
  absl::StatusOr<DType> dtype = DTypeFromProto(handle.dtype());
  Require(dtype.ok(), "a handle with an invalid dtype");
  absl::StatusOr<Layout> layout = LayoutFromProto(handle.layout());
  Require(layout.ok(), "a handle with an invalid layout");
  absl::StatusOr<ViewSizes> sizes = ComputeViewSizes(*layout, ItemSize(*dtype));
  Require(sizes.ok(), "a handle whose layout has no byte count");
  // Recounted here in 128 bits: every buffer the fuzzer sizes by these counts
  // must not trust the code under test.
  using I128 = __int128;
  const Dims& shape = layout->shape;
  Require(std::all_of(shape.begin(), shape.end(), [](int64_t d) { return d >= 0; }),
          "a handle with a negative size");
  // A zero anywhere makes it empty, however large the other sizes.
  I128 numel = std::find(shape.begin(), shape.end(), 0) != shape.end() ? 0 : 1;
  for (size_t d = 0; d < shape.size() && numel != 0; ++d) {
    numel *= shape[d];
    Require(numel <= static_cast<I128>(INT64_MAX), "a handle with more elements than int64");
  }
  const I128 nbytes = numel * static_cast<I128>(ItemSize(*dtype));
  Require(
      numel == sizes->numel && nbytes <= static_cast<I128>(INT64_MAX) && nbytes == sizes->nbytes,
      "ComputeViewSizes' numel or nbytes differs from numel * item size");
  Require(handle.nbytes() == static_cast<uint64_t>(sizes->nbytes),
          "a handle's nbytes is not numel * item size");
  if (dtype_out != nullptr) *dtype_out = *dtype;
  return *sizes;
}

// A held tensor: it lies inside its memory, its handle says so, and it reads back.
void CheckHeld(const v1::TensorHandle& handle, server::Caller owner) {
  const ViewSizes sizes = HandleSizes(handle);
  absl::StatusOr<server::TensorStore::Lease> lease = F().store.Get(handle.id(), owner);
  Require(lease.ok(), "a returned handle is not held");
  const server::Tensor& t = *lease->tensor;
  Require(t.device_memory == nullptr, "a device tensor without devices");
  Require(t.memory != nullptr, "a held tensor without memory");
  if (handle.has_fd()) {
    Require(t.memory->name().empty(), "a named segment sent as a descriptor");
    Require(handle.fd().size() == t.memory->size(), "a handle's fd range differs from its memory");
  } else if (!t.memory->name().empty()) {
    Require(handle.has_shared_memory(), "a held named tensor's handle without shared memory");
    Require(handle.shared_memory().size() == t.memory->size() &&
                handle.shared_memory().name() == t.memory->name(),
            "a handle names other memory than the tensor's");
  } else {
    Require(!handle.has_shared_memory(), "a memfd named over gRPC");
  }
  const absl::StatusOr<ViewSizes> own = ComputeViewSizes(t.layout, ItemSize(t.dtype));
  Require(own.ok() && own->nbytes == sizes.nbytes, "a handle's sizes differ from its tensor's");
  Require(
      CheckFitsStorage(t.layout, ItemSize(t.dtype), static_cast<int64_t>(t.memory->size())).ok(),
      "a held result's layout reaches outside its memory");
  if (static_cast<uint64_t>(sizes.nbytes) > kMaxReadBack) return;
  std::string rows(static_cast<size_t>(sizes.nbytes), '\0');
  Require(F().service.converter()->ReadElements(t, 0, sizes.numel, rows.data()).ok(),
          "a held result cannot be read back");
}

// Drains at most kMaxStreamMessages messages or kMaxStreamBytes of a stream.
// `expected_id`: the handle's id (empty for data-only streams).
void Drain(absl::StatusOr<server::RowMajorStream> opened, const std::string& expected_id,
           Input* in) {
  if (!opened.ok()) {
    CheckFailure(opened.status());
    return;
  }
  server::RowMajorStream& stream = *opened;
  v1::ReadResponse message;
  uint64_t item = 0, bytes = 0, expected_bytes = 0;
  for (int i = 0; i < kMaxStreamMessages && !stream.done(); ++i) {
    if (bytes >= kMaxStreamBytes || in->streamed >= kMaxInputStreamBytes) return;
    const absl::Status s = stream.Next(&message);
    if (!s.ok()) {
      CheckFailure(s);
      return;
    }
    Require(message.ByteSizeLong() <= server::kMaxStreamMessageBytes,
            "a streamed message past kMaxStreamMessageBytes");
    Require(message.has_handle() == (i == 0), "the handle is not in exactly the first message");
    if (i == 0) {
      DType dtype;
      const ViewSizes sizes = HandleSizes(message.handle(), &dtype);
      Require(message.handle().id() == expected_id, "a stream's handle names another tensor");
      Require(sizes.numel == stream.total_elements(), "a stream of another element count");
      item = ItemSize(dtype);
      expected_bytes = static_cast<uint64_t>(sizes.nbytes);
    } else {
      Require(!message.data().empty(), "a streamed message after the first without data");
    }
    Require(message.data().size() % item == 0, "a streamed message with a partial element");
    bytes += message.data().size();
    in->streamed += message.data().size();
    Require(bytes <= expected_bytes, "a stream past its tensor's bytes");
  }
  if (Trace())
    fprintf(stderr, "  streamed %llu bytes%s\n", static_cast<unsigned long long>(bytes),
            stream.done() ? ", all" : "");
  if (stream.done()) Require(bytes == expected_bytes, "a whole stream short of its tensor");
}

// ConvertNow's result: held (and kept for release), or returned as data.
void CheckConverted(const v1::ConvertRequest& request, server::Caller caller,
                    const absl::Status& status, const v1::ConvertResponse& response, Input* in) {
  if (Trace() && status.ok()) {
    fprintf(stderr, "  converted: %s\n", response.handle().ShortDebugString().c_str());
  }
  if (!status.ok()) {
    CheckFailure(status);
    return;
  }
  Require(response.has_handle(), "a conversion without a handle");
  if (!request.return_data()) {
    in->Keep(response.handle().id(), caller);
    CheckHeld(response.handle(), caller);
    Require(response.data().empty(), "a held result with data");
    return;
  }
  const v1::TensorHandle& handle = response.handle();
  Require(handle.id().empty() && !handle.has_shared_memory() && !handle.has_cuda(),
          "a return_data result names memory");
  const ViewSizes sizes = HandleSizes(handle);
  Require(response.data().size() == static_cast<uint64_t>(sizes.nbytes),
          "return_data's data is not numel * item size bytes");
  Require(response.ByteSizeLong() <= kMiB, "a return_data result past the message limit");
}

// A local answer: a LocalResponse, descriptors only when OK (one for each
// FdLocation that is not the request's own).
void CheckAnswer(const server::LocalTransport::Reply& reply, server::Caller caller, Input* in) {
  v1::LocalResponse response;
  Require(response.ParseFromString(reply.bytes), "a local answer that does not parse");
  if (response.code() != 0) {
    Require(reply.memory.empty(), "an error answer with descriptors");
    CheckFailure(absl::Status(static_cast<absl::StatusCode>(response.code()), response.message()));
    return;
  }
  if (!response.has_convert()) {
    Require(reply.memory.empty(), "descriptors beside an answer that takes none");
    return;
  }
  const v1::TensorHandle& handle = response.convert().handle();
  const size_t sent = handle.has_fd() && !handle.fd().request_fd() ? 1 : 0;
  Require(reply.memory.size() == sent, "descriptors differ from the handle's");
  if (sent == 1) {
    Require(handle.fd().fd_index() == 0, "an attached descriptor at another index");
    Require(reply.fds()[0] >= 0, "an attached descriptor that is not open");
  }
  in->Keep(handle.id(), caller);
  CheckHeld(handle, caller);
}

// --- building requests --------------------------------------------------------

// Valid dtypes first (byte 0 is FLOAT32), then invalid enum values.
int FuzzDType(Reader& r) {
  static constexpr int kValid[] = {9, 10, 6, 2, 1, 3, 4, 5, 7, 8, 11, 12, 0};
  static constexpr int kInvalid[] = {13, 14, 16,  100,       127,       128,     255,
                                     -1, -2, -13, INT32_MAX, INT32_MIN, 1 << 16, 0x7f000009};
  const uint8_t b = r.Byte();
  if (b < 0xe0) return kValid[b % 13];
  return kInvalid[(b - 0xe0) % (sizeof(kInvalid) / sizeof(kInvalid[0]))];
}

std::string FuzzId(Reader& r, const Input& in) {
  const uint8_t b = r.Byte();
  if (!in.ids.empty() && b < 0xc0) return in.ids[b % in.ids.size()].id;
  switch (b & 7) {
    case 0:
      return "";
    case 1:
      return "0123456789abcdef0123456789abcdef";
    case 2:
      return std::string(300, 'a');
    case 3:
      return in.ids.empty() ? "x" : in.ids.back().id + "x";
    case 4:
      return in.ids.empty() ? "\xff" : in.ids.front().id.substr(1);
    default:
      return r.Bytes(r.Byte() % 40);
  }
}

// Shape, strides and offset; flags pick contiguous, broadcast or
// mismatched strides and an offset that starts the view at element 0.
void FuzzLayout(Reader& r, v1::Layout* layout) {
  const uint8_t rank_byte = r.Byte();
  const int rank = (rank_byte & 0x80) ? (rank_byte & 0x7f) % 66 : rank_byte % 6;
  const uint8_t flags = r.Byte();
  Dims shape(rank);
  for (int64_t& d : shape) d = r.Int();
  Dims strides;
  switch (flags & 3) {
    case 0:
      strides.resize(rank);
      for (int64_t& s : strides) s = r.Int();
      break;
    case 1:
      strides = ContiguousStrides(shape);
      break;
    case 2:  // contiguous but one dim broadcast or reversed
      strides = ContiguousStrides(shape);
      if (rank > 0) {
        const int d = r.Byte() % rank;
        strides[d] = (r.Byte() & 1) ? 0 : (strides[d] == INT64_MIN ? 0 : -strides[d]);
      }
      break;
    default:  // ranks differ
      strides.resize(std::max(0, rank + ((flags & 4) ? 1 : -1)));
      for (int64_t& s : strides) s = r.Int();
      break;
  }
  int64_t offset = r.Int();
  if (flags & 8) {
    // The offset at which the lowest element sits at index 0: negative
    // strides then reach exactly to the start of the storage.
    uint64_t reach = 0;
    for (size_t d = 0; d < strides.size() && d < shape.size(); ++d) {
      if (strides[d] < 0 && shape[d] > 0) {
        reach += static_cast<uint64_t>(shape[d] - 1) * (0 - static_cast<uint64_t>(strides[d]));
      }
    }
    offset = static_cast<int64_t>(reach);
  }
  for (int64_t d : shape) layout->add_shape(d);
  for (int64_t s : strides) layout->add_strides(s);
  layout->set_offset(offset);
}

// The bytes from the storage's start through the last byte a layout reaches,
// computed here in 128 bits: for a layout ComputeViewSizes refuses (a
// broadcast whose numel * item size overflows still reaches a few bytes), so
// that such a request arrives with the storage it needs. False when it
// reaches before the start or past kMaxExactStorage.
bool OwnExtent(const v1::Layout& layout, size_t item, uint64_t* bytes) {
  if (layout.shape_size() != layout.strides_size() || layout.offset() < 0) return false;
  using I128 = __int128;
  constexpr I128 kFar = I128{1} << 100;  // past any extent that matters; no overflow
  I128 lo = layout.offset(), hi = layout.offset();
  for (int d = 0; d < layout.shape_size(); ++d) {
    const int64_t n = layout.shape(d);
    if (n < 0) return false;
    if (n == 0) {
      *bytes = 0;
      return true;
    }
    const I128 reach = I128{n - 1} * layout.strides(d);
    (reach < 0 ? lo : hi) += reach;
    if (lo < 0 || hi > kFar) return false;
  }
  const I128 end = (hi + 1) * static_cast<I128>(item);
  if (end > static_cast<I128>(kMaxExactStorage)) return false;
  *bytes = static_cast<uint64_t>(end);
  return true;
}

// The exact storage bytes of a layout, when it has them and they are small:
// ComputeViewSizes' extent, or OwnExtent where that refuses the layout.
bool ExactStorage(int proto_dtype, const v1::Layout& proto, uint64_t* bytes) {
  absl::StatusOr<DType> dtype = DTypeFromProto(proto_dtype);
  if (!dtype.ok()) return false;
  absl::StatusOr<Layout> layout = LayoutFromProto(proto);
  absl::StatusOr<ViewSizes> sizes =
      layout.ok() ? ComputeViewSizes(*layout, ItemSize(*dtype)) : layout.status();
  if (!sizes.ok()) return OwnExtent(proto, ItemSize(*dtype), bytes);
  if (sizes->extent.begin < 0 || static_cast<uint64_t>(sizes->extent.end) > kMaxExactStorage) {
    return false;
  }
  *bytes = static_cast<uint64_t>(sizes->extent.end);
  return true;
}

// A storage size: exact (mostly), one off, or fuzzed.
uint64_t FuzzStorageSize(Reader& r, int dtype, const v1::Layout& layout, uint64_t limit) {
  const uint8_t mode = r.Byte();
  uint64_t exact = 0;
  const bool known = ExactStorage(dtype, layout, &exact);
  uint64_t size;
  if (known && mode < 0xc0) {
    size = exact;
  } else if (known && mode < 0xd0) {
    size = exact - 1;  // 2^64 - 1 for an empty view
  } else if (known && mode < 0xe0) {
    size = exact + 1;
  } else {
    size = r.U64();
  }
  if (limit != ~uint64_t{0} && size > limit) size %= limit + 1;
  return size;
}

// `size` bytes of a short fuzzed pattern, repeated.
std::string FuzzBytes(Reader& r, uint64_t size) {
  const std::string pattern = r.Bytes(r.Byte() % 17);
  std::string out(static_cast<size_t>(size), '\0');
  if (!pattern.empty()) {
    for (size_t i = 0; i < out.size(); ++i) out[i] = pattern[i % pattern.size()];
  }
  return out;
}

double FuzzDouble(Reader& r) {
  static const double kTable[] = {0.0,
                                  -0.0,
                                  1.0,
                                  -1.0,
                                  0.5,
                                  2.5,
                                  255.0,
                                  256.0,
                                  -129.0,
                                  65504.0,
                                  65520.0,
                                  3.4e38,
                                  3.5e38,
                                  1e308,
                                  1e-45,
                                  5e-324,
                                  9.2233720368547758e18,
                                  -9.2233720368547758e18,
                                  1.8446744073709552e19,
                                  std::numeric_limits<double>::infinity(),
                                  -std::numeric_limits<double>::infinity(),
                                  std::numeric_limits<double>::quiet_NaN()};
  const uint8_t b = r.Byte();
  if (b < 0xf0) return kTable[b % (sizeof(kTable) / sizeof(kTable[0]))];
  const uint64_t bits = r.Raw64();
  double d;
  std::memcpy(&d, &bits, sizeof d);
  return d;
}

void FuzzLiteral(Reader& r, v1::Literal* literal) {
  const int n = r.Byte() % 13;
  for (int i = 0; i < n; ++i) {
    v1::LiteralNode* node = literal->add_nodes();
    switch (r.Byte() % 9) {
      case 0:
        node->set_float_value(FuzzDouble(r));
        break;
      case 1:
        node->set_int_value(r.Int());
        break;
      case 2:
        node->set_bool_value(r.Byte() & 1);
        break;
      case 3:
        node->mutable_complex_value()->set_real(FuzzDouble(r));
        node->mutable_complex_value()->set_imag(FuzzDouble(r));
        break;
      case 4:
      case 5: {
        const uint8_t b = r.Byte();
        node->set_list_length(b < 0xc0 ? b % 5 : r.U64());
        break;
      }
      case 6:
        node->set_not_a_number(r.Bytes(r.Byte() % 200));
        break;
      case 7:
        break;  // a node with no value
      default:
        node->set_list_length(1);
        break;
    }
  }
}

void FuzzOptions(Reader& r, v1::Options* options) {
  static const char* const kDevices[] = {"",       "cpu",   "cuda",    "cuda:0",
                                         "cuda:1", "cpu:0", "cuda:-1", "cuda:99999999999999999999"};
  const uint8_t f = r.Byte();
  if (f & 1) options->set_dtype(static_cast<v1::DType>(FuzzDType(r)));
  if ((f & 6) == 2) options->set_copy(true);
  if ((f & 6) == 4) options->set_copy(false);
  if (f & 8) options->set_requires_grad(true);
  if (f & 0x80) {
    options->set_device(r.Bytes(r.Byte() % 24));
  } else {
    options->set_device(kDevices[(f >> 4) & 7]);
  }
}

// A shared-memory name that names nothing: under the fuzz prefix, in a
// component no one creates. Some break the naming rules (a '/', "..", too
// long), and still resolve below that missing component.
std::string AbsentSegmentName(Reader& r) {
  std::string name = absl::StrCat("/", F().prefix, "-absent");
  const uint8_t b = r.Byte();
  switch (b & 3) {
    case 0: {
      const std::string tail = r.Bytes(b >> 3);
      for (char c : tail) {
        const bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
                        (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-';
        name += ok ? c : '_';
      }
      break;
    }
    case 1:
      name += "/../x";
      break;
    case 2:
      name += std::string(256, 'z');
      break;  // past 255 bytes
    default:
      name += "..x";
      break;
  }
  return name;
}

// A ConvertRequest and who sends it.
struct Built {
  v1::ConvertRequest request;
  server::Caller caller;
};

Built FuzzRequest(Reader& r, const Input& in) {
  Built b{v1::ConvertRequest(), Me()};
  v1::ConvertRequest& req = b.request;
  const uint8_t f = r.Byte();
  req.set_return_data(f & 1);
  for (int i = 0, n = (f >> 1) & 3; i < n; ++i) req.add_release_ids(FuzzId(r, in));
  if (f & 8) FuzzOptions(r, req.mutable_options());
  v1::Source* source = req.mutable_source();
  const uint8_t kind = r.Byte() % 16;
  if (kind < 8) {
    v1::InlineArray* array = source->mutable_inline_array();
    const int dtype = FuzzDType(r);
    array->set_dtype(static_cast<v1::DType>(dtype));
    FuzzLayout(r, array->mutable_layout());
    array->set_storage(FuzzBytes(r, FuzzStorageSize(r, dtype, array->layout(), kMaxExactStorage)));
  } else if (kind < 10) {
    FuzzLiteral(r, source->mutable_literal());
  } else if (kind < 13) {
    source->set_tensor_id(FuzzId(r, in));
  } else if (kind == 13) {
    v1::SharedMemoryArray* array = source->mutable_shared_memory();
    const int dtype = FuzzDType(r);
    array->set_dtype(static_cast<v1::DType>(dtype));
    FuzzLayout(r, array->mutable_layout());
    const uint8_t naming = r.Byte();
    if (naming & 1) {
      // Any name, from a caller whose segments cannot exist.
      array->set_name(r.Bytes(r.Byte()));
      b.caller = server::Caller{};
    } else {
      array->set_name(AbsentSegmentName(r));
    }
    array->set_offset(r.U64());  // up to 2^64 - 1: offset + size wraps
    array->set_size(FuzzStorageSize(r, dtype, array->layout(), ~uint64_t{0}));
  } else if (kind == 14) {
    v1::CudaIpcArray* array = source->mutable_cuda_ipc();
    array->set_ipc_handle(std::string(r.Byte() & 1 ? 64 : r.Byte() % 80, '\x01'));
    array->set_device(static_cast<int32_t>(r.Int()));
    const int dtype = FuzzDType(r);
    array->set_dtype(static_cast<v1::DType>(dtype));
    FuzzLayout(r, array->mutable_layout());
    array->set_offset(r.U64());
    array->set_size(FuzzStorageSize(r, dtype, array->layout(), ~uint64_t{0}));
  } else {
    req.clear_source();  // no source at all
  }
  return b;
}

// --- operations -----------------------------------------------------------

void Convert(const Built& b, Input* in) {
  server::AsArrayService& service = F().service;
  // As the gRPC handler: carried releases first, then the work.
  service.ReleaseCarried(b.request.release_ids(), b.caller);
  service.converter()->EstimateWork(b.request, b.caller);
  v1::ConvertResponse response;
  const absl::Status status = service.ConvertNow(b.request, b.caller, &response);
  CheckConverted(b.request, b.caller, status, response, in);
}

void ConvertToData(const Built& b, Input* in) {
  Drain(F().service.ConvertToDataNow(b.request, b.caller), "", in);
}

void Read(const std::string& id, uint64_t chunk_size, server::Caller caller, Input* in) {
  v1::ReadRequest request;
  request.set_id(id);
  request.set_chunk_size(chunk_size);
  Drain(F().service.ReadNow(request, caller), id, in);
}

void Renew(const std::string& id, uint64_t ttl_ms, server::Caller caller) {
  v1::RenewRequest request;
  request.set_id(id);
  request.set_ttl_ms(ttl_ms);
  const int64_t before = absl::ToUnixMillis(absl::Now());
  v1::RenewResponse response;
  const absl::Status status = F().service.RenewNow(request, caller, &response);
  if (!status.ok()) {
    CheckFailure(status);
    return;
  }
  const int64_t expires = response.lease_expires_unix_ms();
  const int64_t max_ttl = absl::ToInt64Milliseconds(F().store.options().max_ttl);
  Require(expires >= before && expires <= absl::ToUnixMillis(absl::Now()) + max_ttl,
          "a renewed lease outside [now, now + max TTL]");
}

void Release(Reader& r, Input* in) {
  v1::ReleaseRequest request;
  request.set_id(FuzzId(r, *in));
  for (int i = 0, n = r.Byte() % 4; i < n; ++i) request.add_more_ids(FuzzId(r, *in));
  const absl::Status status = F().service.ReleaseNow(request, Me());
  if (!status.ok()) CheckFailure(status);
}

// Sends `bytes` (a LocalRequest's) on the input's connection of `caller`,
// with descriptors from Fixture::attachable chosen by `attach`: bits 0-2 how
// many (0-7, the last one meaning "cut short": MSG_CTRUNC), then one byte
// each for which.
void LocalCall(std::string bytes, server::Caller caller, Reader* attach, Input* in) {
  LocalDatagram datagram;
  datagram.bytes = std::move(bytes);
  const int n = attach != nullptr ? attach->Byte() % 8 : 0;
  datagram.control_truncated = n == 7;
  for (int i = 0; i < n; ++i) {
    const int which = F().attachable[attach->Byte() % F().attachable.size()];
    datagram.fds.emplace_back(fcntl(which, F_DUPFD_CLOEXEC, 0));
  }
  server::LocalTransport::Connection* connection = in->Connection(caller);
  CheckAnswer(F().local.Answer(datagram, connection), caller, in);
}

std::string WithMethod(char method, const std::string& message) {
  v1::LocalRequest request;
  switch (method) {
    case 1:
      if (!request.mutable_convert()->ParseFromString(message)) return message;
      break;
    case 2:
      if (!request.mutable_release()->ParseFromString(message)) return message;
      break;
    default:
      return std::string(1, method) + message;  // what no method reads as
  }
  return request.SerializeAsString();
}

// Who may send a raw ConvertRequest: one with a shared_memory source comes
// from a caller with no local uid, so no fuzzed name is ever mapped.
server::Caller RawCaller(absl::string_view message) {
  v1::ConvertRequest request;
  if (request.ParseFromArray(message.data(), static_cast<int>(message.size())) &&
      request.source().has_shared_memory()) {
    return server::Caller{};
  }
  return Me();
}

// A raw ConvertRequest through every method that takes one.
void RawRequest(absl::string_view bytes, Input* in) {
  Built b{v1::ConvertRequest(), RawCaller(bytes)};
  if (!b.request.ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) return;
  const size_t before = in->ids.size();
  Convert(b, in);
  if (in->ids.size() > before) Read(in->ids.back().id, 0, b.caller, in);
  ConvertToData(b, in);
  LocalCall(WithMethod(1, std::string(bytes)), b.caller, nullptr, in);
}

// An upload: BeginUpload, the storage written, FinishUpload, the result held.
void Upload(const v1::ConvertUploadHeader& header, Reader* pattern, Input* in) {
  server::Converter* converter = F().service.converter();
  absl::StatusOr<std::shared_ptr<server::ShmSegment>> storage =
      converter->BeginUpload(header, Me());
  if (!storage.ok()) {
    CheckFailure(storage.status());
    return;
  }
  Require((*storage)->size() == header.storage_size(), "an upload segment of another size");
  if (const size_t n = (*storage)->size(); n > 0) {
    // A fuzzed block of up to 64 bytes, then copies of what is written.
    const std::string block = pattern != nullptr ? FuzzBytes(*pattern, std::min<uint64_t>(n, 64))
                                                 : std::string(1, '\x5a');
    unsigned char* out = (*storage)->data();
    size_t done = std::min(n, block.size());
    std::memcpy(out, block.data(), done);
    while (done < n) {
      const size_t step = std::min(done, n - done);
      std::memcpy(out + done, out, step);
      done += step;
    }
  }
  absl::StatusOr<server::Tensor> tensor =
      converter->FinishUpload(header, *std::move(storage), Me());
  if (!tensor.ok()) {
    CheckFailure(tensor.status());
    return;
  }
  // As the upload reactor does: the result is held and its handle sent.
  const server::TensorStore::Lease lease = F().store.Add(*std::move(tensor));
  in->Keep(lease.tensor->id, Me());
  v1::ReadRequest request;
  request.set_id(lease.tensor->id);
  absl::StatusOr<server::RowMajorStream> stream = F().service.ReadNow(request, Me());
  Require(stream.ok(), "an upload result cannot be read");
  Drain(std::move(stream), lease.tensor->id, in);
}

// RowMajorStream::Open on a held tensor with any chunk size: the cap on a
// message holds whatever it asks (the service cuts chunk sizes before).
void DirectStream(const std::string& id, uint64_t chunk_bytes, Input* in) {
  absl::StatusOr<server::TensorStore::Lease> lease = F().store.Get(id, Me());
  if (!lease.ok()) return;
  const server::Tensor& t = *lease->tensor;
  HandleInfo info;
  info.id = t.id;
  info.dtype = t.dtype;
  info.layout = t.layout;
  info.device = t.device;
  info.requires_grad = t.requires_grad;
  info.shares_memory = t.shares_memory;
  info.warnings = t.warnings;
  info.shm_name = t.memory->name();
  info.shm_offset = t.memory->offset_in_segment();
  info.shm_size = t.memory->size();
  info.lease_expires = lease->expires;
  Drain(server::RowMajorStream::Open(F().service.converter(), lease->tensor, info, chunk_bytes), id,
        in);
}

void Program(Reader& r, Input* in) {
  static const char* const kNames[] = {"Convert",      "ConvertToData", "Read",     "Renew",
                                       "Release",      "Local",         "LocalRaw", "Upload",
                                       "DirectStream", "RawRequest",    "Convert"};
  for (int op = 0; op < kMaxOps && !r.empty(); ++op) {
    const int which = r.Byte() % 11;
    if (Trace()) fprintf(stderr, "op %d: %s (%zu bytes left)\n", op, kNames[which], r.remaining());
    switch (which) {
      case 0:
      case 10:
        Convert(FuzzRequest(r, *in), in);
        break;
      case 1:
        ConvertToData(FuzzRequest(r, *in), in);
        break;
      case 2: {
        const std::string id = FuzzId(r, *in);
        Read(id, r.U64(), Me(), in);
        break;
      }
      case 3: {
        const std::string id = FuzzId(r, *in);
        Renew(id, r.U64(), Me());
        break;
      }
      case 4:
        Release(r, in);
        break;
      case 5: {  // a local datagram built from a request
        const uint8_t m = r.Byte();
        if (m >= 0xe0 && m < 0xf0) {
          v1::ReleaseRequest request;
          request.set_id(FuzzId(r, *in));
          for (int i = 0, n = r.Byte() % 3; i < n; ++i) request.add_more_ids(FuzzId(r, *in));
          LocalCall(WithMethod(2, request.SerializeAsString()), Me(), &r, in);
          break;
        }
        const Built b = FuzzRequest(r, *in);
        const char method = m < 0xe0 ? 1 : static_cast<char>(r.Byte());
        LocalCall(WithMethod(method, b.request.SerializeAsString()), b.caller, &r, in);
        break;
      }
      case 6: {  // a raw local datagram
        const size_t n = r.Byte() | (static_cast<size_t>(r.Byte()) << 8);
        const std::string datagram = r.Bytes(n);
        v1::LocalRequest request;
        server::Caller caller = Me();
        if (request.ParseFromString(datagram) && request.has_convert() &&
            request.convert().source().has_shared_memory()) {
          caller = server::Caller{};
        }
        LocalCall(datagram, caller, &r, in);
        break;
      }
      case 7: {  // a structured upload
        v1::ConvertUploadHeader header;
        const int dtype = FuzzDType(r);
        header.set_dtype(static_cast<v1::DType>(dtype));
        FuzzLayout(r, header.mutable_layout());
        header.set_storage_size(FuzzStorageSize(r, dtype, header.layout(), ~uint64_t{0}));
        if (r.Byte() & 1) FuzzOptions(r, header.mutable_options());
        Upload(header, &r, in);
        break;
      }
      case 8: {
        const std::string id = FuzzId(r, *in);
        DirectStream(id, r.U64(), in);
        break;
      }
      default: {  // a raw ConvertRequest, length-prefixed
        const size_t n = r.Byte() | (static_cast<size_t>(r.Byte()) << 8);
        RawRequest(r.Bytes(n), in);
        break;
      }
    }
  }
}

// Releases what the input made; the store must then hold nothing.
void Finish(Input* in) {
  for (const Held& h : in->ids) F().store.Release(h.id, h.owner).IgnoreError();
  in->CloseConnections();
  const server::StoreStats s = F().store.Stats();
  Require(s.tensors == 0, "tensors outlive the release of every id");
  Require(s.segments == 0 && s.bytes_in_use == 0, "segments outlive every tensor");
  Require(s.client_regions == 0, "client regions outlive every tensor");
}

}  // namespace
}  // namespace asarray

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace asarray;
  if (size == 0) return 0;
  Input in;
  const absl::string_view rest(reinterpret_cast<const char*>(data + 1), size - 1);
  if (data[0] == 0) {
    RawRequest(rest, &in);
  } else if (data[0] == 1) {
    v1::ConvertUploadHeader header;
    if (header.ParseFromArray(rest.data(), static_cast<int>(rest.size()))) {
      Upload(header, nullptr, &in);
    }
  } else {
    Reader r(data + 1, size - 1);
    Program(r, &in);
  }
  Finish(&in);
  return 0;
}
