// Service benchmarks, each against a bare gRPC baseline on the same Unix
// socket in the same run, reported as ratios (one JSON object per line):
// - zero-copy handoff: p50 of convert + map of a shm-referenced float32
//   array (copy=None) at 1 KiB and 1 GiB, against a bare unary echo;
// - inline: 64 MiB upload + convert against a bare client stream of the same
//   bytes, and a 64 MiB read-back against a bare server stream;
// - server memory: the asarrayd process's RSS during a 1 GiB inline upload.
//   service_bench --asarrayd PATH [--reps N]
// Remote (bench/remote_bench.sh runs the two halves in two network
// namespaces joined by a veth pair): a 64 MiB upload + convert and a 64 MiB
// read-back over mutual TLS, each against a bare gRPC stream of the same
// bytes on the same TLS channel, interleaved in rotating order.
//   service_bench --serve IP:PORT --pki DIR
//   service_bench --remote IP:PORT --pki DIR [--reps N]
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/client.h"
#include "echo.grpc.pb.h"
#include "grpcpp/create_channel.h"
#include "server/server.h"

namespace {

using Clock = std::chrono::steady_clock;
namespace ab = asarray::bench;

double Seconds(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    std::fprintf(stderr, "%s: %s\n", what, s.ToString().c_str());
    std::exit(1);
  }
}

// Echo: the same transport with nothing behind it.
class EchoService final : public ab::Echo::CallbackService {
 public:
  explicit EchoService(size_t chunk) : block_(chunk, 'x') {}

  grpc::ServerUnaryReactor* Ping(grpc::CallbackServerContext* context, const ab::Empty*,
                                 ab::Empty*) override {
    grpc::ServerUnaryReactor* reactor = context->DefaultReactor();
    reactor->Finish(grpc::Status::OK);
    return reactor;
  }

  grpc::ServerReadReactor<ab::Chunk>* Upload(grpc::CallbackServerContext*, ab::Empty*) override {
    class Reader final : public grpc::ServerReadReactor<ab::Chunk> {
     public:
      Reader() { StartRead(&chunk_); }
      void OnReadDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::OK);
          return;
        }
        StartRead(&chunk_);
      }
      void OnDone() override { delete this; }

     private:
      ab::Chunk chunk_;
    };
    return new Reader();
  }

  grpc::ServerWriteReactor<ab::Chunk>* Download(grpc::CallbackServerContext*,
                                                const ab::DownloadRequest* request) override {
    class Writer final : public grpc::ServerWriteReactor<ab::Chunk> {
     public:
      Writer(const std::string& block, uint64_t total) : block_(block), left_(total) { Next(); }
      void OnWriteDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::CANCELLED);
          return;
        }
        Next();
      }
      void OnDone() override { delete this; }

     private:
      void Next() {
        if (left_ == 0) {
          Finish(grpc::Status::OK);
          return;
        }
        const uint64_t n = std::min<uint64_t>(left_, block_.size());
        chunk_.set_data(block_.data(), n);  // one copy per message, as the service makes
        left_ -= n;
        StartWrite(&chunk_);
      }
      const std::string& block_;
      uint64_t left_;
      ab::Chunk chunk_;
    };
    return new Writer(block_, request->bytes());
  }

 private:
  std::string block_;
};

void PrintRow(const std::string& json) {
  std::printf("%s\n", json.c_str());
  std::fflush(stdout);
}

// p50 in microseconds of `body` over `n` calls after `n / 10` warm-ups.
template <typename F>
double P50Micros(int n, F&& body) {
  for (int i = 0; i < n / 10; ++i) body();
  std::vector<double> t;
  for (int i = 0; i < n; ++i) {
    const auto start = Clock::now();
    body();
    t.push_back(Seconds(start) * 1e6);
  }
  return Median(t);
}

