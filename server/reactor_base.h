// ReactorBase: what every streaming reactor of the service shares, as
// tensorstore's handler_template.h has it: the call's CallScope, held until
// gRPC is done with the call; one Finish that takes an absl::Status; and
// OnDone() as the only exit.
#ifndef ASARRAY_SERVER_REACTOR_BASE_H_
#define ASARRAY_SERVER_REACTOR_BASE_H_

#include <utility>

#include "absl/status/status.h"
#include "server/call_scope.h"
#include "server/service.h"

namespace asarray::server {

// `Reactor`: one of gRPC's server reactors (grpc::ServerWriteReactor<T>,
// grpc::ServerReadReactor<T>). Allocated with new; deletes itself.
template <typename Reactor>
class ReactorBase : public Reactor {
 public:
  ReactorBase(const ReactorBase&) = delete;
  ReactorBase& operator=(const ReactorBase&) = delete;

  // Ends the call: counts it, converts `status` (AsArrayService::Finished)
  // and finishes; OnDone follows. REQUIRES: called once.
  void Finish(const absl::Status& status) { Reactor::Finish(service_->Finished(status)); }

  // gRPC is done with the call: the reactor goes, and with it the call's
  // place in the drain count.
  void OnDone() final { delete this; }

 protected:
  ReactorBase(AsArrayService* service, CallScope call)
      : call_(std::move(call)), service_(service) {}

  AsArrayService* service() const { return service_; }

 private:
  const CallScope call_;  // destroyed last: the call is over once the reactor is gone
  AsArrayService* const service_;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_REACTOR_BASE_H_
