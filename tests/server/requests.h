// Request builders that the server tests and peer_client share. Header-only,
// so that peer_client needs no test framework.
#ifndef ASARRAY_TESTS_SERVER_REQUESTS_H_
#define ASARRAY_TESTS_SERVER_REQUESTS_H_

#include <cstdint>
#include <string>

#include "asarray/v1/asarray.pb.h"
#include "wire/proto_convert.h"

namespace asarray::testing {

// The first `bytes` bytes of client segment `name`, as a 1-d uint8 array.
inline v1::ConvertRequest RegionOfBytes(const std::string& name, uint64_t bytes) {
  v1::ConvertRequest request;
  v1::SharedMemoryArray* a = request.mutable_source()->mutable_shared_memory();
  a->set_name(name);
  a->set_size(bytes);
  a->set_dtype(v1::DTYPE_UINT8);
  LayoutToProto(Layout{{static_cast<int64_t>(bytes)}, {1}, 0}, a->mutable_layout());
  return request;
}

// `n` inline bytes of `fill`, as a 1-d uint8 array.
inline v1::ConvertRequest InlineOfBytes(size_t n, char fill) {
  v1::ConvertRequest request;
  v1::InlineArray* a = request.mutable_source()->mutable_inline_array();
  a->set_dtype(v1::DTYPE_UINT8);
  LayoutToProto(Layout{{static_cast<int64_t>(n)}, {1}, 0}, a->mutable_layout());
  a->set_storage(std::string(n, fill));
  return request;
}

}  // namespace asarray::testing

#endif  // ASARRAY_TESTS_SERVER_REQUESTS_H_
