// A bounded load test: 64 clients (ASARRAY_LOAD_CLIENTS) for 30 s
// (ASARRAY_LOAD_SECONDS) of mixed calls against a real asarrayd over its
// Unix socket: conversions of every source kind (inline bytes, streamed
// uploads, literals, client regions, held tensors), reads, renewals, lists
// and releases. Every tensor that comes back is checked byte for byte
// (FNV-1a of its row-major bytes) through its mapping or a read. It must end
// with no failed call, no segment left and the server's heap (RssAnon) flat
// from the 10 s mark on. Prints calls/s and latency percentiles.
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <memory>
#include <numeric>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "client/client.h"
#include "gtest/gtest.h"
#include "tests/server/test_server.h"

namespace asarray::testing {
namespace {

// asarrayd is built with the same flags as this test.
#if defined(__SANITIZE_ADDRESS__)
constexpr bool kUnderAddressSanitizer = true;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
constexpr bool kUnderAddressSanitizer = true;
#else
constexpr bool kUnderAddressSanitizer = false;
#endif
#else
constexpr bool kUnderAddressSanitizer = false;
#endif

int EnvInt(const char* name, int fallback) {
  const char* text = std::getenv(name);
  int value;
  return text != nullptr && absl::SimpleAtoi(text, &value) && value > 0 ? value : fallback;
}

uint64_t Fnv1a(const void* data, size_t n) {
  const auto* p = static_cast<const unsigned char*>(data);
  uint64_t h = 1469598103934665603ull;
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 1099511628211ull;
  return h;
}

uint64_t Fnv1a(const std::string& s) { return Fnv1a(s.data(), s.size()); }

// kB of RssAnon in /proc/<pid>/status: the server's heap, not the shared
// memory it maps.
int64_t RssAnonKb(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/status"));
  std::string key;
  while (in >> key) {
    if (key == "RssAnon:") {
      int64_t kb = 0;
      in >> kb;
      return kb;
    }
    std::getline(in, key);
  }
  return -1;
}

// A tensor a client holds and what its elements must hash to.
// A client region it aliases stays while the handle is held.
struct Held {
  MappedTensor tensor;
  uint64_t hash;
  std::shared_ptr<SharedRegion> region;
};

struct Totals {
  absl::Mutex mu;
  std::vector<double> latencies_us ABSL_GUARDED_BY(mu);
  std::map<std::string, uint64_t> calls ABSL_GUARDED_BY(mu);
  std::vector<std::string> errors ABSL_GUARDED_BY(mu);
};

// One client's loop: picks an operation at random, times it, checks it.
class Worker {
 public:
  Worker(const std::string& address, int seed, Totals* totals)
      : rng_(seed), totals_(totals), client_(*Client::Connect(address)) {
    client_->set_upload_threshold(48 << 10);  // larger inline payloads stream
    client_->set_chunk_size(16 << 10);
  }

  void Run(absl::Time until) {
    while (absl::Now() < until) Step();
    for (Held& h : held_) Check("release", h.tensor.Release());
    held_.clear();
    Merge();
  }

 private:
  void Step() {
    switch (Pick(10)) {
      case 0:
        ConvertInline();
        break;
      case 1:
        ConvertUpload();
        break;
      case 2:
        ConvertLiteral();
        break;
      case 3:
        ConvertRegion();
        break;
      case 4:
        ConvertHeld();
        break;
      case 5:
      case 6:
        ReadHeld();
        break;
      case 7:
        RenewHeld();
        break;
      case 8:
        ListHeld();
        break;
      default:
        ReleaseOne();
        break;
    }
    while (held_.size() > 4) ReleaseOne();
  }

  int Pick(int n) { return std::uniform_int_distribution<int>(0, n - 1)(rng_); }

  // Runs `call`, recording its latency under `name`.
  template <typename F>
  auto Timed(const char* name, F&& call) {
    const absl::Time start = absl::Now();
    auto result = call();
    latencies_us_.push_back(absl::ToDoubleMicroseconds(absl::Now() - start));
    ++calls_[name];
    return result;
  }

  void Check(const std::string& what, const absl::Status& status) {
    if (!status.ok()) errors_.push_back(absl::StrCat(what, ": ", status.ToString()));
  }

  // Keeps a converted tensor if it hashes to `expected`.
  void Keep(const char* what, absl::StatusOr<MappedTensor> t, uint64_t expected,
            std::shared_ptr<SharedRegion> region = nullptr) {
    if (!t.ok()) return Check(what, t.status());
    absl::StatusOr<std::string> bytes = t->RowMajorBytes();
    if (!bytes.ok()) return Check(what, bytes.status());
    if (Fnv1a(*bytes) != expected) {
      return Check(what, absl::DataLossError("the result's bytes differ"));
    }
    held_.push_back({*std::move(t), expected, std::move(region)});
  }

  std::vector<int32_t> Values(int64_t n) {
    std::vector<int32_t> v(n);
    std::iota(v.begin(), v.end(), Pick(1000000));
    return v;
  }

