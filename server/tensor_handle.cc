#include "server/tensor_handle.h"

#include <algorithm>
#include <cstdint>

namespace asarray::server {

HandleInfo ToHandleInfo(const Tensor& t, absl::Time expires, const v1::ConvertRequest* request,
                        LocalCall* local) {
  HandleInfo info;
  info.id = t.id;
  info.dtype = t.dtype;
  info.layout = t.layout;
  info.device = t.device;
  info.requires_grad = t.requires_grad;
  info.shares_memory = t.shares_memory;
  info.warnings = t.warnings;
  if (t.device_memory != nullptr) {
    info.cuda_ipc_handle = t.device_memory->ipc_handle();
    info.cuda_offset = t.device_memory->offset_in_allocation();
    info.cuda_size = t.device_memory->size();
  } else if (!t.memory->name().empty()) {
    info.shm_name = t.memory->name();
    info.shm_offset = t.memory->offset_in_segment();
    info.shm_size = t.memory->size();
  } else if (local != nullptr) {
    // Over gRPC a memfd has no location: Read streams its bytes.
    info.has_fd = true;
    info.fd_offset = t.memory->offset_in_segment();
    info.fd_size = t.memory->size();
    if (t.shares_memory && request->source().has_fd()) {
      info.fd_from_request = true;
      info.fd_index = request->source().fd().fd_index();
    } else {
      // The results of a batch share one arena: its descriptor goes once.
      auto& sent = local->reply_memory;
      const auto same_file = std::find_if(sent.begin(), sent.end(),
                                          [&](const auto& m) { return m->fd() == t.memory->fd(); });
      info.fd_index = static_cast<uint32_t>(same_file - sent.begin());
      if (same_file == sent.end()) sent.push_back(t.memory);
    }
  }
  // A lease that ends with its connection has no time.
  info.lease_expires = expires == absl::InfiniteFuture() ? absl::InfinitePast() : expires;
  return info;
}

HandleInfo DataOnlyHandle(const Tensor& t) {
  HandleInfo info = ToHandleInfo(t, absl::InfinitePast());
  info.id.clear();
  info.shm_name.clear();
  info.shm_offset = info.shm_size = 0;
  info.cuda_ipc_handle.clear();
  info.cuda_offset = info.cuda_size = 0;
  // The tensor's own strides, which a remote client gives the copy it
  // builds (as torch.asarray would have them); the data is row-major.
  info.layout.offset = 0;
  return info;
}

}  // namespace asarray::server
