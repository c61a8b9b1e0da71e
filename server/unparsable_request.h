// gRPC answers a request whose bytes do not parse as the method's message
// with UNIMPLEMENTED and no message, as if the method did not exist. This
// interceptor turns that answer, on the AsArray service's methods, into
// INVALID_ARGUMENT naming the method. The service itself never sends
// UNIMPLEMENTED without a message, so nothing else is rewritten.
// Thread-safe.
#ifndef ASARRAY_SERVER_UNPARSABLE_REQUEST_H_
#define ASARRAY_SERVER_UNPARSABLE_REQUEST_H_

#include "grpcpp/support/server_interceptor.h"

namespace asarray::server {

class UnparsableRequestInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;
};

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_UNPARSABLE_REQUEST_H_
