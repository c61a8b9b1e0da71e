"""An outside client: stubs generated from the .proto alone, hostile requests.

Nothing of client/python is used. At test time Debian's protoc and
grpc_python_plugin generate the stubs of proto/asarray/v1/asarray.proto (and
of the standard health service) into a temporary folder; a channel with
gRPC's default options (a stock client's limits: 4 MiB a message, 8 KiB of
metadata) then sends the requests of TABLE, each row a request that the
project's own clients cannot send, with the code the proto's "Errors" comment
documents. After every row the server answers Health with SERVING and its
Stats show nothing held beyond the baseline; at the end, once the server has
stopped, no segment of its prefix is left in /dev/shm.

Environment (set by ctest): ASARRAYD, the server binary; ASARRAY_PROTO_DIR,
the folder holding asarray/v1/asarray.proto.
"""
import importlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import grpc
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
P61, P62, P63, U64 = 1 << 61, 1 << 62, 1 << 63, (1 << 64) - 1
I64_MIN, I64_MAX = -(1 << 63), (1 << 63) - 1
MAX_MESSAGE = 4 << 20          # a stock client's receive limit
MAX_DETAILS = 600              # what any status message may take
C = grpc.StatusCode


# --- Stubs generated at test time ------------------------------------------

@pytest.fixture(scope="session")
def pb():
    out = tempfile.mkdtemp(prefix="asarray-outside-stubs-")
    plugin = shutil.which("grpc_python_plugin")
    assert plugin, "grpc_python_plugin (protobuf-compiler-grpc) is missing"
    proto_dir = os.environ["ASARRAY_PROTO_DIR"]
    for include, name in ((proto_dir, "asarray/v1/asarray.proto"), (HERE, "health.proto")):
        subprocess.run(["protoc", f"-I{include}", f"--python_out={out}", f"--grpc_python_out={out}",
                        f"--plugin=protoc-gen-grpc_python={plugin}", name], check=True)
    sys.path.insert(0, out)
    mods = {n: importlib.import_module(n) for n in (
        "asarray.v1.asarray_pb2", "asarray.v1.asarray_pb2_grpc", "health_pb2", "health_pb2_grpc")}
    yield type("Stubs", (), {
        "m": mods["asarray.v1.asarray_pb2"], "g": mods["asarray.v1.asarray_pb2_grpc"],
        "hm": mods["health_pb2"], "hg": mods["health_pb2_grpc"]})
    sys.path.remove(out)
    shutil.rmtree(out, ignore_errors=True)


# --- The server --------------------------------------------------------------

def shm_entries(prefix):
    return sorted(n for n in os.listdir("/dev/shm") if n.startswith(prefix))


class Server:
    def __init__(self, pb):
        self.pb = pb
        self.dir = tempfile.mkdtemp(prefix="asarrayd-outside-")
        self.address = f"unix:{self.dir}/s/asarrayd.sock"
        self.prefix = f"asarrayd-outside-{os.getpid()}"
        self.process = subprocess.Popen(
            [os.environ["ASARRAYD"], f"--listen={self.address}", f"--shm_prefix={self.prefix}",
             "--lease_ttl=60s", "--max_lease_ttl=2h", "--segment_pool_bytes=0",
             "--max_bytes=67108864", "--max_message_bytes=16777216"],
            stderr=subprocess.DEVNULL)
        self.channel = grpc.insecure_channel(self.address)  # stock limits
        self.stub = pb.g.AsArrayStub(self.channel)
        self.health = pb.hg.HealthStub(self.channel)
        deadline = time.monotonic() + 20
        while not self.serving():
            assert self.process.poll() is None, "asarrayd exited at start"
            assert time.monotonic() < deadline, "asarrayd did not start"
            time.sleep(0.05)

    def serving(self):
        try:
            status = self.health.Check(self.pb.hm.HealthCheckRequest(), timeout=5).status
            return status == self.pb.hm.HealthCheckResponse.SERVING
        except grpc.RpcError:
            return False

    def held(self):
        s = self.stub.Stats(self.pb.m.StatsRequest(), timeout=5)
        return (s.tensors, s.segments, s.bytes_in_use, s.client_regions)

    def stop(self):
        self.channel.close()
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
        return code


