// A client for tests that run it as another uid: performs each operation
// named on the command line in order and prints one line per operation,
// "<op> <gRPC code name> [<detail>]". Handles are never mapped (a result
// segment belongs to the server's uid) and their leases are left to the test.
// Every call goes over gRPC, so that leases are TTL leases.
//
//   peer_client ADDRESS op...
//     literal            convert [1, 2]; detail: the new id
//     read:ID  renew:ID  release:ID  tensor:ID
//     list               detail: the caller's ids, comma-separated
//     region:NAME:BYTES  convert that client segment as BYTES uint8 (copy unset)
//     own-region:BYTES   create a segment of this uid's (left for the test to
//                        unlink), convert it; detail: its name
//   Operations that end in pause() (the test kills the process), after their
//   line is printed:
//     hang                nothing more
//     upload-half:BYTES   a ConvertUpload of BYTES that stops halfway
//     read-first:ID       a Read stream with 4 KiB chunks, after its first message
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "asarray/v1/asarray.grpc.pb.h"
#include "client/client.h"
#include "grpcpp/create_channel.h"
#include "tests/server/requests.h"
#include "wire/posix_util.h"

namespace asarray {
namespace {

void Say(const std::string& op, const absl::Status& status, const std::string& detail) {
  std::printf("%s %s %s\n", op.c_str(), absl::StatusCodeToString(status.code()).c_str(),
              detail.c_str());
  std::fflush(stdout);
}

[[noreturn]] void Hang() {
  for (;;) pause();
}

// The operations that leave a call open until the process is killed.
void RunAndHang(const std::string& address, const std::vector<std::string>& op) {
  auto stub =
      v1::AsArray::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  grpc::ClientContext context;
  uint64_t bytes = 0;
  if (op[0] == "upload-half" && op.size() == 2 && absl::SimpleAtoi(op[1], &bytes)) {
    v1::ConvertResponse response;
    auto writer = stub->ConvertUpload(&context, &response);
    v1::ConvertUploadRequest message;
    v1::ConvertUploadHeader* header = message.mutable_header();
    header->set_dtype(v1::DTYPE_UINT8);
    LayoutToProto(Layout{{static_cast<int64_t>(bytes)}, {1}, 0}, header->mutable_layout());
    header->set_storage_size(bytes);
    bool ok = writer->Write(message);
    message.set_data(std::string(bytes / 2, 'u'));
    ok = ok && writer->Write(message);
    Say(op[0], ok ? absl::OkStatus() : absl::UnavailableError("write failed"), "");
  } else if (op[0] == "read-first" && op.size() == 2) {
    v1::ReadRequest request;
    request.set_id(op[1]);
    request.set_chunk_size(4096);
    auto reader = stub->Read(&context, request);
    v1::ReadResponse response;
    Say(op[0], reader->Read(&response) ? absl::OkStatus() : absl::UnavailableError("no data"), "");
  } else {
    Say(op[0], absl::OkStatus(), "");
  }
  Hang();
}

// The status and detail of one operation.
std::pair<absl::Status, std::string> Run(Client& client, const std::vector<std::string>& op) {
  const std::string& name = op[0];
  const std::string arg = op.size() > 1 ? op[1] : "";
  if (name == "literal") {
    v1::ConvertRequest request;
    absl::Status s = LiteralToProto(Literal::List({Literal::Int(1), Literal::Int(2)}),
                                    request.mutable_source()->mutable_literal());
    if (!s.ok()) return {s, ""};
    absl::StatusOr<v1::ConvertResponse> r = client.Convert(request);
    return {r.status(), r.ok() ? r->handle().id() : ""};
  }
  if (name == "read") return {client.ReadBytes(arg).status(), ""};
  if (name == "renew") return {client.Renew(arg).status(), ""};
  if (name == "release") return {client.Release(arg), ""};
  if (name == "tensor") {
    v1::ConvertRequest request;
    request.mutable_source()->set_tensor_id(arg);
    absl::StatusOr<v1::ConvertResponse> r = client.Convert(request);
    return {r.status(), r.ok() ? r->handle().id() : ""};
  }
  if (name == "list") {
    absl::StatusOr<std::vector<HandleInfo>> list = client.List();
    std::vector<std::string> ids;
    if (list.ok()) {
      for (const HandleInfo& h : *list) ids.push_back(h.id);
    }
    return {list.status(), absl::StrJoin(ids, ",")};
  }
  uint64_t bytes = 0;
  if (name == "region" && op.size() == 3 && absl::SimpleAtoi(op[2], &bytes)) {
    absl::StatusOr<v1::ConvertResponse> r = client.Convert(testing::RegionOfBytes(arg, bytes));
    return {r.status(), r.ok() ? r->handle().id() : ""};
  }
  if (name == "own-region" && absl::SimpleAtoi(arg, &bytes)) {
    const std::string segment = absl::StrCat("/asarray-peer-", getpid(), "-", RandomHex128());
    const int fd = shm_open(segment.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || ftruncate(fd, static_cast<off_t>(bytes)) != 0) {
      return {ErrnoStatus(errno, "creating " + segment), ""};
    }
    close(fd);
    absl::StatusOr<v1::ConvertResponse> r = client.Convert(testing::RegionOfBytes(segment, bytes));
    return {r.status(), segment};
  }
  return {absl::InvalidArgumentError("unknown operation"), ""};
}

}  // namespace
}  // namespace asarray

int main(int argc, char** argv) {
  if (argc < 3) {
    std::fprintf(stderr, "usage: peer_client ADDRESS op...\n");
    return 2;
  }
  // Over gRPC: its handles hold TTL leases, which the tests watch outlive it.
  asarray::ClientOptions options;
  options.local_transport = false;
  absl::StatusOr<std::unique_ptr<asarray::Client>> client =
      asarray::Client::Connect(argv[1], options);
  if (!client.ok()) {
    std::fprintf(stderr, "peer_client: %s\n", client.status().ToString().c_str());
    return 1;
  }
  for (int i = 2; i < argc; ++i) {
    const std::vector<std::string> op = absl::StrSplit(argv[i], ':');
    if (op[0] == "hang" || op[0] == "upload-half" || op[0] == "read-first") {
      asarray::RunAndHang(argv[1], op);
    }
    const auto [status, detail] = asarray::Run(**client, op);
    asarray::Say(op[0], status, detail);
  }
  return 0;
}
