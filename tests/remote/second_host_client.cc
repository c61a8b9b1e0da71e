// The C++ client's half of the two-host test (two_hosts_test.sh runs it in
// the client's network namespace): a server on the other side of a veth
// pair, over mutual TLS. ASARRAY_REMOTE_SERVER is its "ip:port" and
// ASARRAY_REMOTE_PKI the folder of scripts/test_pki.sh's files.
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/remote/tls_clients.h"

namespace asarray {
namespace {

std::string Env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? "" : value;
}

ClientOptions As(const std::string& who) { return testing::TlsAs(Env("ASARRAY_REMOTE_PKI"), who); }

std::unique_ptr<Client> Connect(const ClientOptions& options) {
  absl::StatusOr<std::unique_ptr<Client>> client =
      Client::Connect(Env("ASARRAY_REMOTE_SERVER"), options);
  EXPECT_TRUE(client.ok()) << client.status();
  return client.ok() ? *std::move(client) : nullptr;
}

TEST(SecondHost, ConvertUploadConvertToDataReadAndRelease) {
  std::unique_ptr<Client> alice = Connect(As("alice"));
  ASSERT_NE(alice, nullptr);
  ASSERT_TRUE(alice->remote());
  ASSERT_TRUE(alice->Health().ok());

  // Convert: int32 to float64, back as bytes.
  const std::vector<int32_t> small = {1, -2, 3};
  ConvertOptions to_double;
  to_double.dtype = DType::kFloat64;
  absl::StatusOr<MappedTensor> cast =
      alice->ConvertInline(small.data(), 12, DType::kInt32, {{3}, {1}, 0}, to_double);
  ASSERT_TRUE(cast.ok()) << cast.status();
  EXPECT_EQ(static_cast<const double*>(cast->data())[1], -2.0);

  // Upload: 24 MiB streamed from this process's memory, kept on the server.
  std::vector<float> big(6 << 20);
  for (size_t i = 0; i < big.size(); ++i) big[i] = static_cast<float>(i % 1000);
  v1::ConvertUploadHeader header;
  header.set_dtype(v1::DTYPE_FLOAT32);
  header.mutable_layout()->add_shape(static_cast<int64_t>(big.size()));
  header.mutable_layout()->add_strides(1);
  header.set_storage_size(big.size() * 4);
  absl::StatusOr<v1::ConvertResponse> uploaded = alice->Upload(header, big.data());
  ASSERT_TRUE(uploaded.ok()) << uploaded.status();
  const std::string id = uploaded->handle().id();
  ASSERT_FALSE(id.empty());

  // Read it back whole.
  absl::StatusOr<std::string> read = alice->ReadBytes(id);
  ASSERT_TRUE(read.ok()) << read.status();
  ASSERT_EQ(read->size(), big.size() * 4);
  EXPECT_EQ(std::memcmp(read->data(), big.data(), read->size()), 0);

  // ConvertToData of the held tensor, cast to float16: streamed, nothing kept.
  v1::ConvertRequest request;
  request.mutable_source()->set_tensor_id(id);
  request.mutable_options()->set_dtype(v1::DTYPE_FLOAT16);
  HandleInfo handle;
  absl::StatusOr<std::string> half = alice->ConvertToData(request, &handle);
  ASSERT_TRUE(half.ok()) << half.status();
  EXPECT_EQ(half->size(), big.size() * 2);
  EXPECT_EQ(handle.dtype, DType::kFloat16);
  uint16_t element = 0;
  std::memcpy(&element, half->data() + 2 * 999, 2);
  EXPECT_EQ(element, 0x63CE);  // 999.0 in half precision

  // Bob cannot reach it; alice releases it.
  std::unique_ptr<Client> bob = Connect(As("bob"));
  ASSERT_NE(bob, nullptr);
  EXPECT_EQ(bob->ReadBytes(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bob->Release(id).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(bob->ConvertTensor(id, {}).status().code(), absl::StatusCode::kNotFound);
  absl::StatusOr<std::vector<HandleInfo>> listed = bob->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
  EXPECT_TRUE(alice->Release(id).ok());
  EXPECT_EQ(alice->ReadBytes(id).status().code(), absl::StatusCode::kNotFound);
  listed = alice->List();
  ASSERT_TRUE(listed.ok());
  EXPECT_TRUE(listed->empty());
}

TEST(SecondHost, RefusalsSayTheyAreAboutTls) {
  testing::ExpectTlsRefusals(Env("ASARRAY_REMOTE_SERVER"), Env("ASARRAY_REMOTE_PKI"));
}

}  // namespace
}  // namespace asarray

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  if (std::getenv("ASARRAY_REMOTE_SERVER") == nullptr ||
      std::getenv("ASARRAY_REMOTE_PKI") == nullptr) {
    std::fprintf(stderr,
                 "second_host_client: run by two_hosts_test.sh, which sets "
                 "ASARRAY_REMOTE_SERVER and ASARRAY_REMOTE_PKI\n");
    return 2;
  }
  return RUN_ALL_TESTS();
}
