// What a handle says about a tensor the server holds: a Tensor and its lease
// as the HandleInfo that wire/proto_convert.h turns into a TensorHandle.
#ifndef ASARRAY_SERVER_TENSOR_HANDLE_H_
#define ASARRAY_SERVER_TENSOR_HANDLE_H_

#include "absl/time/time.h"
#include "asarray/v1/asarray.pb.h"
#include "server/converter.h"
#include "server/tensor_store.h"
#include "wire/proto_convert.h"

namespace asarray::server {

// The handle of `t`, whose lease ends at `expires` (InfiniteFuture: with its
// connection). `local`: the handle goes over the local transport, and memory
// without a name (a memfd) travels as a descriptor: the request's own when
// the result aliases the fd source of `request`, else one attached to the
// response (added to local->reply_memory).
HandleInfo ToHandleInfo(const Tensor& t, absl::Time expires,
                        const v1::ConvertRequest* request = nullptr, LocalCall* local = nullptr);

// The handle of a result that is returned as data: no id, memory or lease.
HandleInfo DataOnlyHandle(const Tensor& t);

}  // namespace asarray::server

#endif  // ASARRAY_SERVER_TENSOR_HANDLE_H_