@pytest.fixture(scope="module")
def server(pb):
    s = Server(pb)
    yield s
    assert s.stop() == 0, "asarrayd did not exit cleanly on SIGTERM"
    assert shm_entries(s.prefix) == [], "segments left in /dev/shm"


# --- Things in /dev/shm that are not a caller's segments ------------------

class Entry:
    """A name in /dev/shm: a directory, symlink, socket, FIFO or another uid's file."""
    count = 0

    def __init__(self, kind):
        Entry.count += 1
        self.name = f"/asarray-outside-{os.getpid()}-{kind}-{Entry.count}"
        self.path = "/dev/shm" + self.name
        self.cleanup = []
        if kind == "dir":
            os.mkdir(self.path, 0o700)
        elif kind == "symlink":
            target = self.path + "-target"
            with open(target, "wb") as f:
                f.write(b"\0" * 64)
            os.chmod(target, 0o600)
            self.cleanup.append(target)
            os.symlink(target, self.path)
        elif kind == "socket":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(self.path)
        elif kind == "fifo":
            os.mkfifo(self.path, 0o600)
        elif kind == "other_uid":
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0)
            os.ftruncate(fd, 64)
            if os.geteuid() == 0:
                os.fchown(fd, 65534, 65534)
            os.close(fd)
        elif kind == "regular":
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_RDWR, 0o600)
            os.ftruncate(fd, 64)
            os.close(fd)
        else:
            raise ValueError(kind)

    def close(self):
        if hasattr(self, "sock"):
            self.sock.close()
        for p in [self.path] + self.cleanup:
            if os.path.isdir(p) and not os.path.islink(p):
                os.rmdir(p)
            elif os.path.lexists(p):
                os.unlink(p)


# --- Request builders ----------------------------------------------------------

def layout(pb, shape, strides, offset=0):
    return pb.m.Layout(shape=shape, strides=strides, offset=offset)


def inline(pb, shape, strides, storage, offset=0, dtype=None, return_data=False, **options):
    r = pb.m.ConvertRequest(return_data=return_data)
    a = r.source.inline_array
    a.dtype = pb.m.DTYPE_FLOAT32 if dtype is None else dtype
    a.layout.CopyFrom(layout(pb, shape, strides, offset))
    a.storage = storage
    for k, v in options.items():
        setattr(r.options, k, v)
    return r


def region(pb, name, offset=0, size=16, shape=(4,), strides=(1,)):
    r = pb.m.ConvertRequest()
    s = r.source.shared_memory
    s.name, s.offset, s.size, s.dtype = name, offset, size, pb.m.DTYPE_FLOAT32
    s.layout.CopyFrom(layout(pb, list(shape), list(strides)))
    return r


def tensor_id(pb, id_, return_data=False):
    r = pb.m.ConvertRequest(return_data=return_data)
    r.source.tensor_id = id_
    return r


def upload_header(pb, shape, strides, storage_size, dtype=None):
    h = pb.m.ConvertUploadRequest()
    h.header.dtype = pb.m.DTYPE_FLOAT32 if dtype is None else dtype
    h.header.layout.CopyFrom(layout(pb, shape, strides))
    h.header.storage_size = storage_size
    return h


def upload_data(pb, data):
    return pb.m.ConvertUploadRequest(data=data)


def live(s, n=4):
    """A held float32 tensor of n elements; its id."""
    return s.stub.Convert(inline(s.pb, [n], [1], b"\1" * 4 * n)).handle.id


def drain(call):
    messages = list(call)
    for m in messages:
        assert m.ByteSize() <= MAX_MESSAGE
    return messages


# Methods by kind, for raw bytes.
UNARY = ["Convert", "Release", "Renew", "List", "Stats"]
SERVER_STREAMING = ["ConvertToData", "Read"]


def raw_unary(s, method, data):
    return s.channel.unary_unary(f"/asarray.v1.AsArray/{method}")(data, timeout=10)


def raw_server_stream(s, method, data):
    return list(s.channel.unary_stream(f"/asarray.v1.AsArray/{method}")(data, timeout=10))


def raw_upload(s, messages):
    return s.channel.stream_unary("/asarray.v1.AsArray/ConvertUpload")(iter(messages), timeout=10)


