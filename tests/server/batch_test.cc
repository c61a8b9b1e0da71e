// ConvertBatch: the conformance corpus sent as batches, one arena per batch,
// all or nothing, and every bad input with its code; over gRPC and over the
// local transport.
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "client/client.h"
#include "core/status_macros.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/conformance/case_loader.h"
#include "tests/server/test_server.h"
#include "wire/proto_convert.h"

namespace asarray::testing {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

constexpr uint64_t kAlign = 64;

uint64_t AlignUp(uint64_t n) { return (n + kAlign - 1) / kAlign * kAlign; }

v1::ConvertRequest LiteralItem(const Literal& literal, const ConvertOptions& options) {
  v1::ConvertRequest item;
  EXPECT_TRUE(LiteralToProto(literal, item.mutable_source()->mutable_literal()).ok());
  OptionsToProto(options, item.mutable_options());
  return item;
}

v1::ConvertRequest InlineItem(DType dtype, const Layout& layout, const std::string& storage,
                              const ConvertOptions& options = {}) {
  v1::ConvertRequest item;
  v1::InlineArray* array = item.mutable_source()->mutable_inline_array();
  array->set_dtype(DTypeToProto(dtype));
  LayoutToProto(layout, array->mutable_layout());
  array->set_storage(storage);
  OptionsToProto(options, item.mutable_options());
  return item;
}

// An inline item of the bytes the view touches, as the client sends them.
v1::ConvertRequest TouchedInlineItem(DType dtype, const Layout& layout, const std::string& storage,
                                     const ConvertOptions& options) {
  absl::StatusOr<ByteRange> range = ComputeByteRange(layout, ItemSize(dtype));
  if (!range.ok() || range->begin < 0 || static_cast<uint64_t>(range->end) > storage.size()) {
    return InlineItem(dtype, layout, storage, options);  // for the server to refuse
  }
  Layout sent = layout;
  sent.offset -= range->begin / static_cast<int64_t>(ItemSize(dtype));
  return InlineItem(dtype, sent,
                    storage.substr(static_cast<size_t>(range->begin),
                                   static_cast<size_t>(range->end - range->begin)),
                    options);
}

v1::ConvertRequest FdItem(uint32_t fd_index, uint64_t offset, uint64_t size, DType dtype,
                          const Layout& layout, const ConvertOptions& options = {}) {
  v1::ConvertRequest item;
  v1::FdArray* array = item.mutable_source()->mutable_fd();
  array->set_fd_index(fd_index);
  array->set_offset(offset);
  array->set_size(size);
  array->set_dtype(DTypeToProto(dtype));
  LayoutToProto(layout, array->mutable_layout());
  OptionsToProto(options, item.mutable_options());
  return item;
}

v1::ConvertRequest IdItem(const std::string& id, const ConvertOptions& options = {}) {
  v1::ConvertRequest item;
  item.mutable_source()->set_tensor_id(id);
  OptionsToProto(options, item.mutable_options());
  return item;
}

Layout Vector(int64_t n) { return Layout{{n}, {1}, 0}; }

std::string Int32s(const std::vector<int32_t>& values) {
  return std::string(reinterpret_cast<const char*>(values.data()), values.size() * 4);
}

ConvertOptions ToDType(DType dtype) {
  ConvertOptions options;
  options.dtype = dtype;
  return options;
}

// The index a batch error names ("item N: ..." or "item N (key): ...").
int NamedItem(const absl::Status& status) {
  absl::string_view m = status.message();
  if (!absl::ConsumePrefix(&m, "item ")) return -1;
  const size_t end = m.find_first_of(" :");
  int index = -1;
  if (end == absl::string_view::npos || !absl::SimpleAtoi(m.substr(0, end), &index)) return -1;
  return index;
}

// What a batch item's error says of the item itself.
absl::Status ItemOwnStatus(const absl::Status& status) {
  const size_t colon = status.message().find(": ");
  return absl::Status(status.code(), status.message().substr(colon + 2));
}

// --- The corpus in batches ---------------------------------------------------

enum class Mode { kInline, kFd };

// One batch of cases as a request: array inputs inline, or all in one memfd
// (`region`, at 64-byte aligned offsets) over the local transport.
struct CaseBatch {
  std::vector<const ConformanceCase*> cases;
  v1::ConvertBatchRequest request;
  std::optional<SharedRegion> region;
};

absl::StatusOr<CaseBatch> BuildBatch(const std::vector<const ConformanceCase*>& cases, Mode mode) {
  CaseBatch batch;
  batch.cases = cases;
  uint64_t bytes = 0;
  std::vector<uint64_t> offsets;
  for (const ConformanceCase* c : cases) {
    offsets.push_back(bytes);
    if (c->is_array) bytes = AlignUp(bytes + c->storage.size());
  }
  if (mode == Mode::kFd) {
    ASARRAY_ASSIGN_OR_RETURN(SharedRegion region,
                             SharedRegion::CreateMemfd(std::max<uint64_t>(bytes, 1)));
    batch.region.emplace(std::move(region));
  }
  for (size_t i = 0; i < cases.size(); ++i) {
    const ConformanceCase& c = *cases[i];
    batch.request.add_keys(c.id);
    if (!c.is_array) {
      *batch.request.add_items() = LiteralItem(c.literal, c.options);
    } else if (mode == Mode::kInline) {
      *batch.request.add_items() = TouchedInlineItem(c.dtype, c.layout, c.storage, c.options);
    } else {
      auto* base = static_cast<unsigned char*>(batch.region->data());
      if (!c.storage.empty()) std::memcpy(base + offsets[i], c.storage.data(), c.storage.size());
      *batch.request.add_items() =
          FdItem(0, offsets[i], c.storage.size(), c.dtype, c.layout, c.options);
    }
  }
  return batch;
}

class BatchConformance : public ::testing::TestWithParam<Mode> {};

// Every case goes in a batch of 1 to 64 mixed cases. A batch holding a case
// that fails must fail as that case does, naming it; the batch is then sent
// again without it, until what is left succeeds. Each result is judged as
// the case says and compared with the single Convert of the same case.
TEST_P(BatchConformance, TheCorpusInBatchesMatchesSingleConverts) {
  const Mode mode = GetParam();
  absl::StatusOr<std::vector<ConformanceCase>> cases =
      LoadCases(CasesPath(ASARRAY_CONFORMANCE_DIR "/cases.jsonl"));
  ASSERT_TRUE(cases.ok()) << cases.status();
  ASSERT_FALSE(cases->empty());
  std::unique_ptr<TestServer> server = TestServer::Start();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client =
      mode == Mode::kFd ? server->NewClient() : server->NewGrpcClient();
  ASSERT_EQ(client->has_local_transport(), mode == Mode::kFd);
  const bool inline_transport = mode == Mode::kInline;

  std::mt19937 rng(20261203);
  std::vector<const ConformanceCase*> order;
  for (const ConformanceCase& c : *cases) order.push_back(&c);
  std::shuffle(order.begin(), order.end(), rng);

  int judged = 0;
  int batches = 0;
  int named_failures = 0;
  for (size_t start = 0; start < order.size();) {
    const size_t size =
        std::min<size_t>(std::uniform_int_distribution<size_t>(1, 64)(rng), order.size() - start);
    std::vector<const ConformanceCase*> left(
        order.begin() + static_cast<std::ptrdiff_t>(start),
        order.begin() + static_cast<std::ptrdiff_t>(start + size));
    start += size;
    while (!left.empty()) {
      absl::StatusOr<CaseBatch> batch = BuildBatch(left, mode);
      ASSERT_TRUE(batch.ok()) << batch.status();
      std::vector<int> fds;
      if (batch->region.has_value()) fds.push_back(batch->region->fd());
      ++batches;
      absl::StatusOr<std::vector<MappedTensor>> results =
          client->ConvertAndMapBatch(batch->request, fds);
      if (!results.ok()) {
        const int failed = NamedItem(results.status());
        ASSERT_GE(failed, 0) << "a batch error that names no item: " << results.status();
        ASSERT_LT(failed, static_cast<int>(left.size()));
        const ConformanceCase& c = *left[static_cast<size_t>(failed)];
        EXPECT_THAT(std::string(results.status().message()),
                    StartsWith(absl::StrCat("item ", failed, " (", c.id, "): ")));
        Outcome outcome;
        outcome.status = ItemOwnStatus(results.status());
        const std::string diff = Judge(c, outcome, inline_transport);
        EXPECT_EQ(diff, "") << c.id << " failed its batch: " << results.status();
        ++named_failures;
        left.erase(left.begin() + failed);
        // Nothing of the failed batch is held.
        EXPECT_EQ(server->server().store().Stats().tensors, 0u);
        continue;
      }
      ASSERT_EQ(results->size(), left.size());
      for (size_t i = 0; i < left.size(); ++i) {
        const ConformanceCase& c = *left[i];
        const Outcome batched = OutcomeOf((*results)[i]);
        EXPECT_EQ(Judge(c, batched, inline_transport), "") << c.id << " in a batch";
        ++judged;
        // The same case alone.
        absl::StatusOr<MappedTensor> single =
            c.is_array
                ? (mode == Mode::kInline
                       ? client->ConvertInline(c.storage.data(), c.storage.size(), c.dtype,
                                               c.layout, c.options)
                       : client->ConvertRegion(
                             *batch->region,
                             batch->request.items(static_cast<int>(i)).source().fd().offset(),
                             c.storage.size(), c.dtype, c.layout, c.options))
                : client->ConvertLiteral(c.literal, c.options);
        const Outcome alone = OutcomeOf(single);
        ASSERT_TRUE(alone.status.ok()) << c.id << ": " << alone.status;
        EXPECT_EQ(batched.dtype, alone.dtype) << c.id;
        EXPECT_EQ(batched.shape, alone.shape) << c.id;
        EXPECT_EQ(batched.strides, alone.strides) << c.id;
        EXPECT_EQ(batched.shares_memory, alone.shares_memory) << c.id;
        EXPECT_EQ(batched.requires_grad, alone.requires_grad) << c.id;
        EXPECT_EQ(batched.warnings, alone.warnings) << c.id;
        EXPECT_EQ(batched.data, alone.data) << c.id;
        if (mode == Mode::kFd) {
          const HandleInfo& h = (*results)[i].handle();
          EXPECT_TRUE(h.has_fd) << c.id;
          EXPECT_EQ(h.shares_memory, h.fd_from_request) << c.id;
          if (!h.shares_memory) {
            EXPECT_EQ(h.fd_offset % kAlign, 0u) << c.id;
          }
        }
      }
      break;
    }
  }
  EXPECT_EQ(judged + named_failures, static_cast<int>(order.size()));
  EXPECT_GT(named_failures, 0) << "the corpus has failing cases; none failed a batch";
  std::printf("%d cases in %d batch calls: %d results judged, %d failures named\n",
              static_cast<int>(order.size()), batches, judged, named_failures);
  if (mode == Mode::kFd) {
    EXPECT_EQ(server->SegmentsInDevShm(), 0);
  }
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
  server->Stop();
}

INSTANTIATE_TEST_SUITE_P(Transports, BatchConformance, ::testing::Values(Mode::kInline, Mode::kFd),
                         [](const ::testing::TestParamInfo<Mode>& p) {
                           return p.param == Mode::kInline ? "Grpc" : "Local";
                         });

// --- The arena ---------------------------------------------------------------

class BatchTest : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    server_ = TestServer::Start();
    ASSERT_NE(server_, nullptr);
    client_ = local() ? server_->NewClient() : server_->NewGrpcClient();
    ASSERT_EQ(client_->has_local_transport(), local());
  }
  bool local() const { return GetParam(); }
  server::StoreStats Stats() { return server_->server().store().Stats(); }

  std::unique_ptr<TestServer> server_;
  std::unique_ptr<Client> client_;
};

