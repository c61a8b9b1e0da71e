// Where the server listens by default, and so where clients look first.
#ifndef ASARRAY_WIRE_SOCKET_PATH_H_
#define ASARRAY_WIRE_SOCKET_PATH_H_

#include <string>

namespace asarray {

// $XDG_RUNTIME_DIR/asarrayd/asarrayd.sock, or /tmp/asarrayd-<uid>/asarrayd.sock
// when XDG_RUNTIME_DIR is unset or not absolute: the paths are the proto's
// default_socket_in_runtime_dir and default_socket_otherwise options.
std::string DefaultSocketPath();

// "unix:" + DefaultSocketPath().
std::string DefaultAddress();

}  // namespace asarray

#endif  // ASARRAY_WIRE_SOCKET_PATH_H_