  // int32 -> float64 of the same values, the hash of the converted bytes.
  static uint64_t AsDoubleHash(const std::vector<int32_t>& v) {
    std::vector<double> d(v.begin(), v.end());
    return Fnv1a(d.data(), d.size() * sizeof(double));
  }

  void ConvertInlineOf(const char* name, int64_t n) {
    const std::vector<int32_t> v = Values(n);
    ConvertOptions options;
    const bool cast = Pick(2) == 0;
    if (cast) options.dtype = DType::kFloat64;
    Keep(name,
         Timed(name,
               [&] {
                 return client_->ConvertInline(v.data(), v.size() * 4, DType::kInt32,
                                               Layout{{n}, {1}, 0}, options);
               }),
         cast ? AsDoubleHash(v) : Fnv1a(v.data(), v.size() * 4));
  }

  void ConvertInline() { ConvertInlineOf("convert_inline", 1 + Pick(4096)); }
  void ConvertUpload() { ConvertInlineOf("convert_upload", 16384 + Pick(49152)); }

  void ConvertLiteral() {
    // [[a, a+1, a+2], [a+3, a+4, a+5]] as int64.
    const int64_t a = Pick(1000);
    std::vector<Literal> rows;
    std::vector<int64_t> expected;
    for (int r = 0; r < 2; ++r) {
      std::vector<Literal> items;
      for (int c = 0; c < 3; ++c) {
        items.push_back(Literal::Int(a + 3 * r + c));
        expected.push_back(a + 3 * r + c);
      }
      rows.push_back(Literal::List(std::move(items)));
    }
    const Literal literal = Literal::List(std::move(rows));
    Keep("convert_literal",
         Timed("convert_literal", [&] { return client_->ConvertLiteral(literal, {}); }),
         Fnv1a(expected.data(), expected.size() * 8));
  }

  void ConvertRegion() {
    const std::vector<int32_t> v = Values(1 + Pick(16384));
    absl::StatusOr<SharedRegion> created = SharedRegion::Create(v.size() * 4);
    if (!created.ok()) return Check("region", created.status());
    auto region = std::make_shared<SharedRegion>(*std::move(created));
    std::memcpy(region->data(), v.data(), v.size() * 4);
    // Transposed when it can be: the alias keeps the strides, a copy makes
    // them dense; either way the row-major bytes are the transpose's.
    const int64_t n = static_cast<int64_t>(v.size());
    const int64_t cols = n % 2 == 0 ? 2 : 1;
    const Layout layout{{cols, n / cols}, {1, cols}, 0};
    std::vector<int32_t> transposed;
    for (int64_t c = 0; c < cols; ++c) {
      for (int64_t r = 0; r < n / cols; ++r) transposed.push_back(v[r * cols + c]);
    }
    ConvertOptions options;
    if (Pick(2) == 0) options.copy = true;
    Keep("convert_region",
         Timed("convert_region",
               [&] {
                 return client_->ConvertRegion(region->name(), 0, region->size(), DType::kInt32,
                                               layout, options);
               }),
         Fnv1a(transposed.data(), transposed.size() * 4), region);
  }

  Held* AnyHeld() { return held_.empty() ? nullptr : &held_[Pick(held_.size())]; }

  void ConvertHeld() {
    Held* h = AnyHeld();
    if (h == nullptr) return ConvertLiteral();
    const uint64_t hash = h->hash;
    std::shared_ptr<SharedRegion> region = h->region;
    Keep("convert_tensor",
         Timed("convert_tensor", [&] { return client_->ConvertTensor(h->tensor.id(), {}); }), hash,
         std::move(region));
  }

  void ReadHeld() {
    Held* h = AnyHeld();
    if (h == nullptr) return ConvertInline();
    absl::StatusOr<std::string> bytes =
        Timed("read", [&] { return client_->ReadBytes(h->tensor.id()); });
    if (!bytes.ok()) return Check("read", bytes.status());
    if (Fnv1a(*bytes) != h->hash) Check("read", absl::DataLossError("read bytes differ"));
  }

  void RenewHeld() {
    Held* h = AnyHeld();
    if (h == nullptr) return ConvertInline();
    Check("renew", Timed("renew", [&] { return client_->Renew(h->tensor.id()); }).status());
  }

  void ListHeld() {
    absl::StatusOr<std::vector<HandleInfo>> list = Timed("list", [&] { return client_->List(); });
    if (!list.ok()) return Check("list", list.status());
    // Every client runs as this uid: the list holds at least this one's.
    size_t found = 0;
    for (const Held& h : held_) {
      for (const HandleInfo& info : *list) found += info.id == h.tensor.id();
    }
    if (found != held_.size()) Check("list", absl::NotFoundError("a held handle is not listed"));
  }

  void ReleaseOne() {
    if (held_.empty()) return;
    const size_t i = Pick(held_.size());
    Check("release", Timed("release", [&] { return held_[i].tensor.Release(); }));
    held_.erase(held_.begin() + i);
  }