// The bare baselines: `bytes` of `data` up a client stream in `chunk`s, and
// `bytes` down a server stream into one buffer.
void BareUpload(ab::Echo::Stub& echo, const void* data, uint64_t bytes, size_t chunk) {
  grpc::ClientContext context;
  ab::Empty out;
  auto writer = echo.Upload(&context, &out);
  ab::Chunk c;
  const char* p = static_cast<const char*>(data);
  for (uint64_t sent = 0; sent < bytes; sent += chunk) {
    c.set_data(p + sent, std::min<uint64_t>(chunk, bytes - sent));
    writer->Write(c);
  }
  writer->WritesDone();
  Check(asarray::FromGrpcStatus(writer->Finish()), "bare upload");
}

void BareDownload(ab::Echo::Stub& echo, uint64_t bytes) {
  grpc::ClientContext context;
  ab::DownloadRequest request;
  request.set_bytes(bytes);
  auto reader = echo.Download(&context, request);
  std::string all;
  all.reserve(bytes);
  ab::Chunk c;
  while (reader->Read(&c)) all.append(c.data());
  Check(asarray::FromGrpcStatus(reader->Finish()), "bare download");
}

void Handoff(asarray::Client& client, ab::Echo::Stub& echo) {
  const double ping = P50Micros(2000, [&] {
    grpc::ClientContext context;
    ab::Empty out;
    Check(asarray::FromGrpcStatus(echo.Ping(&context, ab::Empty(), &out)), "ping");
  });
  double p50[2];
  const uint64_t sizes[2] = {1 << 10, uint64_t{1} << 30};
  for (int k = 0; k < 2; ++k) {
    absl::StatusOr<asarray::SharedRegion> region = asarray::SharedRegion::Create(sizes[k]);
    Check(region.status(), "region");
    const int64_t n = static_cast<int64_t>(sizes[k] / 4);
    std::vector<double> t;
    for (int i = 0; i < 1100; ++i) {
      const auto start = Clock::now();
      absl::StatusOr<asarray::MappedTensor> m = client.ConvertRegion(
          region->name(), 0, sizes[k], asarray::DType::kFloat32, {{n}, {1}, 0}, {});
      const double us = Seconds(start) * 1e6;
      Check(m.status(), "convert");
      if (!m->handle().shares_memory) Check(absl::InternalError("no alias"), "alias");
      if (i >= 100) t.push_back(us);
    }  // each MappedTensor releases its lease as it goes
    p50[k] = Median(t);
  }
  PrintRow(absl::StrCat(
      "{\"bench\": \"handoff\", \"ping_p50_us\": ", ping, ", \"convert_map_1KiB_p50_us\": ", p50[0],
      ", \"convert_map_1GiB_p50_us\": ", p50[1], ", \"ratio_1GiB_over_1KiB\": ", p50[1] / p50[0],
      ", \"ratio_1GiB_over_ping\": ", p50[1] / ping, "}"));
}

// Waits until the server's segment pool holds `bytes` again, so that no
// refill runs in the background of a timed measurement.
void WaitPoolWarm(asarray::Client& client, uint64_t bytes) {
  for (int i = 0; i < 1000; ++i) {
    absl::StatusOr<asarray::v1::StatsResponse> s = client.Stats();
    if (s.ok() && s->pool_bytes() >= bytes) return;
    usleep(2000);
  }
}

void Inline(asarray::Client& client, ab::Echo::Stub& echo, int reps, bool warm) {
  const uint64_t bytes = 64 << 20;
  const size_t chunk = client.chunk_size();
  std::vector<float> data(bytes / 4, 1.5f);
  const int64_t n = static_cast<int64_t>(data.size());
  std::vector<double> ours, bare, read, bare_read;
  for (int r = 0; r < reps; ++r) {
    if (warm) WaitPoolWarm(client, bytes);
    auto start = Clock::now();
    absl::StatusOr<asarray::MappedTensor> m =
        client.ConvertInline(data.data(), bytes, asarray::DType::kFloat32, {{n}, {1}, 0}, {});
    ours.push_back(Seconds(start));
    Check(m.status(), "upload");

    if (warm) WaitPoolWarm(client, bytes);
    start = Clock::now();
    BareUpload(echo, data.data(), bytes, chunk);
    bare.push_back(Seconds(start));

    start = Clock::now();
    absl::StatusOr<std::string> back = client.ReadBytes(m->id());
    read.push_back(Seconds(start));
    Check(back.status(), "read");
    if (back->size() != bytes) Check(absl::InternalError("short read"), "read");

    start = Clock::now();
    BareDownload(echo, bytes);
    bare_read.push_back(Seconds(start));
  }
  const double mib = bytes / 1048576.0;
  PrintRow(absl::StrCat("{\"bench\": \"inline_64MiB", warm ? "_warm_pool" : "_cold",
                        "\", \"upload_convert_MiBps\": ", mib / Median(ours),
                        ", \"bare_client_stream_MiBps\": ", mib / Median(bare),
                        ", \"upload_ratio\": ", Median(bare) / Median(ours),
                        ", \"read_MiBps\": ", mib / Median(read),
                        ", \"bare_server_stream_MiBps\": ", mib / Median(bare_read),
                        ", \"read_ratio\": ", Median(bare_read) / Median(read), "}"));
}