# Bytes that are no message of any type: a truncated tag, a truncated
# varint, a length past the end, an unterminated group, wire type 7.
GARBAGE = {
    "truncated_tag": b"\xff",
    "truncated_varint": b"\x08\xff",
    "length_past_end": b"\x0a\xff\xff\xff\xff\x0f",
    "open_group": b"\x0b",
    "wire_type_7": b"\x0f\x00",
}


# --- The table -------------------------------------------------------------------
# Each row: (name, send(server) -> anything, expected code or None for OK,
# a substring of the message).

def build_table():
    rows = []

    def row(name, code, says=""):
        def wrap(fn):
            rows.append((name, fn, code, says))
            return fn
        return wrap

    # Raw bytes to every method.
    for gname, data in GARBAGE.items():
        for method in UNARY:
            rows.append((f"raw_{method}_{gname}",
                         lambda s, m=method, d=data: raw_unary(s, m, d),
                         C.INVALID_ARGUMENT, "parse"))
        for method in SERVER_STREAMING:
            rows.append((f"raw_{method}_{gname}",
                         lambda s, m=method, d=data: raw_server_stream(s, m, d),
                         C.INVALID_ARGUMENT, "parse"))
        rows.append((f"raw_ConvertUpload_{gname}",
                     lambda s, d=data: raw_upload(s, [d]), C.INVALID_ARGUMENT, "parse"))

    # Every oneof left empty.
    rows += [
        ("empty_source", lambda s: s.stub.Convert(s.pb.m.ConvertRequest()),
         C.INVALID_ARGUMENT, "no source"),
        ("empty_source_as_data",
         lambda s: s.stub.Convert(s.pb.m.ConvertRequest(return_data=True)),
         C.INVALID_ARGUMENT, "no source"),
        ("empty_source_streamed",
         lambda s: drain(s.stub.ConvertToData(s.pb.m.ConvertRequest())),
         C.INVALID_ARGUMENT, "no source"),
        ("empty_literal_node", lambda s: s.stub.Convert(
            s.pb.m.ConvertRequest(source=s.pb.m.Source(literal=s.pb.m.Literal(
                nodes=[s.pb.m.LiteralNode()])))), C.INVALID_ARGUMENT, "literal"),
        ("empty_literal", lambda s: s.stub.Convert(
            s.pb.m.ConvertRequest(source=s.pb.m.Source(literal=s.pb.m.Literal()))),
         C.INVALID_ARGUMENT, "literal"),
        ("empty_upload_part", lambda s: s.stub.ConvertUpload(
            iter([s.pb.m.ConvertUploadRequest()])), C.INVALID_ARGUMENT, "header"),
        ("empty_read_id", lambda s: drain(s.stub.Read(s.pb.m.ReadRequest())),
         C.NOT_FOUND, "no tensor"),
        ("empty_release_id", lambda s: s.stub.Release(s.pb.m.ReleaseRequest()),
         C.NOT_FOUND, "no tensor"),
        ("empty_renew_id", lambda s: s.stub.Renew(s.pb.m.RenewRequest()),
         C.NOT_FOUND, "no tensor"),
    ]

    # Integer fields at their extremes: shapes, strides, offsets.
    for v in (I64_MIN, -1):
        rows.append((f"shape_{v}", lambda s, v=v: s.stub.Convert(inline(s.pb, [v], [1], b"")),
                     C.INVALID_ARGUMENT, "negative"))
        rows.append((f"offset_{v}", lambda s, v=v: s.stub.Convert(
            inline(s.pb, [1], [1], b"\0" * 4, offset=v)), C.INVALID_ARGUMENT, "negative"))
    for v in (1 << 31, 1 << 32, P61, P62, I64_MAX):
        rows.append((f"shape_{v}_dense", lambda s, v=v: s.stub.Convert(
            inline(s.pb, [v], [1], b"\0" * 4)), C.INVALID_ARGUMENT, ""))
        rows.append((f"offset_{v}", lambda s, v=v: s.stub.Convert(
            inline(s.pb, [1], [1], b"\0" * 4, offset=v)), C.INVALID_ARGUMENT, ""))
    for v in (I64_MIN, I64_MAX, P62):
        rows.append((f"stride_{v}", lambda s, v=v: s.stub.Convert(
            inline(s.pb, [3], [v], b"\0" * 12)), C.INVALID_ARGUMENT, ""))
    rows += [
        ("rank_mismatch", lambda s: s.stub.Convert(inline(s.pb, [2, 2], [1], b"\0" * 16)),
         C.INVALID_ARGUMENT, "dims but strides"),
        ("rank_65", lambda s: s.stub.Convert(inline(s.pb, [1] * 65, [1] * 65, b"\0" * 4)),
         C.INVALID_ARGUMENT, "exceeds the maximum"),
        ("rank_64_int64_max_sizes", lambda s: s.stub.Convert(
            inline(s.pb, [I64_MAX] * 64, [1] * 64, b"\0" * 4)), C.INVALID_ARGUMENT, "(64 dims)"),
        ("dtype_99", lambda s: s.stub.Convert(inline(s.pb, [1], [1], b"\0" * 4, dtype=99)),
         C.INVALID_ARGUMENT, "dtype"),
        ("dtype_minus_1", lambda s: s.stub.Convert(inline(s.pb, [1], [1], b"\0" * 4, dtype=-1)),
         C.INVALID_ARGUMENT, "dtype"),
        ("dtype_unspecified", lambda s: s.stub.Convert(
            inline(s.pb, [1], [1], b"\0" * 4, dtype=0)), C.INVALID_ARGUMENT, "dtype"),
        ("options_dtype_99", lambda s: s.stub.Convert(with_options(
            inline(s.pb, [1], [1], b"\0" * 4), dtype=99)), C.INVALID_ARGUMENT, "dtype"),
        ("cuda_ipc_device_int32_max", lambda s: s.stub.Convert(s.pb.m.ConvertRequest(
            source=s.pb.m.Source(cuda_ipc=s.pb.m.CudaIpcArray(
                ipc_handle=b"\0" * 64, device=2**31 - 1, size=16, dtype=s.pb.m.DTYPE_FLOAT32,
                layout=layout(s.pb, [4], [1]))))), C.FAILED_PRECONDITION, ""),
        ("cuda_ipc_device_int32_min", lambda s: s.stub.Convert(s.pb.m.ConvertRequest(
            source=s.pb.m.Source(cuda_ipc=s.pb.m.CudaIpcArray(
                ipc_handle=b"\0" * 64, device=-2**31, size=16, dtype=s.pb.m.DTYPE_FLOAT32,
                layout=layout(s.pb, [4], [1]))))), C.INVALID_ARGUMENT, ""),
        ("cuda_ipc_size_u64_max_offset_u64_max", lambda s: s.stub.Convert(s.pb.m.ConvertRequest(
            source=s.pb.m.Source(cuda_ipc=s.pb.m.CudaIpcArray(
                ipc_handle=b"\0" * 64, device=0, offset=U64, size=U64,
                dtype=s.pb.m.DTYPE_FLOAT32, layout=layout(s.pb, [4], [1]))))),
         C.FAILED_PRECONDITION, ""),
        ("literal_list_length_u64_max", lambda s: s.stub.Convert(s.pb.m.ConvertRequest(
            source=s.pb.m.Source(literal=s.pb.m.Literal(nodes=[
                s.pb.m.LiteralNode(list_length=U64), s.pb.m.LiteralNode(int_value=1)])))),
         C.INVALID_ARGUMENT, "literal"),
        ("literal_int64_extremes_as_data", lambda s: s.stub.Convert(s.pb.m.ConvertRequest(
            source=s.pb.m.Source(literal=s.pb.m.Literal(nodes=[
                s.pb.m.LiteralNode(list_length=2), s.pb.m.LiteralNode(int_value=I64_MIN),
                s.pb.m.LiteralNode(int_value=I64_MAX)])), return_data=True)), None, ""),
        ("upload_storage_size_u64_max", lambda s: s.stub.ConvertUpload(
            iter([upload_header(s.pb, [4], [1], U64)])), C.INVALID_ARGUMENT, "needs exactly"),
        ("upload_storage_size_2_63", lambda s: s.stub.ConvertUpload(
            iter([upload_header(s.pb, [4], [1], P63)])), C.INVALID_ARGUMENT, "needs exactly"),
        ("read_chunk_u64_max_unknown", lambda s: drain(
            s.stub.Read(s.pb.m.ReadRequest(id="nope", chunk_size=U64))), C.NOT_FOUND, "nope"),
    ]

    # Views whose element bytes exceed int64: once an out-of-bounds write.
    for n in (P61, P62, I64_MAX):
        rows.append((f"broadcast_{n}_as_data", lambda s, n=n: s.stub.Convert(
            inline(s.pb, [n], [0], b"\0" * 4, return_data=True)),
            C.RESOURCE_EXHAUSTED, "more bytes than int64"))
        rows.append((f"broadcast_{n}_as_handle", lambda s, n=n: s.stub.Convert(
            inline(s.pb, [n], [0], b"\0" * 4)), C.RESOURCE_EXHAUSTED, "more bytes than int64"))
        rows.append((f"broadcast_{n}_streamed", lambda s, n=n: drain(s.stub.ConvertToData(
            inline(s.pb, [n], [0], b"\0" * 4))), C.RESOURCE_EXHAUSTED, "more bytes than int64"))
    rows += [
        ("broadcast_2_62_uploaded", lambda s: s.stub.ConvertUpload(iter([
            upload_header(s.pb, [P62], [0], 4), upload_data(s.pb, b"\0" * 4)])),
         C.RESOURCE_EXHAUSTED, "more bytes than int64"),
        ("broadcast_2_62_from_region", lambda s: with_entry(s, "regular", lambda e: s.stub.Convert(
            region(s.pb, e.name, size=4, shape=(P62,), strides=(0,)))),
         C.RESOURCE_EXHAUSTED, "more bytes than int64"),
        # A legal broadcast past the message limit: refused as data, streamable.
        ("broadcast_past_message_limit_as_data", lambda s: s.stub.Convert(
            inline(s.pb, [8 << 20], [0], b"\0" * 4, return_data=True)),
         C.RESOURCE_EXHAUSTED, "ConvertToData"),
        ("broadcast_of_tensor_id_as_data", lambda s: held_then(
            s, inline(s.pb, [8 << 20], [0], b"\0" * 4),
            lambda id_: s.stub.Convert(tensor_id(s.pb, id_, return_data=True))),
         C.RESOURCE_EXHAUSTED, "ConvertToData"),
    ]

    # Names that are not the caller's segments.
    rows += [
        ("name_shm_directory", lambda s: s.stub.Convert(region(s.pb, "/.")),
         C.INVALID_ARGUMENT, "directory"),
        ("name_dotdot", lambda s: s.stub.Convert(region(s.pb, "/..")),
         C.INVALID_ARGUMENT, ".."),
        ("name_missing", lambda s: s.stub.Convert(region(s.pb, "/asarray-outside-none")),
         C.NOT_FOUND, "asarray-outside-none"),
        ("name_directory", lambda s: with_entry(s, "dir", lambda e: s.stub.Convert(
            region(s.pb, e.name))), C.INVALID_ARGUMENT, "directory"),
        ("name_symlink", lambda s: with_entry(s, "symlink", lambda e: s.stub.Convert(
            region(s.pb, e.name))), C.INVALID_ARGUMENT, "symbolic link"),
        ("name_socket", lambda s: with_entry(s, "socket", lambda e: s.stub.Convert(
            region(s.pb, e.name))), C.INVALID_ARGUMENT, "client segment"),
        ("name_fifo", lambda s: with_entry(s, "fifo", lambda e: s.stub.Convert(
            region(s.pb, e.name))), C.INVALID_ARGUMENT, "FIFO"),
        ("name_other_uid", lambda s: with_entry(s, "other_uid", lambda e: s.stub.Convert(
            region(s.pb, e.name))), C.PERMISSION_DENIED, "client segment"),
        ("region_offset_u64_max", lambda s: with_entry(s, "regular", lambda e: s.stub.Convert(
            region(s.pb, e.name, offset=U64, size=16))), C.INVALID_ARGUMENT, "outside segment"),
        ("region_size_u64_max", lambda s: with_entry(s, "regular", lambda e: s.stub.Convert(
            region(s.pb, e.name, offset=0, size=U64))), C.INVALID_ARGUMENT, "outside segment"),
        ("region_offset_at_its_end", lambda s: with_entry(s, "regular", lambda e: s.stub.Convert(
            region(s.pb, e.name, offset=64, size=16))), C.INVALID_ARGUMENT, "outside segment"),
        ("region_empty_view_at_its_end", lambda s: with_entry(s, "regular", lambda e: released(
            s, s.stub.Convert(region(s.pb, e.name, offset=64, size=0, shape=(0,))))), None, ""),
    ]

    # Long values: quoted in part, never echoed whole.
    long_id = "f" * 65536
    rows += [
        ("id_64k_convert", lambda s: s.stub.Convert(tensor_id(s.pb, long_id)),
         C.NOT_FOUND, "(65536 bytes)"),
        ("id_64k_read", lambda s: drain(s.stub.Read(s.pb.m.ReadRequest(id=long_id))),
         C.NOT_FOUND, "(65536 bytes)"),
        ("id_64k_release", lambda s: s.stub.Release(s.pb.m.ReleaseRequest(id=long_id)),
         C.NOT_FOUND, "(65536 bytes)"),
        ("id_64k_renew", lambda s: s.stub.Renew(s.pb.m.RenewRequest(id=long_id)),
         C.NOT_FOUND, "(65536 bytes)"),
        ("id_9000_convert", lambda s: s.stub.Convert(tensor_id(s.pb, "e" * 9000)),
         C.NOT_FOUND, "(9000 bytes)"),
        ("name_64k", lambda s: s.stub.Convert(region(s.pb, "/" + "a" * 65535)),
         C.INVALID_ARGUMENT, "(65536 bytes)"),
        ("device_64k", lambda s: s.stub.Convert(
            inline(s.pb, [1], [1], b"\0" * 4, device="x" * 65536)),
         C.INVALID_ARGUMENT, "(65536 bytes)"),
        ("literal_string_64k", lambda s: s.stub.Convert(s.pb.m.ConvertRequest(
            source=s.pb.m.Source(literal=s.pb.m.Literal(nodes=[
                s.pb.m.LiteralNode(not_a_number="s" * 65536)])))),
         C.INVALID_ARGUMENT, "(65536 bytes)"),
    ]

    # Uploads out of order.
    rows += [
        ("upload_empty_stream", lambda s: s.stub.ConvertUpload(iter([])),
         C.INVALID_ARGUMENT, "before its header"),
        ("upload_data_before_header", lambda s: s.stub.ConvertUpload(iter([
            upload_data(s.pb, b"\0" * 16), upload_header(s.pb, [4], [1], 16)])),
         C.INVALID_ARGUMENT, "before its header"),
        ("upload_two_headers", lambda s: s.stub.ConvertUpload(iter([
            upload_header(s.pb, [4], [1], 16), upload_header(s.pb, [4], [1], 16)])),
         C.INVALID_ARGUMENT, "second header"),
        ("upload_more_than_declared", lambda s: s.stub.ConvertUpload(iter([
            upload_header(s.pb, [4], [1], 16), upload_data(s.pb, b"\0" * 12),
            upload_data(s.pb, b"\0" * 12)])), C.INVALID_ARGUMENT, "past the declared"),
        ("upload_less_than_declared", lambda s: s.stub.ConvertUpload(iter([
            upload_header(s.pb, [4], [1], 16), upload_data(s.pb, b"\0" * 12)])),
         C.INVALID_ARGUMENT, "12 of 16"),
        ("upload_header_after_data", lambda s: s.stub.ConvertUpload(iter([
            upload_header(s.pb, [4], [1], 16), upload_data(s.pb, b"\0" * 16),
            upload_header(s.pb, [4], [1], 16)])), C.INVALID_ARGUMENT, "second header"),
    ]

    # Streams cancelled midway.
    rows += [
        ("read_cancelled_after_first_message", lambda s: held_then(
            s, inline(s.pb, [4 << 20], [0], b"\0" * 4),
            lambda id_: cancel_after_first(s.stub.Read(s.pb.m.ReadRequest(id=id_)))),
         C.CANCELLED, ""),
        ("convert_to_data_cancelled", lambda s: cancel_after_first(s.stub.ConvertToData(
            inline(s.pb, [4 << 20], [0], b"\0" * 4))), C.CANCELLED, ""),
        ("upload_cancelled_midway", lambda s: cancelled_upload(s), C.CANCELLED, ""),
    ]

    # Extremes that must work.
    rows += [
        ("renew_ttl_2_63", lambda s: renew_extreme(s, P63), None, ""),
        ("renew_ttl_u64_max", lambda s: renew_extreme(s, U64), None, ""),
        ("read_chunk_4mib_stock_client", lambda s: read_all(s, 4 << 20), None, ""),
        ("read_chunk_u64_max_stock_client", lambda s: read_all(s, U64), None, ""),
        ("convert_to_data_12mib_stock_client", lambda s: stream_all(s), None, ""),
    ]
    return rows


