#include "server/tensor_store.h"

#include <dirent.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "core/quote.h"
#include "core/status_macros.h"
#include "wire/posix_util.h"

namespace asarray::server {

struct TensorStore::Accounting {
  std::atomic<uint64_t> bytes_in_use{0};
  std::atomic<uint64_t> segments{0};
  std::atomic<uint64_t> client_regions{0};
};

namespace {

// The start time of a process in clock ticks since boot (field 22 of
// /proc/PID/stat), or "" when it is not running.
std::string ProcessStartTime(pid_t pid) {
  std::ifstream in(absl::StrCat("/proc/", pid, "/stat"));
  std::string stat;
  if (!std::getline(in, stat)) return "";
  // The command name (field 2) may hold spaces; fields resume after its ')'.
  const size_t close = stat.rfind(')');
  if (close == std::string::npos) return "";
  std::vector<std::string> fields = absl::StrSplit(stat.substr(close + 2), ' ');
  return fields.size() > 19 ? fields[19] : "";
}

std::string ThisInstance() {
  const pid_t pid = getpid();
  return absl::StrCat(pid, ".", ProcessStartTime(pid));
}

}  // namespace

TensorStore::TensorStore(StoreOptions options)
    : options_(std::move(options)),
      instance_(ThisInstance()),
      accounting_(std::make_shared<Accounting>()) {
  pool_ = std::make_unique<SegmentPool>(options_.pool_bytes, [this] { return NewSegmentName(); });
}

std::string TensorStore::NewSegmentName() const {
  return absl::StrCat("/", options_.prefix, "-", instance_, "-", RandomHex128());
}

TensorStore::~TensorStore() {
  {
    absl::MutexLock lock(&sweeper_mu_);
    stopping_ = true;
  }
  if (sweeper_.joinable()) sweeper_.join();
  absl::MutexLock lock(&mu_);
  entries_.clear();
  pool_.reset();
  client_segments_.Clear();
}

absl::StatusOr<std::shared_ptr<ShmSegment>> TensorStore::NewSegment(uint64_t bytes,
                                                                    ShmSegment::Kind kind,
                                                                    bool reserve) {
  Accounting& acc = *accounting_;
  // Reserve the quota first, so concurrent requests cannot overshoot it.
  uint64_t in_use = acc.bytes_in_use.load();
  do {
    if (options_.max_bytes != 0 &&
        (bytes > options_.max_bytes || in_use > options_.max_bytes - bytes)) {
      return absl::ResourceExhaustedError(
          absl::StrCat("quota exceeded: ", bytes, " more bytes would bring the server to ",
                       in_use + bytes, " of its --max-bytes ", options_.max_bytes));
    }
  } while (!acc.bytes_in_use.compare_exchange_weak(in_use, in_use + bytes));

  absl::StatusOr<std::unique_ptr<ShmSegment>> segment = pool_->Take(bytes, kind);
  if (*segment == nullptr) {
    const std::string name = kind == ShmSegment::Kind::kNamed ? NewSegmentName() : "";
    segment = reserve ? ShmSegment::Create(kind, bytes, name)
                      : ShmSegment::CreateUnreserved(kind, bytes, name);
  }
  if (!segment.ok()) {
    acc.bytes_in_use -= bytes;
    return segment.status();
  }
  ++acc.segments;
  std::shared_ptr<Accounting> keep = accounting_;
  return std::shared_ptr<ShmSegment>(segment->release(), [keep, bytes](ShmSegment* s) {
    delete s;
    keep->bytes_in_use -= bytes;
    --keep->segments;
  });
}

absl::StatusOr<std::shared_ptr<ClientRegion>> TensorStore::OpenClientRegion(const std::string& name,
                                                                            uint64_t offset,
                                                                            uint64_t size,
                                                                            uid_t owner) {
  struct stat st;
  absl::StatusOr<int> fd = OpenClientSegment(name, owner, &st);
  if (!fd.ok()) return fd.status();
  std::shared_ptr<ClientSegment> segment = client_segments_.Find(name, st);
  if (segment != nullptr) {
    close(*fd);
  } else {
    segment = std::make_shared<ClientSegment>(name, *fd, st);
    client_segments_.Insert(name, segment);
  }
  return CountedRegion(std::move(segment), offset, size);
}

absl::StatusOr<std::shared_ptr<ClientSegment>> TensorStore::OpenClientFd(int fd,
                                                                         ClientFdCache* cache) {
  struct stat st;
  ASARRAY_RETURN_IF_ERROR(CheckClientFd(fd, &st));
  std::shared_ptr<ClientSegment> segment = cache->Find(st);
  if (segment == nullptr) {
    ASARRAY_ASSIGN_OR_RETURN(const int own, ReopenClientFd(fd, st));
    segment = std::make_shared<ClientSegment>("", own, st);
    cache->Insert(st, segment);
  }
  return segment;
}

absl::StatusOr<std::shared_ptr<ClientRegion>> TensorStore::CountedRegion(
    std::shared_ptr<ClientSegment> segment, uint64_t offset, uint64_t size) {
  segment->AddUse();
  absl::StatusOr<std::unique_ptr<ClientRegion>> region =
      ClientRegion::Of(std::move(segment), offset, size);
  if (!region.ok()) return region.status();
  ++accounting_->client_regions;
  std::shared_ptr<Accounting> keep = accounting_;
  return std::shared_ptr<ClientRegion>(region->release(), [keep](ClientRegion* r) {
    delete r;
    --keep->client_regions;
  });
}

std::vector<TensorStore::Lease> TensorStore::AddAll(std::vector<Tensor> tensors, absl::Duration ttl,
                                                    uint64_t connection) {
  if (ttl <= absl::ZeroDuration()) ttl = options_.default_ttl;
  const absl::Time expires =
      connection != 0 ? absl::InfiniteFuture() : absl::Now() + std::min(ttl, options_.max_ttl);
  std::vector<std::string> ids = RandomHex128s(tensors.size());
  std::vector<Lease> leases;
  leases.reserve(tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    tensors[i].id = std::move(ids[i]);
    leases.push_back(Lease{std::make_shared<const Tensor>(std::move(tensors[i])), expires});
  }
  absl::MutexLock lock(&mu_);
  absl::flat_hash_set<std::string>* tied = connection != 0 ? &by_connection_[connection] : nullptr;
  for (const Lease& lease : leases) {
    entries_[lease.tensor->id] = Entry{lease.tensor, expires, connection};
    if (tied != nullptr) tied->insert(lease.tensor->id);
  }
  if (tied != nullptr) connection_leases_ += leases.size();
  return leases;
}

TensorStore::Lease TensorStore::Add(Tensor tensor, absl::Duration ttl) {
  std::vector<Tensor> one;
  one.push_back(std::move(tensor));
  return std::move(AddAll(std::move(one), ttl).front());
}

TensorStore::Lease TensorStore::AddForConnection(Tensor tensor, uint64_t connection) {
  std::vector<Tensor> one;
  one.push_back(std::move(tensor));
  return std::move(AddAll(std::move(one), absl::ZeroDuration(), connection).front());
}

void TensorStore::UntieLocked(absl::string_view id, Entry& entry) {
  if (entry.connection == 0) return;
  auto it = by_connection_.find(entry.connection);
  if (it != by_connection_.end()) {
    it->second.erase(id);
    if (it->second.empty()) by_connection_.erase(it);
  }
  entry.connection = 0;
  --connection_leases_;
}

int TensorStore::EndConnection(uint64_t connection) {
  std::vector<std::shared_ptr<const Tensor>> doomed;  // destroyed outside the lock
  absl::MutexLock lock(&mu_);
  auto it = by_connection_.find(connection);
  if (it == by_connection_.end()) return 0;
  for (const std::string& id : it->second) {
    auto entry = entries_.find(id);
    doomed.push_back(std::move(entry->second.tensor));
    entries_.erase(entry);
  }
  connection_leases_ -= doomed.size();
  by_connection_.erase(it);
  return static_cast<int>(doomed.size());
}

absl::StatusOr<TensorStore::Lease> TensorStore::Get(const std::string& id,
                                                    const Caller& caller) const {
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.tensor->owner != caller ||
      it->second.expires <= absl::Now()) {
    return absl::NotFoundError(
        absl::StrCat("no tensor ", Quote(id), ": unknown, released or its lease expired"));
  }
  return Lease{it->second.tensor, it->second.expires};
}