// kB values of a /proc/PID/status line.
long StatusKb(pid_t pid, const char* key) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string line;
  while (std::getline(in, line)) {
    if (absl::StartsWith(line, key)) return std::atol(line.c_str() + std::strlen(key) + 1);
  }
  return -1;
}

void ServerMemory(const std::string& asarrayd) {
  char dir[] = "/tmp/asarrayd-bench-XXXXXX";
  if (mkdtemp(dir) == nullptr) Check(absl::InternalError("mkdtemp"), "rss");
  const std::string address = absl::StrCat("unix:", dir, "/s/asarrayd.sock");
  const pid_t pid = fork();
  if (pid == 0) {
    const std::string listen = "--listen=" + address;
    execl(asarrayd.c_str(), asarrayd.c_str(), listen.c_str(), "--shm_prefix=asarrayd-bench",
          static_cast<char*>(nullptr));
    _exit(127);
  }
  // A fresh channel per attempt: one that failed while the server was still
  // starting would wait out gRPC's reconnect backoff.
  absl::StatusOr<std::unique_ptr<asarray::Client>> client;
  absl::Status health = absl::UnavailableError("not started");
  for (int i = 0; i < 2000 && !health.ok(); ++i) {
    client = asarray::Client::Connect(address);
    health = client.ok() ? (*client)->Health() : client.status();
    if (!health.ok()) usleep(10000);
  }
  if (!health.ok()) {
    kill(pid, SIGKILL);
    waitpid(pid, nullptr, 0);
    Check(health, "server start");
  }

  const uint64_t bytes = uint64_t{1} << 30;
  std::vector<uint8_t> data(bytes, 7);
  const long idle_anon = StatusKb(pid, "RssAnon:");
  const long idle_rss = StatusKb(pid, "VmRSS:");
  std::atomic<bool> done{false};
  long peak_anon = idle_anon, peak_rss = idle_rss, peak_shmem = 0;
  std::thread poll([&] {
    while (!done) {
      peak_anon = std::max(peak_anon, StatusKb(pid, "RssAnon:"));
      peak_rss = std::max(peak_rss, StatusKb(pid, "VmRSS:"));
      peak_shmem = std::max(peak_shmem, StatusKb(pid, "RssShmem:"));
      usleep(2000);
    }
  });
  const auto start = Clock::now();
  absl::StatusOr<asarray::MappedTensor> m = (*client)->ConvertInline(
      data.data(), bytes, asarray::DType::kUInt8, {{static_cast<int64_t>(bytes)}, {1}, 0}, {});
  const double secs = Seconds(start);
  done = true;
  poll.join();
  Check(m.status(), "1 GiB upload");
  m = absl::CancelledError("released");
  kill(pid, SIGTERM);
  int wstatus = 0;
  waitpid(pid, &wstatus, 0);
  rmdir(absl::StrCat(dir, "/s").c_str());
  rmdir(dir);
  PrintRow(absl::StrCat(
      "{\"bench\": \"server_rss_1GiB_upload\", \"idle_anon_MiB\": ", idle_anon / 1024.0,
      ", \"peak_anon_above_idle_MiB\": ", (peak_anon - idle_anon) / 1024.0,
      ", \"peak_rss_above_idle_MiB\": ", (peak_rss - idle_rss) / 1024.0,
      ", \"peak_shmem_MiB\": ", peak_shmem / 1024.0, ", \"upload_s\": ", secs,
      ", \"server_exit\": ", WIFEXITED(wstatus) ? WEXITSTATUS(wstatus) : -1, "}"));
}

}  // namespace