def with_options(request, **options):
    for k, v in options.items():
        setattr(request.options, k, v)
    return request


def released(s, response):
    s.stub.Release(s.pb.m.ReleaseRequest(id=response.handle.id))
    return response


def with_entry(s, kind, fn):
    e = Entry(kind)
    try:
        return fn(e)
    finally:
        e.close()


def held_then(s, request, fn):
    id_ = s.stub.Convert(request).handle.id
    try:
        return fn(id_)
    finally:
        s.stub.Release(s.pb.m.ReleaseRequest(id=id_))


def cancel_after_first(call):
    next(call)
    call.cancel()
    for _ in call:
        pass


def cancelled_upload(s):
    gate = threading.Event()

    def messages():
        yield upload_header(s.pb, [1 << 20], [1], 4 << 20)
        yield upload_data(s.pb, b"\0" * (1 << 20))
        gate.set()
        time.sleep(1)  # the cancel comes meanwhile
        yield upload_data(s.pb, b"\0" * (1 << 20))

    future = s.stub.ConvertUpload.future(messages())
    gate.wait(10)
    future.cancel()
    return future.result(timeout=10)


def renew_extreme(s, ttl):
    id_ = live(s)
    try:
        before = int(time.time() * 1000)
        expires = s.stub.Renew(s.pb.m.RenewRequest(id=id_, ttl_ms=ttl)).lease_expires_unix_ms
        # The maximum lease (2 h), not the default one (60 s), nor a wrapped one.
        assert expires >= before + 2 * 3600 * 1000 - 1000, (expires, before)
        assert expires <= int(time.time() * 1000) + 2 * 3600 * 1000 + 1000
    finally:
        s.stub.Release(s.pb.m.ReleaseRequest(id=id_))