// 16 copies of different dtypes and sizes: one segment, each result at a
// 64-byte boundary of it, its own handle and lease, and the right values.
TEST_P(BatchTest, CopiesShareOneArenaEachAligned) {
  v1::ConvertBatchRequest batch;
  std::vector<std::vector<int32_t>> inputs;
  for (int i = 0; i < 16; ++i) {
    std::vector<int32_t> values(static_cast<size_t>(3 + i * 5));
    for (size_t j = 0; j < values.size(); ++j) values[j] = static_cast<int32_t>(i * 1000 + j);
    const DType to = i % 3 == 0 ? DType::kFloat64 : i % 3 == 1 ? DType::kInt16 : DType::kFloat32;
    *batch.add_items() = InlineItem(DType::kInt32, Vector(static_cast<int64_t>(values.size())),
                                    Int32s(values), ToDType(to));
    inputs.push_back(std::move(values));
  }
  const server::StoreStats before = Stats();
  std::vector<UniqueFd> received;
  absl::StatusOr<v1::ConvertBatchResponse> response = client_->ConvertBatch(batch, {}, &received);
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(response->handles_size(), 16);
  EXPECT_EQ(Stats().segments, before.segments + 1);
  EXPECT_EQ(Stats().tensors, before.tensors + 16);
  if (local()) {
    EXPECT_EQ(received.size(), 1u) << "one memfd for the whole batch";
  }
  std::vector<std::string> ids;
  std::string memory;
  for (const v1::TensorHandle& h : response->handles()) {
    ids.push_back(h.id());
    absl::StatusOr<HandleInfo> info = HandleFromProto(h);
    ASSERT_TRUE(info.ok());
    const uint64_t offset = local() ? info->fd_offset : info->shm_offset;
    EXPECT_EQ(offset % kAlign, 0u);
    if (local()) {
      EXPECT_EQ(info->fd_index, 0u);
      EXPECT_FALSE(info->fd_from_request);
    } else {
      if (memory.empty()) memory = info->shm_name;
      EXPECT_EQ(info->shm_name, memory) << "every result in the one segment";
    }
  }
  EXPECT_EQ(std::set<std::string>(ids.begin(), ids.end()).size(), 16u) << "an id each";
  for (const std::string& id : ids) ASSERT_TRUE(client_->Release(id).ok());

  absl::StatusOr<std::vector<MappedTensor>> mapped = client_->ConvertAndMapBatch(batch);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  for (int i = 0; i < 16; ++i) {
    const MappedTensor& t = (*mapped)[static_cast<size_t>(i)];
    const std::vector<int32_t>& in = inputs[static_cast<size_t>(i)];
    ASSERT_EQ(t.numel(), static_cast<int64_t>(in.size()));
    for (size_t j = 0; j < in.size(); ++j) {
      double got = 0;
      if (t.dtype() == DType::kFloat64) got = static_cast<const double*>(t.data())[j];
      if (t.dtype() == DType::kInt16) got = static_cast<const int16_t*>(t.data())[j];
      if (t.dtype() == DType::kFloat32) got = static_cast<const float*>(t.data())[j];
      // int32 -> int16 wraps, as torch's cast does.
      const double want = t.dtype() == DType::kInt16 ? static_cast<int16_t>(in[j]) : in[j];
      ASSERT_EQ(got, want) << "item " << i << " element " << j;
    }
  }
}