// A server with the echo service beside asarrayd's, on `address` with
// mutual TLS; runs until SIGTERM.
int Serve(const std::string& address, const std::string& pki) {
  EchoService echo(1 << 20);
  asarray::server::ServerOptions options;
  options.listen = {address};
  options.tls_cert_file = pki + "/server.pem";
  options.tls_key_file = pki + "/server.key";
  options.tls_client_ca_file = pki + "/ca.pem";
  options.store.prefix = absl::StrCat("asarrayd-rbench-", getpid());
  options.extra_services = {&echo};
  sigset_t term;
  sigemptyset(&term);
  sigaddset(&term, SIGTERM);
  sigaddset(&term, SIGINT);
  pthread_sigmask(SIG_BLOCK, &term, nullptr);
  absl::StatusOr<std::unique_ptr<asarray::server::Server>> server =
      asarray::server::Server::Start(options);
  Check(server.status(), "server");
  std::fprintf(stderr, "serving on %s\n", address.c_str());
  int sig = 0;
  sigwait(&term, &sig);
  return 0;
}

struct Spread {
  double median, low, high;
};

Spread SpreadOf(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return {v[v.size() / 2], v.front(), v.back()};
}

// The remote half: 64 MiB each way against the bare streams, interleaved.
int Remote(const std::string& address, const std::string& pki, int reps) {
  asarray::ClientOptions options;
  options.tls_ca_file = pki + "/ca.pem";
  options.tls_cert_file = pki + "/alice.pem";
  options.tls_key_file = pki + "/alice.key";
  absl::StatusOr<std::unique_ptr<asarray::Client>> client =
      asarray::Client::Connect(address, options);
  Check(client.status(), "client");
  asarray::Client& c = **client;
  auto echo = ab::Echo::NewStub(c.channel());  // the same TLS channel
  const uint64_t bytes = 64 << 20;
  const size_t chunk = c.chunk_size();
  std::vector<float> data(bytes / 4, 1.5f);
  asarray::v1::ConvertUploadHeader header;
  header.set_dtype(asarray::v1::DTYPE_FLOAT32);
  header.mutable_layout()->add_shape(static_cast<int64_t>(data.size()));
  header.mutable_layout()->add_strides(1);
  header.set_storage_size(bytes);
  std::string held;  // the last upload's id, read back by "ours_read"
  auto ours_upload = [&] {
    absl::StatusOr<asarray::v1::ConvertResponse> r = c.Upload(header, data.data());
    Check(r.status(), "upload");
    held = r->handle().id();
  };
  // Outside the timed calls: letting go of a result is not part of making it.
  auto release = [&] {
    Check(c.Release(held), "release");
    held.clear();
  };
  auto bare_upload = [&] { BareUpload(*echo, data.data(), bytes, chunk); };
  auto ours_read = [&] {
    absl::StatusOr<std::string> back = c.ReadBytes(held);
    Check(back.status(), "read");
    if (back->size() != bytes) Check(absl::InternalError("short read"), "read");
  };
  auto bare_read = [&] { BareDownload(*echo, bytes); };
  ours_upload();  // warm-up: connection, TLS, first pages
  release();
  bare_upload();
  std::vector<double> up_ratio, read_ratio, t_up, t_bare_up, t_read, t_bare_read;
  for (int r = 0; r < reps; ++r) {
    // Rotate who goes first, so that neither always meets a warm or a cold path.
    double us = 0, bare = 0;
    for (int k = 0; k < 2; ++k) {
      const auto start = Clock::now();
      ((r + k) % 2 == 0 ? std::function<void()>(ours_upload) : bare_upload)();
      ((r + k) % 2 == 0 ? us : bare) = Seconds(start);
    }
    t_up.push_back(us);
    t_bare_up.push_back(bare);
    up_ratio.push_back(bare / us);
    for (int k = 0; k < 2; ++k) {
      const auto start = Clock::now();
      ((r + k) % 2 == 0 ? std::function<void()>(ours_read) : bare_read)();
      ((r + k) % 2 == 0 ? us : bare) = Seconds(start);
    }
    t_read.push_back(us);
    t_bare_read.push_back(bare);
    read_ratio.push_back(bare / us);
    release();
  }
  const double mib = bytes / 1048576.0;
  const Spread up = SpreadOf(up_ratio), rd = SpreadOf(read_ratio);
  PrintRow(absl::StrCat(
      "{\"bench\": \"remote_mtls_64MiB\", \"reps\": ", reps,
      ", \"upload_convert_MiBps\": ", mib / SpreadOf(t_up).median,
      ", \"bare_client_stream_MiBps\": ", mib / SpreadOf(t_bare_up).median,
      ", \"upload_ratio_median\": ", up.median, ", \"upload_ratio_low\": ", up.low,
      ", \"upload_ratio_high\": ", up.high,
      ", \"upload_ratio_best_times\": ", SpreadOf(t_bare_up).low / SpreadOf(t_up).low,
      ", \"read_MiBps\": ", mib / SpreadOf(t_read).median, ", \"bare_server_stream_MiBps\": ",
      mib / SpreadOf(t_bare_read).median, ", \"read_ratio_median\": ", rd.median,
      ", \"read_ratio_low\": ", rd.low, ", \"read_ratio_high\": ", rd.high,
      ", \"read_ratio_best_times\": ", SpreadOf(t_bare_read).low / SpreadOf(t_read).low, "}"));
  return 0;
}