absl::Status TensorStore::Release(const std::string& id, const Caller& caller) {
  const absl::string_view one = id;
  return ReleaseAll(absl::MakeConstSpan(&one, 1), caller);
}

absl::Status TensorStore::ReleaseAll(absl::Span<const absl::string_view> ids,
                                     const Caller& caller) {
  std::vector<std::shared_ptr<const Tensor>> doomed;  // destroyed outside the lock
  doomed.reserve(ids.size());
  absl::Status status;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (const absl::string_view id : ids) {
    auto it = entries_.find(id);
    if (it == entries_.end() || it->second.tensor->owner != caller) {
      status.Update(absl::NotFoundError(
          absl::StrCat("no tensor ", Quote(id), ": unknown, released or its lease expired")));
      continue;
    }
    // A lease that ran out before the sweeper saw it ended by expiring, as
    // Get and Renew already answer; its memory goes now either way.
    const bool expired = it->second.expires <= now;
    UntieLocked(id, it->second);
    doomed.push_back(std::move(it->second.tensor));
    entries_.erase(it);
    if (expired) {
      ++expired_;
      status.Update(
          absl::NotFoundError(absl::StrCat("no tensor ", Quote(id), ": its lease expired")));
    }
  }
  return status;
}

absl::StatusOr<absl::Time> TensorStore::Renew(const std::string& id, absl::Duration ttl,
                                              const Caller& caller) {
  if (ttl <= absl::ZeroDuration()) ttl = options_.default_ttl;
  ttl = std::min(ttl, options_.max_ttl);
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  auto it = entries_.find(id);
  if (it == entries_.end() || it->second.tensor->owner != caller || it->second.expires <= now) {
    return absl::NotFoundError(
        absl::StrCat("no tensor ", Quote(id), ": unknown, released or its lease expired"));
  }
  UntieLocked(id, it->second);  // a renewed lease outlives its connection
  it->second.expires = now + ttl;
  return it->second.expires;
}