  void Merge() {
    absl::MutexLock lock(&totals_->mu);
    totals_->latencies_us.insert(totals_->latencies_us.end(), latencies_us_.begin(),
                                 latencies_us_.end());
    for (const auto& [name, n] : calls_) totals_->calls[name] += n;
    totals_->errors.insert(totals_->errors.end(), errors_.begin(), errors_.end());
  }

  std::mt19937 rng_;
  Totals* const totals_;
  std::unique_ptr<Client> client_;
  std::vector<Held> held_;
  std::vector<double> latencies_us_;
  std::map<std::string, uint64_t> calls_;
  std::vector<std::string> errors_;
};

TEST(Load, MixedCallsFromManyClientsLeaveNothingAndKeepTheHeapFlat) {
  const int clients = EnvInt("ASARRAY_LOAD_CLIENTS", 64);
  const int seconds = EnvInt("ASARRAY_LOAD_SECONDS", 30);
  TempDir dir;
  const std::string socket = dir.path() + "/sock/asarrayd.sock";
  const std::string prefix = absl::StrCat("asarrayd-load-", getpid());
  std::unique_ptr<Child> server = StartServerProcess(ASARRAY_ASARRAYD, socket, prefix, {});
  ASSERT_NE(server, nullptr);

  Totals totals;
  const absl::Time start = absl::Now();
  const absl::Time until = start + absl::Seconds(seconds);
  std::vector<std::thread> threads;
  for (int i = 0; i < clients; ++i) {
    threads.emplace_back([&, i] { Worker("unix:" + socket, i + 1, &totals).Run(until); });
  }
  // The server's heap, once a second.
  std::vector<int64_t> rss_kb;
  for (int s = 0; s < seconds; ++s) {
    std::this_thread::sleep_until(absl::ToChronoTime(start + absl::Seconds(s + 1)));
    rss_kb.push_back(RssAnonKb(server->pid()));
  }
  for (std::thread& t : threads) t.join();
  const double elapsed_s = absl::ToDoubleSeconds(absl::Now() - start);

  absl::MutexLock lock(&totals.mu);
  for (size_t i = 0; i < std::min<size_t>(totals.errors.size(), 10); ++i) {
    ADD_FAILURE() << totals.errors[i];
  }
  EXPECT_EQ(totals.errors.size(), 0u);
  std::vector<double>& lat = totals.latencies_us;
  ASSERT_FALSE(lat.empty());
  std::sort(lat.begin(), lat.end());
  std::printf("load: %d clients, %.1f s, %zu calls, %.0f calls/s, p50 %.0f us, p99 %.0f us\n",
              clients, elapsed_s, lat.size(), lat.size() / elapsed_s, lat[lat.size() / 2],
              lat[lat.size() * 99 / 100]);
  for (const auto& [name, n] : totals.calls)
    std::printf("  %-16s %llu\n", name.c_str(), static_cast<unsigned long long>(n));
  std::printf("  server RssAnon kB each second: %s\n",
              [&] {
                std::string s;
                for (int64_t kb : rss_kb) absl::StrAppend(&s, kb, " ");
                return s;
              }()
                  .c_str());

  // Nothing is left once every client released what it held.
  std::unique_ptr<Client> client = *Client::Connect("unix:" + socket);
  EXPECT_TRUE(Eventually([&] {
    absl::StatusOr<v1::StatsResponse> s = client->Stats();
    return s.ok() && s->tensors() == 0 && s->segments() == 0 && s->client_regions() == 0;
  }));
  absl::StatusOr<v1::StatsResponse> stats = client->Stats();
  ASSERT_TRUE(stats.ok());
  EXPECT_EQ(stats->errors(), 0u);
  EXPECT_EQ(stats->bytes_in_use(), 0u);
  // The heap grows while the load ramps up; from the 10 s mark on it stays
  // within 16 MiB or 25 % of that mark, whichever is larger. Under
  // AddressSanitizer freed blocks sit in its quarantine (256 MiB by default)
  // before they are reused, so the heap may grow by that much more while the
  // quarantine fills; LeakSanitizer checks for leaks there when asarrayd exits.
  if (seconds > 10) {
    const int64_t mark = rss_kb[9];
    const int64_t peak = *std::max_element(rss_kb.begin() + 9, rss_kb.end());
    const int64_t quarantine_kb = kUnderAddressSanitizer ? int64_t{256} << 10 : 0;
    EXPECT_LE(peak - mark, std::max<int64_t>(16 << 10, mark / 4) + quarantine_kb)
        << "server RssAnon grew from " << mark << " kB at 10 s to " << peak << " kB";
  }
  EXPECT_EQ(server->Kill(SIGTERM), 0) << "asarrayd did not exit cleanly on SIGTERM";
  // Pool segments included, nothing of this server is left in /dev/shm.
  EXPECT_EQ(CountSegments(prefix), 0);
}

}  // namespace
}  // namespace asarray::testing