// The arena is one segment until the last of its handles goes.
TEST_P(BatchTest, TheArenaGoesWithItsLastHandle) {
  v1::ConvertBatchRequest batch;
  for (int i = 0; i < 4; ++i) {
    *batch.add_items() = InlineItem(DType::kInt32, Vector(1024), std::string(4096, char(i)),
                                    ToDType(DType::kFloat32));
  }
  const uint64_t segments = Stats().segments;
  absl::StatusOr<v1::ConvertBatchResponse> response = client_->ConvertBatch(batch);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(Stats().segments, segments + 1);
  EXPECT_EQ(Stats().bytes_in_use, AlignUp(4096) * 3 + 4096);
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(client_->Release(response->handles(i).id()).ok());
    EXPECT_EQ(Stats().segments, segments + 1) << "released " << i + 1 << " of 4";
  }
  ASSERT_TRUE(client_->Release(response->handles(3).id()).ok());
  EXPECT_EQ(Stats().segments, segments);
  EXPECT_EQ(Stats().bytes_in_use, 0u);
  EXPECT_TRUE(Eventually([&] { return server_->SegmentsInDevShm() == 0; }));
}

// A batch mixing a copy with aliases: the aliases are the sources' own memory.
TEST_P(BatchTest, AliasesStayAliases) {
  // A held tensor to alias by id.
  v1::ConvertBatchRequest first;
  *first.add_items() = InlineItem(DType::kInt32, Vector(4), Int32s({1, 2, 3, 4}));
  absl::StatusOr<v1::ConvertBatchResponse> held = client_->ConvertBatch(first);
  ASSERT_TRUE(held.ok()) << held.status();
  const std::string held_id = held->handles(0).id();

  v1::ConvertBatchRequest batch;
  *batch.add_items() = IdItem(held_id);                            // alias
  *batch.add_items() = IdItem(held_id, ToDType(DType::kFloat32));  // copy
  std::vector<int> fds;
  absl::StatusOr<SharedRegion> region = SharedRegion::CreateMemfd(4096);
  if (local()) {
    ASSERT_TRUE(region.ok());
    std::memcpy(region->data(), Int32s({5, 6, 7, 8}).data(), 16);
    fds.push_back(region->fd());
    *batch.add_items() = FdItem(0, 0, 16, DType::kInt32, Vector(4));  // alias
  }
  const uint64_t segments = Stats().segments;
  std::vector<UniqueFd> received;
  absl::StatusOr<v1::ConvertBatchResponse> response = client_->ConvertBatch(batch, fds, &received);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_TRUE(response->handles(0).shares_memory());
  EXPECT_FALSE(response->handles(1).shares_memory());
  EXPECT_EQ(Stats().segments, segments + 1) << "only the copy made memory";
  absl::StatusOr<HandleInfo> alias = HandleFromProto(response->handles(0));
  absl::StatusOr<HandleInfo> original = HandleFromProto(held->handles(0));
  ASSERT_TRUE(alias.ok() && original.ok());
  EXPECT_EQ(alias->shm_name, original->shm_name);
  EXPECT_EQ(alias->fd_offset, original->fd_offset);
  if (local()) {
    EXPECT_TRUE(response->handles(2).shares_memory());
    EXPECT_TRUE(response->handles(2).memory_case() == v1::TensorHandle::kFd &&
                response->handles(2).fd().request_fd());
    // The held tensor's memfd and the copy's arena: two descriptors.
    EXPECT_EQ(received.size(), 2u);
  }
}