std::vector<TensorStore::Lease> TensorStore::List(const Caller& caller) const {
  std::vector<Lease> out;
  const absl::Time now = absl::Now();
  absl::MutexLock lock(&mu_);
  for (const auto& [id, entry] : entries_) {
    if (entry.tensor->owner == caller && entry.expires > now) {
      out.push_back(Lease{entry.tensor, entry.expires});
    }
  }
  return out;
}

int TensorStore::SweepExpired(absl::Time now) {
  std::vector<std::shared_ptr<const Tensor>> doomed;  // destroyed outside the lock
  {
    absl::MutexLock lock(&mu_);
    for (auto it = entries_.begin(); it != entries_.end();) {
      if (it->second.expires <= now) {
        doomed.push_back(std::move(it->second.tensor));
        entries_.erase(it++);
      } else {
        ++it;
      }
    }
    expired_ += doomed.size();
  }
  client_segments_.ForgetUnlinked();
  return static_cast<int>(doomed.size());
}

void TensorStore::StartSweeper(absl::Duration interval) {
  sweeper_ = std::thread([this, interval] {
    sweeper_mu_.Lock();
    while (!sweeper_mu_.AwaitWithTimeout(absl::Condition(&stopping_), interval)) {
      sweeper_mu_.Unlock();
      SweepExpired(absl::Now());
      sweeper_mu_.Lock();
    }
    sweeper_mu_.Unlock();
  });
}

StoreStats TensorStore::Stats() const {
  StoreStats s;
  s.bytes_in_use = accounting_->bytes_in_use.load();
  s.segments = accounting_->segments.load();
  s.client_regions = accounting_->client_regions.load();
  s.pool_bytes = pool_->bytes();
  s.pool_hits = pool_->hits();
  s.client_segments_cached = client_segments_.size();
  absl::MutexLock lock(&mu_);
  s.tensors = entries_.size();
  s.expired = expired_;
  s.connection_leases = connection_leases_;
  return s;
}

int TensorStore::SweepOrphans(const std::string& prefix) {
  DIR* dir = opendir("/dev/shm");
  if (dir == nullptr) return 0;
  int removed = 0;
  const std::string lead = prefix + "-";
  while (const dirent* e = readdir(dir)) {
    absl::string_view name = e->d_name;
    if (!absl::ConsumePrefix(&name, lead)) continue;
    // <pid>.<start>-<random>
    std::vector<absl::string_view> parts = absl::StrSplit(name, absl::MaxSplits('-', 1));
    std::vector<absl::string_view> instance = absl::StrSplit(parts[0], '.');
    pid_t pid;
    if (parts.size() != 2 || instance.size() != 2 || !absl::SimpleAtoi(instance[0], &pid)) {
      continue;
    }
    if (ProcessStartTime(pid) == instance[1]) continue;  // still running
    if (shm_unlink(absl::StrCat("/", e->d_name).c_str()) == 0) ++removed;
  }
  closedir(dir);
  return removed;
}

}  // namespace asarray::server
