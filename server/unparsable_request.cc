#include "server/unparsable_request.h"

#include <string>
#include <utility>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "asarray/v1/asarray.pb.h"
#include "wire/proto_convert.h"

namespace asarray::server {
namespace {

class UnparsableRequestInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit UnparsableRequestInterceptor(std::string method) : method_(std::move(method)) {}

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(
            grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const grpc::Status sent = methods->GetSendStatus();
      if (sent.error_code() == grpc::StatusCode::UNIMPLEMENTED && sent.error_message().empty()) {
        methods->ModifySendStatus(ToGrpcStatus(absl::InvalidArgumentError(
            absl::StrCat("the request to ", method_, " does not parse as its protobuf message"))));
      }
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
};

// "/asarray.v1.AsArray/Convert" and the other methods the service has;
// calls to unknown methods keep gRPC's UNIMPLEMENTED.
bool IsServiceMethod(const std::string& path) {
  static const auto* methods = [] {
    auto* set = new absl::flat_hash_set<std::string>();
    const google::protobuf::ServiceDescriptor* service =
        v1::ConvertRequest::descriptor()->file()->FindServiceByName("AsArray");
    for (int i = 0; service != nullptr && i < service->method_count(); ++i) {
      set->insert(absl::StrCat("/", service->full_name(), "/", service->method(i)->name()));
    }
    return set;
  }();
  return methods->contains(path);
}

}  // namespace

grpc::experimental::Interceptor* UnparsableRequestInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  if (!IsServiceMethod(info->method())) return nullptr;
  return new UnparsableRequestInterceptor(info->method());
}

}  // namespace asarray::server