v1::ConvertRequest ViewItem(const std::string& id, uint64_t offset, uint64_t size, DType dtype,
                            const Layout& layout, const ConvertOptions& options = {}) {
  v1::ConvertRequest item;
  v1::TensorView* view = item.mutable_source()->mutable_tensor_view();
  view->set_tensor_id(id);
  view->set_offset(offset);
  view->set_size(size);
  view->set_dtype(DTypeToProto(dtype));
  LayoutToProto(layout, view->mutable_layout());
  OptionsToProto(options, item.mutable_options());
  return item;
}

// Views of one held allocation, taken in one batch: aliases of its very
// memory at their offsets, or casts of it; a view past it is refused.
TEST_P(BatchTest, ViewsOfAHeldTensorAliasItsMemory) {
  std::vector<int32_t> values(64);
  for (size_t i = 0; i < values.size(); ++i) values[i] = static_cast<int32_t>(i * 3);
  v1::ConvertBatchRequest hold;
  *hold.add_items() = InlineItem(DType::kUInt8, Vector(256), Int32s(values));
  absl::StatusOr<v1::ConvertBatchResponse> held = client_->ConvertBatch(hold);
  ASSERT_TRUE(held.ok()) << held.status();
  const std::string id = held->handles(0).id();
  absl::StatusOr<HandleInfo> whole = HandleFromProto(held->handles(0));
  ASSERT_TRUE(whole.ok());

  v1::ConvertBatchRequest views;
  *views.add_items() = ViewItem(id, 0, 64, DType::kInt32, Vector(16));
  *views.add_items() = ViewItem(id, 128, 128, DType::kInt32, Layout{{4, 4}, {1, 8}, 0});
  ConvertOptions no_copy;
  no_copy.copy = false;
  *views.add_items() = ViewItem(id, 64, 64, DType::kInt32, Vector(16), no_copy);
  *views.add_items() = ViewItem(id, 64, 64, DType::kInt32, Vector(16), ToDType(DType::kFloat64));
  const uint64_t segments = Stats().segments;
  absl::StatusOr<std::vector<MappedTensor>> mapped = client_->ConvertAndMapBatch(views);
  ASSERT_TRUE(mapped.ok()) << mapped.status();
  EXPECT_EQ(Stats().segments, segments + 1) << "only the cast made memory";
  for (int i = 0; i < 3; ++i) {
    const HandleInfo& h = (*mapped)[static_cast<size_t>(i)].handle();
    EXPECT_TRUE(h.shares_memory) << i;
    const uint64_t want = (local() ? whole->fd_offset : whole->shm_offset) + (i == 0   ? 0
                                                                              : i == 1 ? 128
                                                                                       : 64);
    EXPECT_EQ(local() ? h.fd_offset : h.shm_offset, want) << i;
    if (!local()) {
      EXPECT_EQ(h.shm_name, whole->shm_name);
    }
  }
  const auto* first = static_cast<const int32_t*>((*mapped)[0].data());
  EXPECT_EQ(first[5], 15);
  // (4, 4) with strides (1, 8) from element 32: element [1, 2] is 32 + 1 + 16.
  const auto* strided = static_cast<const int32_t*>((*mapped)[1].data());
  EXPECT_EQ(strided[1 + 2 * 8], (32 + 1 + 16) * 3);
  const MappedTensor& cast = (*mapped)[3];
  ASSERT_EQ(cast.dtype(), DType::kFloat64);
  EXPECT_FALSE(cast.handle().shares_memory);
  EXPECT_EQ(static_cast<const double*>(cast.data())[2], 18 * 3);

  v1::ConvertBatchRequest past;
  *past.add_items() = ViewItem(id, 200, 64, DType::kInt32, Vector(16));
  absl::StatusOr<v1::ConvertBatchResponse> refused = client_->ConvertBatch(past);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("lies outside the 256 bytes"));
  *past.mutable_items(0) = ViewItem(id, 0, 16, DType::kInt32, Vector(16));
  refused = client_->ConvertBatch(past);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument) << refused.status();
  EXPECT_THAT(std::string(refused.status().message()), HasSubstr("too small"));
  *past.mutable_items(0) = ViewItem("no-such-id", 0, 16, DType::kInt32, Vector(4));
  refused = client_->ConvertBatch(past);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kNotFound) << refused.status();
}

