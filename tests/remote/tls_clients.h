// Test support for remote clients: ClientOptions from the files of
// scripts/test_pki.sh, and the refusals a mutual-TLS listener must give.
#ifndef ASARRAY_TESTS_REMOTE_TLS_CLIENTS_H_
#define ASARRAY_TESTS_REMOTE_TLS_CLIENTS_H_

#include <memory>
#include <string>

#include "client/client.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace asarray::testing {

// TLS trusting `ca` of the PKI in `pki`, as client `who` ("": no client
// certificate).
inline ClientOptions TlsAs(const std::string& pki, const std::string& who,
                           const std::string& ca = "ca.pem") {
  ClientOptions options;
  options.tls_ca_file = pki + "/" + ca;
  if (!who.empty()) {
    options.tls_cert_file = pki + "/" + who + ".pem";
    options.tls_key_file = pki + "/" + who + ".key";
  }
  return options;
}

// A conversion from a plaintext client, from one that does not trust the
// server's certificate, and from one without a client certificate: each
// answers UNAVAILABLE, saying it is about TLS and what the client expected.
inline void ExpectTlsRefusals(const std::string& address, const std::string& pki) {
  struct Refused {
    const char* what;
    ClientOptions options;
    const char* says;
  };
  const Refused cases[] = {
      {"plaintext", ClientOptions(), "plaintext TCP"},
      {"an untrusted server certificate", TlsAs(pki, "alice", "untrusted.pem"), "untrusted.pem"},
      {"no client certificate", TlsAs(pki, ""), "needs a certificate and key"},
  };
  for (const Refused& c : cases) {
    absl::StatusOr<std::unique_ptr<Client>> client = Client::Connect(address, c.options);
    ASSERT_TRUE(client.ok()) << c.what << ": " << client.status();
    const absl::Status status = (*client)->ConvertLiteral(Literal::Int(1), {}).status();
    EXPECT_EQ(status.code(), absl::StatusCode::kUnavailable) << c.what << ": " << status;
    EXPECT_THAT(status.message(), ::testing::HasSubstr("TLS")) << c.what;
    EXPECT_THAT(status.message(), ::testing::HasSubstr(c.says)) << c.what;
  }
}

}  // namespace asarray::testing

#endif  // ASARRAY_TESTS_REMOTE_TLS_CLIENTS_H_
