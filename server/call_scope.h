// The calls in flight, so that shutdown can wait for them: CallGate counts
// them, and a CallScope is one of them, from its start until gRPC is done
// with it. Thread-safe.
#ifndef ASARRAY_SERVER_CALL_SCOPE_H_
#define ASARRAY_SERVER_CALL_SCOPE_H_

#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace asarray::server {

class CallGate;

// One call in flight: entered by CallGate::Enter, left when destroyed (or
// when the scope it was moved into is). Movable, not copyable.
class CallScope {
 public:
  CallScope(CallScope&& other) noexcept
      : gate_(std::exchange(other.gate_, nullptr)), serving_(other.serving_) {}
  CallScope& operator=(CallScope&&) = delete;
  CallScope(const CallScope&) = delete;
  CallScope& operator=(const CallScope&) = delete;
  ~CallScope();

  // False when the call began while the server drained: it must then fail
  // with UNAVAILABLE (it still counts until it is over).
  bool serving() const { return serving_; }

 private:
  friend class CallGate;
  CallScope(CallGate* gate, bool serving) : gate_(gate), serving_(serving) {}

  CallGate* gate_;
  bool serving_;
};

class CallGate {
 public:
  CallGate() = default;
  CallGate(const CallGate&) = delete;
  CallGate& operator=(const CallGate&) = delete;

  // Every call enters when it starts and holds the scope until gRPC is done
  // with it.
  CallScope Enter();
  // Refuses new calls and waits up to `grace` for those in flight. Returns
  // whether all finished. Shutdown relies on this count rather than on
  // gRPC's, so that it never waits for calls that are already over.
  bool Drain(absl::Duration grace);

 private:
  friend class CallScope;
  void Exit();

  absl::Mutex mu_;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  bool draining_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_CALL_SCOPE_H_