def read_all(s, chunk):
    def read(id_):
        messages = drain(s.stub.Read(s.pb.m.ReadRequest(id=id_, chunk_size=chunk)))
        assert sum(len(m.data) for m in messages) == 12 << 20
        assert messages[0].HasField("handle") and len(messages) >= 3
    held_then(s, inline(s.pb, [3 << 20] + [1] * 63, [0] * 64, b"\1" * 4), read)


def stream_all(s):
    messages = drain(s.stub.ConvertToData(inline(s.pb, [3 << 20], [0], b"\1\0\0\0")))
    assert sum(len(m.data) for m in messages) == 12 << 20


TABLE = build_table()


def test_table_has_at_least_100_hostile_requests():
    assert len(TABLE) >= 100
    assert len({name for name, *_ in TABLE}) == len(TABLE)


@pytest.mark.parametrize("name,send,code,says", TABLE, ids=[r[0] for r in TABLE])
def test_hostile_request(server, name, send, code, says):
    baseline = server.held()
    try:
        send(server)
        got, details = None, ""
    except grpc.RpcError as e:
        got, details = e.code(), e.details() or ""
    except grpc.FutureCancelledError:
        got, details = C.CANCELLED, ""
    assert server.process.poll() is None, "asarrayd died"
    assert got == code, f"{name}: {got} {details[:300]!r}"
    assert says in details, f"{name}: {details[:300]!r}"
    assert len(details) <= MAX_DETAILS, f"{name}: a {len(details)}-byte message"
    assert got != C.INTERNAL
    assert server.serving(), "the server stopped serving"
    deadline = time.monotonic() + 5
    while server.held() != baseline and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.held() == baseline, f"{name}: held {server.held()}, before {baseline}"