// Many ids released and renewed in one call; an id twice is refused first.
TEST_P(BatchTest, ReleaseAndRenewTakeManyIdsAndRefuseDuplicates) {
  v1::ConvertBatchRequest batch;
  for (int i = 0; i < 3; ++i)
    *batch.add_items() = InlineItem(DType::kInt32, Vector(1), Int32s({i}));
  batch.set_ttl_ms(60000);
  absl::StatusOr<v1::ConvertBatchResponse> response = client_->ConvertBatch(batch);
  ASSERT_TRUE(response.ok()) << response.status();
  ASSERT_EQ(Stats().tensors, 3u);
  for (const v1::TensorHandle& h : response->handles()) {
    EXPECT_GT(h.lease_expires_unix_ms(), absl::ToUnixMillis(absl::Now()) + 50000);
  }
  const std::string a = response->handles(0).id(), b = response->handles(1).id(),
                    c = response->handles(2).id();

  const std::vector<std::string> three = {a, b, c};
  absl::StatusOr<std::vector<absl::Time>> renewed = client_->Renew(three, absl::Minutes(2));
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  ASSERT_EQ(renewed->size(), 3u);
  for (absl::Time t : *renewed) EXPECT_GT(t, absl::Now() + absl::Seconds(100));
  const std::vector<std::string> renew_twice = {a, b, c, a};
  renewed = client_->Renew(renew_twice, absl::Minutes(2));
  EXPECT_EQ(renewed.status().code(), absl::StatusCode::kInvalidArgument) << renewed.status();
  EXPECT_THAT(std::string(renewed.status().message()), HasSubstr("twice"));

  const std::vector<std::string> twice = {a, b, a};
  absl::Status status = client_->Release(twice);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument) << status;
  EXPECT_EQ(Stats().tensors, 3u) << "nothing was released";
  const std::vector<std::string> all = {a, b, c};
  ASSERT_TRUE(client_->Release(all).ok());
  EXPECT_EQ(Stats().tensors, 0u);
}

// --- All or nothing ------------------------------------------------------------