int main(int argc, char** argv) {
  std::string asarrayd, serve, remote, pki;
  int reps = 7;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--asarrayd") == 0) asarrayd = argv[i + 1];
    if (std::strcmp(argv[i], "--reps") == 0) reps = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--serve") == 0) serve = argv[i + 1];
    if (std::strcmp(argv[i], "--remote") == 0) remote = argv[i + 1];
    if (std::strcmp(argv[i], "--pki") == 0) pki = argv[i + 1];
  }
  signal(SIGPIPE, SIG_IGN);
  if (!serve.empty()) return Serve(serve, pki);
  if (!remote.empty()) return Remote(remote, pki, reps);
  EchoService echo(1 << 20);
  char dir[] = "/tmp/asarrayd-bench-XXXXXX";
  if (mkdtemp(dir) == nullptr) return 1;
  asarray::server::ServerOptions options;
  options.listen = {absl::StrCat("unix:", dir, "/s/asarrayd.sock")};
  options.store.prefix = absl::StrCat("asarrayd-bench-", getpid());
  options.extra_services = {&echo};
  absl::StatusOr<std::unique_ptr<asarray::server::Server>> server =
      asarray::server::Server::Start(options);
  Check(server.status(), "server");
  absl::StatusOr<std::unique_ptr<asarray::Client>> client =
      asarray::Client::Connect((*server)->addresses().front());
  Check(client.status(), "client");
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(-1);
  auto echo_stub = ab::Echo::NewStub(grpc::CreateCustomChannel(
      (*server)->addresses().front(), grpc::InsecureChannelCredentials(), args));

  Handoff(**client, *echo_stub);
  // The default server keeps a segment pool; first without one, then with.
  Inline(**client, *echo_stub, reps, /*warm=*/false);
  client->reset();
  server->reset();
  options.store.pool_bytes = 256 << 20;
  options.store.prefix += "-pool";
  server = asarray::server::Server::Start(options);
  Check(server.status(), "server with pool");
  client = asarray::Client::Connect((*server)->addresses().front());
  Check(client.status(), "client");
  echo_stub = ab::Echo::NewStub(grpc::CreateCustomChannel(
      (*server)->addresses().front(), grpc::InsecureChannelCredentials(), args));
  Inline(**client, *echo_stub, reps, /*warm=*/true);
  client->reset();
  server->reset();
  rmdir(absl::StrCat(dir, "/s").c_str());
  rmdir(dir);
  if (!asarrayd.empty()) ServerMemory(asarrayd);
  return 0;
}
