#include "server/call_scope.h"

namespace asarray::server {

CallScope::~CallScope() {
  if (gate_ != nullptr) gate_->Exit();
}

CallScope CallGate::Enter() {
  absl::MutexLock lock(&mu_);
  ++in_flight_;
  return CallScope(this, !draining_);
}

void CallGate::Exit() {
  absl::MutexLock lock(&mu_);
  --in_flight_;
}

bool CallGate::Drain(absl::Duration grace) {
  absl::MutexLock lock(&mu_);
  draining_ = true;
  return mu_.AwaitWithTimeout(absl::Condition(
                                  +[](int* in_flight) { return *in_flight == 0; }, &in_flight_),
                              grace);
}

}  // namespace asarray::server