// Six items; the one at `bad` fails, either while the batch is checked (an
// unspecified dtype) or once the arena is made and the items before it were
// written into it (a device out of memory, injected).
TEST_P(BatchTest, AFailureAtAnyPositionKeepsNothing) {
  int faulty = -1;
  int ran = 0;
  server_->server().service().converter()->set_batch_fault_for_testing([&](int item) {
    ++ran;
    return item == faulty ? absl::ResourceExhaustedError("out of device memory") : absl::OkStatus();
  });
  for (const bool in_arena : {false, true}) {
    for (int bad = 0; bad < 6; ++bad) {
      SCOPED_TRACE(absl::StrCat(in_arena ? "in the arena" : "while checking", ", item ", bad));
      v1::ConvertBatchRequest batch;
      for (int i = 0; i < 6; ++i) {
        batch.add_keys(absl::StrCat("k", i));
        *batch.add_items() = InlineItem(DType::kInt32, Vector(256), std::string(1024, 'x'),
                                        ToDType(DType::kFloat64));
      }
      if (in_arena) {
        faulty = bad;
      } else {
        faulty = -1;
        batch.mutable_items(bad)->mutable_source()->mutable_inline_array()->set_dtype(
            v1::DTYPE_UNSPECIFIED);
      }
      ran = 0;
      const server::StoreStats before = Stats();
      const int shm = server_->SegmentsInDevShm();
      const int memfds = CountMemfds();
      std::vector<UniqueFd> received;
      absl::StatusOr<v1::ConvertBatchResponse> response =
          client_->ConvertBatch(batch, {}, &received);
      ASSERT_FALSE(response.ok());
      EXPECT_EQ(response.status().code(), in_arena ? absl::StatusCode::kResourceExhausted
                                                   : absl::StatusCode::kInvalidArgument);
      // Checking stops before any item runs; in the arena, the items before
      // the failing one ran.
      EXPECT_EQ(ran, in_arena ? bad + 1 : 0);
      EXPECT_THAT(std::string(response.status().message()),
                  StartsWith(absl::StrCat("item ", bad, " (k", bad, "): ")));
      EXPECT_TRUE(received.empty());
      EXPECT_EQ(Stats().tensors, before.tensors);
      EXPECT_EQ(Stats().segments, before.segments);
      EXPECT_EQ(Stats().bytes_in_use, before.bytes_in_use);
      EXPECT_EQ(server_->SegmentsInDevShm(), shm);
      EXPECT_EQ(CountMemfds(), memfds) << "a memfd of the failed batch is still open";
    }
  }
  // And the server still serves.
  faulty = -1;
  v1::ConvertBatchRequest good;
  *good.add_items() = InlineItem(DType::kInt32, Vector(1), Int32s({7}));
  EXPECT_TRUE(client_->ConvertBatch(good).ok());
}

// The quota is checked for the arena as a whole.
TEST(BatchQuota, TheArenaIsCheckedAgainstTheQuotaAsAWhole) {
  std::unique_ptr<TestServer> server =
      TestServer::Start([](server::ServerOptions& o) { o.store.max_bytes = 10000; });
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = server->NewClient();
  v1::ConvertBatchRequest batch;
  // Three results of 4096 bytes: each fits the quota, the three do not.
  for (int i = 0; i < 3; ++i) {
    *batch.add_items() = InlineItem(DType::kInt32, Vector(1024), std::string(4096, 'q'));
  }
  absl::StatusOr<v1::ConvertBatchResponse> response = client->ConvertBatch(batch);
  ASSERT_FALSE(response.ok());
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(response.status().message()), HasSubstr("arena of 12288 bytes"));
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
  EXPECT_EQ(server->server().store().Stats().bytes_in_use, 0u);
  batch.mutable_items()->RemoveLast();
  EXPECT_TRUE(client->ConvertBatch(batch).ok());
}

// --- Bad inputs ------------------------------------------------------------------

TEST_P(BatchTest, BadBatchesGetPreciseCodes) {
  const auto expect = [&](const v1::ConvertBatchRequest& batch, absl::StatusCode code,
                          const std::string& says, absl::Span<const int> fds = {}) {
    const server::StoreStats before = Stats();
    absl::StatusOr<v1::ConvertBatchResponse> response = client_->ConvertBatch(batch, fds);
    EXPECT_EQ(response.status().code(), code) << response.status();
    EXPECT_THAT(std::string(response.status().message()), HasSubstr(says));
    EXPECT_EQ(Stats().tensors, before.tensors);
  };
  expect(v1::ConvertBatchRequest(), absl::StatusCode::kInvalidArgument, "no items");

  v1::ConvertBatchRequest keys;
  *keys.add_items() = InlineItem(DType::kInt32, Vector(1), Int32s({1}));
  keys.add_keys("a");
  keys.add_keys("b");
  expect(keys, absl::StatusCode::kInvalidArgument, "2 keys for 1 items");

  for (int field = 0; field < 4; ++field) {
    v1::ConvertBatchRequest batch;
    *batch.add_items() = InlineItem(DType::kInt32, Vector(1), Int32s({1}));
    v1::ConvertRequest* item = batch.add_items();
    *item = batch.items(0);
    const char* name = "";
    if (field == 0) item->set_return_data(true), name = "return_data";
    if (field == 1) item->add_release_ids("x"), name = "release_ids";
    if (field == 2) item->set_ttl_ms(5), name = "ttl_ms";
    if (field == 3) item->set_named_memory(true), name = "named_memory";
    expect(batch, absl::StatusCode::kInvalidArgument, absl::StrCat("item 1: ", name));
  }

  // A source naming a tensor the same batch releases: resolved after the
  // releases, so NOT_FOUND; and nothing of the batch is kept.
  v1::ConvertBatchRequest one;
  *one.add_items() = InlineItem(DType::kInt32, Vector(1), Int32s({1}));
  absl::StatusOr<v1::ConvertBatchResponse> held = client_->ConvertBatch(one);
  ASSERT_TRUE(held.ok());
  v1::ConvertBatchRequest chain;
  chain.add_release_ids(held->handles(0).id());
  *chain.add_items() = InlineItem(DType::kInt32, Vector(1), Int32s({2}));
  *chain.add_items() = IdItem(held->handles(0).id());
  const uint64_t tensors = Stats().tensors;
  absl::StatusOr<v1::ConvertBatchResponse> chained = client_->ConvertBatch(chain);
  EXPECT_EQ(chained.status().code(), absl::StatusCode::kNotFound) << chained.status();
  EXPECT_THAT(std::string(chained.status().message()), StartsWith("item 1: "));
  EXPECT_EQ(Stats().tensors, tensors - 1) << "the release happened; the batch kept nothing";

  // An id no tensor has yet: a later item cannot name an earlier one's result.
  v1::ConvertBatchRequest guess;
  *guess.add_items() = InlineItem(DType::kInt32, Vector(1), Int32s({2}));
  *guess.add_items() = IdItem("t-not-yet");
  expect(guess, absl::StatusCode::kNotFound, "item 1: ");

  if (local()) {
    // A descriptor that no item names.
    UniqueFd unnamed = SealedMemfd(64);
    v1::ConvertBatchRequest batch;
    *batch.add_items() = InlineItem(DType::kInt32, Vector(1), Int32s({1}));
    const int fds[] = {unnamed.get()};
    expect(batch, absl::StatusCode::kInvalidArgument, "descriptor 0 came with the ConvertBatch",
           fds);
    // An item naming one that did not come.
    *batch.add_items() = FdItem(1, 0, 4, DType::kInt32, Vector(1));
    *batch.add_items() = FdItem(0, 0, 4, DType::kInt32, Vector(1));
    expect(batch, absl::StatusCode::kInvalidArgument, "item 1: the fd source names descriptor 1",
           fds);
  }
}

