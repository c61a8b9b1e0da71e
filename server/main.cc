// asarrayd: serves torch.asarray over gRPC. With no flags it listens on the
// default Unix socket (see --help). SIGTERM or SIGINT shut it down
// gracefully: in-flight calls finish and every segment it created is unlinked.
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/flags/internal/parse.h"
#include "absl/flags/internal/usage.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "server/server.h"
#include "wire/posix_util.h"

ABSL_FLAG(std::vector<std::string>, listen, {"default"},
          "Comma-separated gRPC addresses: unix:/path, or host:port for TCP (only when "
          "named). 'default' is $XDG_RUNTIME_DIR/asarrayd/asarrayd.sock, or "
          "/tmp/asarrayd-<uid>/asarrayd.sock without XDG_RUNTIME_DIR.");
ABSL_FLAG(std::string, tls_cert, "",
          "PEM certificate chain: with --tls_key, TCP listeners serve TLS.");
ABSL_FLAG(std::string, tls_key, "", "PEM private key for --tls_cert.");
ABSL_FLAG(std::string, tls_client_ca, "",
          "PEM CA bundle: TCP callers must present a client certificate it verifies (mutual "
          "TLS), and each certificate subject owns its own handles. Needs --tls_cert.");
ABSL_FLAG(bool, allow_insecure_tcp, false,
          "Serve plaintext TCP on non-loopback addresses (without TLS, TCP listeners must "
          "otherwise be on 127.0.0.0/8, ::1 or localhost).");
ABSL_FLAG(std::string, shm_prefix, "asarrayd",
          "Prefix of the shared-memory segments this server creates.");
ABSL_FLAG(absl::Duration, lease_ttl, absl::Minutes(10), "Lease of each handle unless renewed.");
ABSL_FLAG(absl::Duration, max_lease_ttl, absl::Hours(24), "Longest lease a renewal may ask.");
ABSL_FLAG(uint64_t, max_bytes, 0,
          "Quota on the bytes of all result segments together; 0 means none.");
ABSL_FLAG(uint64_t, segment_pool_bytes, 128 << 20,
          "Bytes of fresh segments kept created and touched ahead of demand, for sizes of "
          "1 MiB and more that were recently requested; 0 disables the pool.");
ABSL_FLAG(int, workers, 4, "Threads that perform conversions.");
ABSL_FLAG(bool, local_transport, true,
          "Serve same-host clients over a SOCK_SEQPACKET socket beside each Unix socket (its "
          "path plus .local) as well: memory as file descriptors, leases tied to the "
          "connection.");
ABSL_FLAG(int64_t, max_message_bytes, 64 << 20, "Largest gRPC message accepted or sent.");
ABSL_FLAG(std::string, metrics_listen, "",
          "Serve Prometheus metrics at http://HOST:PORT/metrics; ':PORT' or 'PORT' means "
          "127.0.0.1, port 0 picks a free one. Empty (the default): none.");

namespace {

// --help and --helpshort list this file's flags, asarrayd's own; --helpfull
// adds those of the libraries. (By default absl matches flags to the program
// by file name, and "main.cc" names no program.)
bool IsOwnFlagFile(absl::string_view file) { return absl::EndsWith(file, "server/main.cc"); }

}  // namespace

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "Serves torch.asarray over gRPC, results in shared memory.\n"
      "usage: asarrayd [--listen=ADDR,...] [flags]; with no flags it serves the default Unix "
      "socket.");
  absl::FlagsUsageConfig usage;
  usage.contains_help_flags = IsOwnFlagFile;
  usage.contains_helpshort_flags = IsOwnFlagFile;
  usage.version_string = [] { return std::string("asarrayd " ASARRAYD_VERSION "\n"); };
  absl::SetFlagsUsageConfig(usage);
  // absl::ParseCommandLine exits 1 after --help; a help asked for is a
  // success. So the usage flags are handled here, after parsing the rest.
  const std::vector<char*> rest = absl::flags_internal::ParseCommandLineImpl(
      argc, argv, absl::flags_internal::ArgvListAction::kRemoveParsedArgs,
      absl::flags_internal::UsageFlagsAction::kIgnoreUsage,
      absl::flags_internal::OnUndefinedFlag::kAbortIfUndefined);
  if (absl::flags_internal::HandleUsageFlags(std::cout, absl::ProgramUsageMessage()) != -1) {
    return 0;
  }
  if (rest.size() > 1) {
    std::fprintf(stderr,
                 "asarrayd: unexpected argument '%s'; flags are --name=value (see --help)\n",
                 rest[1]);
    return 2;
  }
  // absl::Mutex's lock-order graph, kept for deadlock reports, costs every
  // lock a lookup; the tests' builds keep it (they run with it on).
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);

  // Block the shutdown signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGINT);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  signal(SIGPIPE, SIG_IGN);

  asarray::server::ServerOptions options;
  options.listen = absl::GetFlag(FLAGS_listen);
  options.tls_cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls_key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls_client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.allow_insecure_tcp = absl::GetFlag(FLAGS_allow_insecure_tcp);
  options.store.prefix = absl::GetFlag(FLAGS_shm_prefix);
  options.store.default_ttl = absl::GetFlag(FLAGS_lease_ttl);
  options.store.max_ttl = absl::GetFlag(FLAGS_max_lease_ttl);
  options.store.max_bytes = absl::GetFlag(FLAGS_max_bytes);
  options.store.pool_bytes = absl::GetFlag(FLAGS_segment_pool_bytes);
  options.workers = absl::GetFlag(FLAGS_workers);
  options.local_transport = absl::GetFlag(FLAGS_local_transport);
  options.max_message_bytes = absl::GetFlag(FLAGS_max_message_bytes);
  options.metrics_listen = absl::GetFlag(FLAGS_metrics_listen);

  // Every connection, client memfd and result memfd costs a descriptor.
  const uint64_t fd_limit = asarray::RaiseFdLimit();
  auto server = asarray::server::Server::Start(options);
  if (!server.ok()) {
    std::fprintf(stderr, "asarrayd: %s\n", server.status().ToString().c_str());
    return 1;
  }
  std::fprintf(stderr, "asarrayd: listening on %s (instance %s, swept %d orphaned segments)\n",
               absl::StrJoin((*server)->addresses(), ", ").c_str(),
               (*server)->store().instance().c_str(), (*server)->orphans_swept());
  std::fprintf(stderr, "asarrayd: %s\n", (*server)->cuda().Describe().c_str());
  std::fprintf(stderr, "asarrayd: up to %llu file descriptors\n",
               static_cast<unsigned long long>(fd_limit));
  if (!(*server)->metrics_address().empty()) {
    std::fprintf(stderr, "asarrayd: metrics on http://%s/metrics\n",
                 (*server)->metrics_address().c_str());
  }

  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    std::fprintf(stderr, "asarrayd: signal %d, shutting down\n", sig);
    (*server)->Shutdown();
  });
  (*server)->Wait();
  waiter.join();
  server->reset();
  std::fprintf(stderr, "asarrayd: stopped\n");
  return 0;
}
