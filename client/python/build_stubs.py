"""Generates the asarray.v1 Python modules (messages, their .pyi, and the gRPC
stub) from proto/ with protoc and grpc_python_plugin, marked typed (py.typed).
The one recipe behind both the package build (setup.py) and the build tree's
build/python (CMake).

    python3 build_stubs.py PROTO_DIR OUT_DIR [--protoc PATH] [--plugin PATH]

Writes OUT_DIR/asarray/v1/asarray_pb2.py, asarray_pb2.pyi, asarray_pb2_grpc.py
and py.typed. They import each other as the top-level package asarray.v1 (a
namespace package: no __init__.py).
"""
import argparse
import os
import shutil
import subprocess
import sys

PROTOS = ("asarray/v1/asarray.proto",)
OUTPUTS = ("asarray/v1/asarray_pb2.py", "asarray/v1/asarray_pb2.pyi",
           "asarray/v1/asarray_pb2_grpc.py", "asarray/v1/py.typed")
# The tool, and the Debian package that has it.
_TOOLS = {"protoc": "protobuf-compiler", "grpc_python_plugin": "protobuf-compiler-grpc"}


class StubError(Exception):
    """A tool or a .proto is missing, or protoc failed."""


def _tool(name, given):
    path = given or shutil.which(name)
    if path is None or not os.access(path, os.X_OK):
        raise StubError(f"{given or name} not found: the asarray.v1 stubs are generated with "
                        f"it (Debian: apt-get install {_TOOLS[name]})")
    return path


def generate(proto_dir, out_dir, protoc=None, plugin=None):
    """Writes the stubs of PROTOS, found in proto_dir, under out_dir; returns
    the paths written. `protoc` and `plugin` default to those on PATH."""
    missing = [p for p in PROTOS if not os.path.isfile(os.path.join(proto_dir, p))]
    if missing:
        raise StubError(f"{', '.join(missing)} not found in {proto_dir}")
    protoc = _tool("protoc", protoc)
    plugin = _tool("grpc_python_plugin", plugin)
    os.makedirs(out_dir, exist_ok=True)
    command = [protoc, f"--proto_path={proto_dir}", f"--python_out={out_dir}",
               f"--pyi_out={out_dir}", f"--grpc_out={out_dir}",
               f"--plugin=protoc-gen-grpc={plugin}",
               *(os.path.join(proto_dir, p) for p in PROTOS)]
    done = subprocess.run(command, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise StubError(f"protoc failed ({done.returncode}): {done.stderr.strip()}")
    with open(os.path.join(out_dir, OUTPUTS[-1]), "w"):
        pass  # py.typed: type checkers read asarray_pb2.pyi
    return [os.path.join(out_dir, p) for p in OUTPUTS]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("proto_dir")
    parser.add_argument("out_dir")
    parser.add_argument("--protoc", help="protoc to run (default: the one on PATH)")
    parser.add_argument("--plugin", help="grpc_python_plugin (default: the one on PATH)")
    args = parser.parse_args(argv)
    try:
        generate(args.proto_dir, args.out_dir, args.protoc, args.plugin)
    except StubError as e:
        print(f"build_stubs: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