// A key is given as it reads: quotes kept, a backslash doubled, other
// bytes escaped, at most 128 bytes of it.
TEST_P(BatchTest, KeysReadAsTheyAreInMessages) {
  v1::ConvertBatchRequest batch;
  *batch.add_items() = IdItem("none-such");
  batch.add_keys("['a\"b'][0]\\\n");
  absl::StatusOr<v1::ConvertBatchResponse> response = client_->ConvertBatch(batch);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(response.status().message()),
              StartsWith("item 0 (['a\"b'][0]\\\\\\x0a): "));
  batch.set_keys(0, std::string(300, 'k'));
  response = client_->ConvertBatch(batch);
  EXPECT_THAT(std::string(response.status().message()),
              StartsWith(absl::StrCat("item 0 (", std::string(128, 'k'), "... (300 bytes)): ")));
}

// Over gRPC: 100,000 items, and a batch past the message limit.
TEST(BatchLimits, TooManyItemsAndTooManyBytes) {
  std::unique_ptr<TestServer> server = TestServer::Start();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> client = server->NewGrpcClient();
  v1::ConvertBatchRequest many;
  const v1::ConvertRequest item = InlineItem(DType::kInt32, Vector(1), Int32s({1}));
  for (int i = 0; i < 100000; ++i) *many.add_items() = item;
  absl::StatusOr<v1::ConvertBatchResponse> response = client->ConvertBatch(many);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kInvalidArgument) << response.status();
  EXPECT_THAT(std::string(response.status().message()),
              HasSubstr(absl::StrCat("100000 items; one takes at most ", server::kMaxBatchItems)));

  v1::ConvertBatchRequest big;
  for (int i = 0; i < 5; ++i) {
    *big.add_items() = InlineItem(DType::kUInt8, Vector(16 << 20), std::string(16 << 20, 'b'));
  }
  response = client->ConvertBatch(big);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted) << response.status();
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);

  // Still serving.
  v1::ConvertBatchRequest fine;
  *fine.add_items() = item;
  EXPECT_TRUE(client->ConvertBatch(fine).ok());
}

// Thousands of ids in one Release or Renew of the client's, over the local
// transport, whose datagram holds fewer: all are done.
TEST(BatchLimits, ThousandsOfIdsAreReleasedAndRenewed) {
  std::unique_ptr<TestServer> server = TestServer::Start();
  ASSERT_NE(server, nullptr);
  std::unique_ptr<Client> grpc = server->NewGrpcClient();
  std::unique_ptr<Client> local = server->NewClient();
  ASSERT_TRUE(local->has_local_transport());
  v1::ConvertBatchRequest batch;
  v1::ConvertRequest item;
  item.mutable_source()->mutable_literal()->add_nodes()->set_int_value(1);
  for (int i = 0; i < server::kMaxBatchItems; ++i) *batch.add_items() = item;
  batch.set_ttl_ms(60000);
  absl::StatusOr<v1::ConvertBatchResponse> response = grpc->ConvertBatch(batch);
  ASSERT_TRUE(response.ok()) << response.status();
  std::vector<std::string> ids;
  for (const v1::TensorHandle& h : response->handles()) ids.push_back(h.id());
  absl::StatusOr<std::vector<absl::Time>> renewed = local->Renew(ids, absl::Minutes(5));
  ASSERT_TRUE(renewed.ok()) << renewed.status();
  ASSERT_EQ(renewed->size(), ids.size());
  EXPECT_GT(renewed->back(), absl::Now() + absl::Minutes(4));
  EXPECT_TRUE(local->Release(ids).ok());
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
}

// A local batch of more items than an answer holds handles is refused
// before any work.
TEST(BatchLimits, ALocalBatchOfTooManyItemsIsRefusedFirst) {
  std::unique_ptr<TestServer> server = TestServer::Start();
  ASSERT_NE(server, nullptr);
  LocalConnection connection(server->address());
  ASSERT_TRUE(connection.connected());
  v1::LocalRequest request;
  v1::ConvertRequest item;
  item.mutable_source()->mutable_literal()->add_nodes()->set_int_value(1);
  for (int i = 0; i < 2000; ++i) *request.mutable_convert_batch()->add_items() = item;
  const absl::Status status = connection.Call(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("2000 items has more handles"));
  EXPECT_EQ(server->server().store().Stats().segments, 0u) << "no arena was made";
}

// A view of a few bytes whose elements take more bytes than int64 counts
// fails as its item, before anything is registered.
TEST_P(BatchTest, AViewPastInt64BytesFailsAsItsItem) {
  v1::ConvertBatchRequest batch;
  *batch.add_items() = InlineItem(DType::kInt32, Vector(1), Int32s({1}));
  *batch.add_items() =
      InlineItem(DType::kFloat32, Layout{{int64_t{1} << 62}, {0}, 0}, std::string(4, 'f'));
  const server::StoreStats before = Stats();
  absl::StatusOr<v1::ConvertBatchResponse> response = client_->ConvertBatch(batch);
  EXPECT_EQ(response.status().code(), absl::StatusCode::kResourceExhausted) << response.status();
  EXPECT_THAT(std::string(response.status().message()), StartsWith("item 1: "));
  EXPECT_EQ(Stats().tensors, before.tensors);
  EXPECT_EQ(Stats().segments, before.segments);
}

// Over the local transport, an answer that would not fit one datagram.
TEST(BatchLimits, ALocalAnswerPastADatagramKeepsNothing) {
  std::unique_ptr<TestServer> server = TestServer::Start();
  ASSERT_NE(server, nullptr);
  LocalConnection connection(server->address());
  ASSERT_TRUE(connection.connected());
  v1::LocalRequest request;
  v1::ConvertBatchRequest* batch = request.mutable_convert_batch();
  v1::ConvertRequest item;
  item.mutable_source()->mutable_literal()->add_nodes()->set_int_value(1);
  // Few enough to be tried, too many for their handles to fit.
  for (int i = 0; i < 1500; ++i) *batch->add_items() = item;
  ASSERT_LT(request.ByteSizeLong(), kMaxLocalMessageBytes);
  const int memfds = CountMemfds();
  const absl::Status status = connection.Call(request);
  EXPECT_EQ(status.code(), absl::StatusCode::kResourceExhausted) << status;
  EXPECT_THAT(std::string(status.message()), HasSubstr("more than a local datagram carries"));
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
  EXPECT_EQ(server->server().store().Stats().segments, 0u);
  EXPECT_EQ(CountMemfds(), memfds);
  // The same batch over gRPC is fine.
  std::unique_ptr<Client> client = server->NewGrpcClient();
  absl::StatusOr<v1::ConvertBatchResponse> response = client->ConvertBatch(*batch);
  ASSERT_TRUE(response.ok()) << response.status();
  EXPECT_EQ(response->handles_size(), 1500);
}

// A TCP caller's batch: one arena of memory private to the server, read
// back item by item, and nothing kept once the results are in.
TEST(BatchRemote, ARemoteBatchComesBackAsBytesAndKeepsNothing) {
  std::unique_ptr<TestServer> server =
      TestServer::Start([](server::ServerOptions& o) { o.listen.push_back("127.0.0.1:0"); });
  ASSERT_NE(server, nullptr);
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(server->server().addresses().back());
  ASSERT_TRUE(client.ok()) << client.status();
  ASSERT_TRUE((*client)->remote());
  v1::ConvertBatchRequest batch;
  *batch.add_items() =
      InlineItem(DType::kInt32, Vector(3), Int32s({1, -2, 3}), ToDType(DType::kFloat64));
  Literal literal = Literal::List({Literal::Int(4), Literal::Int(5)});
  *batch.add_items() = LiteralItem(literal, ToDType(DType::kInt8));
  const int memfds = CountMemfds();
  absl::StatusOr<std::vector<MappedTensor>> results = (*client)->ConvertAndMapBatch(batch);
  ASSERT_TRUE(results.ok()) << results.status();
  ASSERT_EQ(results->size(), 2u);
  const MappedTensor& first = (*results)[0];
  ASSERT_EQ(first.dtype(), DType::kFloat64);
  EXPECT_EQ(static_cast<const double*>(first.data())[1], -2.0);
  const MappedTensor& second = (*results)[1];
  ASSERT_EQ(second.dtype(), DType::kInt8);
  EXPECT_EQ(static_cast<const int8_t*>(second.data())[1], 5);
  EXPECT_EQ(server->server().store().Stats().tensors, 0u);
  EXPECT_EQ(server->SegmentsInDevShm(), 0);
  EXPECT_EQ(CountMemfds(), memfds) << "a TCP caller's arena is private memory";
}

INSTANTIATE_TEST_SUITE_P(Transports, BatchTest, ::testing::Bool(),
                         [](const ::testing::TestParamInfo<bool>& p) {
                           return p.param ? "Local" : "Grpc";
                         });

}  // namespace
}  // namespace asarray::testing
