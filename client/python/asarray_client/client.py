"""asarray_client.Client: converts array-likes through asarrayd and maps the
results into this process without a copy.

Transport: on a Unix address the client talks to the server's local
transport (the socket beside it, see LocalRequest in the proto): memory
travels as file descriptors, regions are memfds, results are memfds the
server sends, and nothing is named in /dev/shm. Handles made there end when
the client's connection closes, crashes included. Without it (a TCP address,
an older server, or named=True) every call goes over gRPC and memory is
named in /dev/shm, as gRPC-only callers need.

Remote: on a TCP address the client cannot map the server's memory. asarray()
returns tensors built from the result's bytes (return_data, or ConvertToData
past one message), uploads stream from the caller's memory, and nothing asks
for a shared-memory source. TLS: root_certificates (the CA bundle), and for a
server that requires client certificates certificate_chain and private_key.

Ownership: every result maps one handle; the handle's lease is released when
the last numpy array or torch tensor viewing that mapping is garbage-collected.
Regions made by share(), empty() and zeros() belong to this process. A small
one whose arrays were all collected waits in a pool for the next allocation
of its size, which takes it only when no handle in any process still aliases
it (see _Region.recycle); a big one, or one the pool drops, is closed (and a
named one unlinked). Named ones are unlinked at exit (not after a crash);
memfds go with the last process that holds them, whatever ends it.

Batches: asarray_batch() and asarray_tree() convert many array-likes in one
ConvertBatch call, all or nothing. Their sources attach each descriptor once;
heap arrays too big for the datagram go together into one staging memfd; the
copies the server makes come back in one arena (one file), which the client
maps once for all of its handles. share_tree() copies a tree's arrays into
one region, and ref() of a tree gives a picklable TreeRef of tensors the
server holds under TTL leases, which another process takes in one call.
"""
from __future__ import annotations

import atexit
import collections
import contextlib
import ctypes
import fcntl
import json
import mmap
import operator
import os
import secrets
import socket
import threading
import time
import weakref
from typing import Any, Generator, Iterable, List, Sequence

import grpc
import numpy as np

from asarray.v1 import asarray_pb2 as pb
from asarray.v1 import asarray_pb2_grpc as pb_grpc

from ._types import (Array, Device, DTypeLike, Like, Pem, Ref, Result, Source, Target, Targets,
                     Tree)
from .errors import AsArrayValueError, from_rpc_error

try:
    import torch
except ImportError:  # numpy-only use
    torch = None

# name: (proto enum, numpy dtype of the storage). bfloat16 is held as uint16.
_DTYPES = {
    "bool": (pb.DTYPE_BOOL, np.dtype(np.bool_)),
    "uint8": (pb.DTYPE_UINT8, np.dtype(np.uint8)),
    "int8": (pb.DTYPE_INT8, np.dtype(np.int8)),
    "int16": (pb.DTYPE_INT16, np.dtype("<i2")),
    "int32": (pb.DTYPE_INT32, np.dtype("<i4")),
    "int64": (pb.DTYPE_INT64, np.dtype("<i8")),
    "float16": (pb.DTYPE_FLOAT16, np.dtype("<f2")),
    "bfloat16": (pb.DTYPE_BFLOAT16, np.dtype("<u2")),
    "float32": (pb.DTYPE_FLOAT32, np.dtype("<f4")),
    "float64": (pb.DTYPE_FLOAT64, np.dtype("<f8")),
    "complex64": (pb.DTYPE_COMPLEX64, np.dtype("<c8")),
    "complex128": (pb.DTYPE_COMPLEX128, np.dtype("<c16")),
}
_NAME_OF_ENUM = {enum: name for name, (enum, _) in _DTYPES.items()}
_NAME_OF_NUMPY = {np.dtype(np.bool_): "bool", np.dtype(np.uint8): "uint8",
                  np.dtype(np.int8): "int8", np.dtype(np.int16): "int16",
                  np.dtype(np.int32): "int32", np.dtype(np.int64): "int64",
                  np.dtype(np.float16): "float16", np.dtype(np.float32): "float32",
                  np.dtype(np.float64): "float64", np.dtype(np.complex64): "complex64",
                  np.dtype(np.complex128): "complex128"}
_INT64 = (-(1 << 63), (1 << 63) - 1)
_UPLOAD_THRESHOLD = 32 << 20
# A remote client streams past 4 MiB: a server's message limit may be small,
# and a message in flight over a network is best kept short.
_REMOTE_UPLOAD_THRESHOLD = 4 << 20
# Inline bytes past this go in a memfd over the local transport (a datagram
# holds 64 KiB with the rest of the request).
_LOCAL_INLINE_MAX = 60 << 10
_CHUNK = 1 << 20
# Mappings up to this size are populated when made (see _Mapping); segments
# up to this size are mapped whole and kept idle for reuse (see _Mappings).
_POPULATE_MAX = 1 << 20
_IDLE_MAX = 16  # idle mappings a client keeps
_POOL_MAX = 16  # small regions a client keeps for reuse
# Retries on UNAVAILABLE, with backoff, of the calls that are safe to repeat.
_RETRY_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "asarray.v1.AsArray", "method": m}
             for m in ("Read", "ConvertToData", "Renew", "List", "Stats")] +
            [{"service": "grpc.health.v1.Health", "method": "Check"}],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "2s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


def _pem(value):
    """PEM bytes: given as bytes or str of PEM, or as a file's path."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    with open(value, "rb") as f:
        return f.read()


def _open_channel(module, address, credentials, options):
    """A channel of `module` (grpc, or grpc.aio) to `address`, with TLS when
    there are credentials."""
    if credentials is None:
        return module.insecure_channel(address, options=options)
    return module.secure_channel(address, credentials, options=options)


def _contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def default_socket_path() -> str:
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        return f"{runtime}/asarrayd/asarrayd.sock"
    return f"/tmp/asarrayd-{os.geteuid()}/asarrayd.sock"


_DTYPE_NAMES: dict[object, str | None] = {}  # what _dtype_name found, by the dtype given


def _dtype_name(dtype):
    """'float32' for torch.float32, np.float32, 'float32', 'torch.float32', ..."""
    if dtype is None:
        return None
    try:
        return _DTYPE_NAMES[dtype]
    except (KeyError, TypeError):  # new, or unhashable
        pass
    name = _find_dtype_name(dtype)
    try:
        _DTYPE_NAMES[dtype] = name
    except TypeError:
        pass
    return name


def _find_dtype_name(dtype):
    if torch is not None and isinstance(dtype, torch.dtype):
        name = str(dtype).replace("torch.", "")
        aliases = {"float": "float32", "double": "float64", "half": "float16",
                   "long": "int64", "int": "int32", "short": "int16",
                   "cfloat": "complex64", "cdouble": "complex128"}
        return aliases.get(name, name)
    if isinstance(dtype, str) and dtype.replace("torch.", "") in _DTYPES:
        return dtype.replace("torch.", "")
    name = _NAME_OF_NUMPY.get(np.dtype(dtype))
    if name is None:
        raise TypeError(f"dtype {dtype!r} has no torch counterpart")
    return name


class Handle:
    """What the server says about a tensor it holds."""

    def __init__(self, proto: pb.TensorHandle) -> None:
        self.proto = proto
        self.id: str = proto.id
        self.dtype: str = _NAME_OF_ENUM[proto.dtype]
        self.shape: tuple[int, ...] = tuple(proto.layout.shape)
        self.strides: tuple[int, ...] = tuple(proto.layout.strides)
        self.offset: int = proto.layout.offset
        self.device: str = proto.device
        self.requires_grad: bool = proto.requires_grad
        self.shares_memory: bool = proto.shares_memory
        self.warnings: list[str] = list(proto.warnings)

    def __repr__(self) -> str:
        return (f"Handle(id={self.id!r}, dtype={self.dtype}, shape={self.shape}, "
                f"strides={self.strides}, shares_memory={self.shares_memory})")


class TensorRef:
    """A tensor the server holds for this client's array, to hand to another
    process: its asarray() then takes it by id (copy=False maps the very same
    memory, sent as a descriptor). Picklable. Its lease is the producer's:
    it ends when the producer's array is collected, at client.release(ref),
    or when the producer's client closes or dies (unless renewed)."""

    def __init__(self, id: str, dtype: str, shape: Iterable[int], strides: Iterable[int]) -> None:
        self.id, self.dtype, self.shape, self.strides = id, dtype, tuple(shape), tuple(strides)

    def __repr__(self) -> str:
        return f"TensorRef({self.id!r}, dtype={self.dtype}, shape={self.shape})"


class SharedArrayRef:
    """Where an array in a named client region lives, to hand to another
    process: its asarray() then converts it (copy=False aliases it) without
    this process's involvement. Picklable. (With the local transport, ref()
    gives a TensorRef instead.)"""

    def __init__(self, name: str, offset: int, size: int, dtype: str, shape: Iterable[int],
                 strides: Iterable[int], element_offset: int = 0) -> None:
        self.name, self.offset, self.size = name, offset, size
        self.dtype, self.shape, self.strides = dtype, tuple(shape), tuple(strides)
        self.element_offset = element_offset

    def __repr__(self) -> str:
        return (f"SharedArrayRef({self.name!r}, offset={self.offset}, size={self.size}, "
                f"dtype={self.dtype}, shape={self.shape}, strides={self.strides})")


class TreeRef:
    """A tree (dicts, lists, tuples, namedtuples) of tensors the server holds,
    made by ref(tree): `tree` is its structure with a TensorRef at each array
    leaf (other leaves as they were), `refs` those TensorRefs in order.
    Picklable; another process's asarray_tree(ref, copy=False) takes every
    tensor in one call. The leases are TTL leases that outlive the producer's
    client: they end at release(ref), or when the TTL runs out unless
    renew(ref) extends it."""

    def __init__(self, tree: Tree, refs: Iterable[TensorRef | ViewRef]) -> None:
        self.tree, self.refs = tree, list(refs)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.refs]

    def __repr__(self) -> str:
        return f"TreeRef({len(self.refs)} tensors)"


class ViewRef:
    """Part of a tensor the server holds: `size` bytes at `offset` of its
    memory, read as `dtype` with `shape` and `strides` (in elements) from
    element `element_offset`. What a TreeRef holds for the leaves that share
    one region: the server holds the region's span once, and another
    process's asarray_tree() takes every leaf as a view of it, in one call.
    Picklable."""

    def __init__(self, id: str, offset: int, size: int, dtype: str, shape: Iterable[int],
                 strides: Iterable[int], element_offset: int = 0) -> None:
        self.id, self.offset, self.size = id, offset, size
        self.dtype, self.shape, self.strides = dtype, tuple(shape), tuple(strides)
        self.element_offset = element_offset

    def __repr__(self) -> str:
        return (f"ViewRef({self.id!r}, offset={self.offset}, size={self.size}, "
                f"dtype={self.dtype}, shape={self.shape}, strides={self.strides})")


class _Region:
    """Memory this process created, mapped whole: a sealed memfd (no name),
    or a named segment in /dev/shm. It keeps its descriptor, which recycling
    locks; closed (and a segment unlinked) when collected."""

    def __init__(self, nbytes, memfd):
        capacity = _capacity(nbytes)
        if memfd:
            self._name = [None]
            fd = os.memfd_create("asarray-client", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        else:
            self._name = [_region_name()]  # a list: the finalizer sees renames
            fd = os.open("/dev/shm" + self.name, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            if memfd:
                os.ftruncate(fd, capacity)
                # The server maps only memory whose size cannot change under it.
                fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW)
            os.posix_fallocate(fd, 0, capacity)
            # A small region is populated up front: one pass in the kernel
            # instead of a fault per page. A big one is not: its pages fault
            # in as they are first written, which the copy of share() spreads
            # over threads (populating first cost 57 against 35 ms for 64 MiB
            # on 2 cores, 197 against 122 ms for 256 MiB).
            populate = mmap.MAP_POPULATE if capacity <= _POPULATE_MAX else 0
            self.map = mmap.mmap(fd, capacity, flags=mmap.MAP_SHARED | populate)
        except BaseException:
            os.close(fd)
            if not memfd:
                os.unlink("/dev/shm" + self.name)
            raise
        self.fd, self.size = fd, nbytes
        self.address = ctypes.addressof(ctypes.c_char.from_buffer(self.map))
        self.owner = None  # a weak reference to the array of the allocation in it
        self.held = None  # the TensorRef of that allocation, if the server holds it
        weakref.finalize(self, _discard, self._name, fd)

    @property
    def name(self):
        return self._name[0]

    @property
    def memfd(self):
        return self._name[0] is None

    def recycle(self, nbytes):
        """Makes the region new for an array of `nbytes`, if nobody else uses
        it: asarrayd holds a shared flock (on its own open file description)
        on every client region that a handle in any process aliases, or that
        it reads, so an exclusive one means no handle points here. A named
        region also takes a new name, so that every reference to the old
        arrays names nothing."""
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        try:
            if not self.memfd:
                name = _region_name()
                os.rename("/dev/shm" + self.name, "/dev/shm" + name)
                self._name[0] = name
        finally:
            # Unlocked before the region is handed out: the server locks it
            # shared when it receives it.
            fcntl.flock(self.fd, fcntl.LOCK_UN)
        self.size = nbytes
        return True


class _RegionPool:
    """Small regions whose arrays were all collected, for empty() and share()
    to use again: no new segment, no mapping, no page faults, and no munmap,
    which on some hosts stalls every process for a while. At most _POOL_MAX
    wait; beyond that the oldest is unlinked and unmapped."""

    def __init__(self):
        self._free = collections.deque()
        # Reentrant: a finalizer that collection runs on this thread may give()
        # while take() holds it.
        self._lock = threading.RLock()

    def take(self, nbytes, memfd):
        """A recycled region that holds `nbytes`, or None. The lock is held
        across the attempts (each a non-blocking flock, and a rename for a
        named one), so that two threads never recycle the same region."""
        with self._lock:
            for region in self._fitting(nbytes, memfd):  # oldest first: likeliest free by now
                if region.recycle(nbytes):
                    self._free.remove(region)
                    return region
        return None

    def has(self, nbytes, memfd):
        """Whether a free region would hold `nbytes`, locked or not."""
        with self._lock:
            return bool(self._fitting(nbytes, memfd))

    def _fitting(self, nbytes, memfd):
        """The free regions of the right capacity and kind, oldest first."""
        capacity = _capacity(nbytes)
        return [r for r in self._free if len(r.map) == capacity and r.memfd == memfd]

    def give(self, region):
        """The last array of `region` was collected."""
        if len(region.map) > _POPULATE_MAX:
            return  # unlinked and unmapped with its last reference, now
        with self._lock:
            self._free.append(region)
            dropped = self._free.popleft() if len(self._free) > _POOL_MAX else None
        del dropped


_PARALLEL_COPY_MIN = 4 << 20  # below it one thread copies faster
_COPY_CHUNK_MIN = 2 << 20
_copy_pool = None
_copy_pool_lock = threading.Lock()


def _copy_into(out, arr):
    """out[...] = arr; a big contiguous copy runs on several threads (ctypes
    releases the GIL for memmove), as many as the cores, at most 8."""
    nbytes = out.nbytes
    threads = min(os.cpu_count() or 1, 8, nbytes // _COPY_CHUNK_MIN)
    if (nbytes < _PARALLEL_COPY_MIN or threads < 2 or arr.dtype != out.dtype or
            arr.shape != out.shape or not arr.flags.c_contiguous or
            not out.flags.c_contiguous):
        out[...] = arr
        return
    global _copy_pool
    with _copy_pool_lock:
        if _copy_pool is None:
            import concurrent.futures
            _copy_pool = concurrent.futures.ThreadPoolExecutor(
                8, thread_name_prefix="asarray-copy")
    step = -(-nbytes // threads)
    step = -(-step // mmap.PAGESIZE) * mmap.PAGESIZE
    dst, src = out.ctypes.data, arr.ctypes.data
    parts = [_copy_pool.submit(ctypes.memmove, dst + o, src + o, min(step, nbytes - o))
             for o in range(0, nbytes, step)]
    for part in parts:
        part.result()


def _region_name():
    return f"/asarray-client-{os.getpid()}-{secrets.token_hex(16)}"


def _capacity(nbytes):
    return max(-(-nbytes // mmap.PAGESIZE) * mmap.PAGESIZE, mmap.PAGESIZE)


def _discard(name, fd):
    if name[0] is not None:
        _unlink(name[0])
    os.close(fd)


def _unlink(name):
    try:
        os.unlink("/dev/shm" + name)
    except FileNotFoundError:
        pass


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _LocalError(grpc.RpcError):
    """An error answer of the local transport, shaped like gRPC's."""

    def __init__(self, code, details):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class _Local:
    """asarrayd's local transport: SOCK_SEQPACKET connections to the socket
    beside its gRPC one, one LocalRequest datagram each way with file
    descriptors beside it (see LocalRequest in the proto), which costs a
    fraction of a gRPC round trip. Calls from several threads run at once,
    each on a connection of its own (at most MAX_CONNECTIONS; beyond that a
    call waits for one). The connections stay open for the client's life:
    the handles made over them end when they close. call() answers None
    where the call should go over gRPC instead: a request too big for a
    datagram that carries no descriptors."""

    MAX_MESSAGE = 64 << 10
    MAX_FDS = 16
    MAX_CONNECTIONS = 4
    ANCILLARY = socket.CMSG_SPACE(MAX_FDS * 4)  # room for an answer's descriptors

    def __init__(self, path):
        self._path = path
        self._cv = threading.Condition()
        self._idle = [self._connect()]  # OSError: no local transport there
        self._open = 1
        self._closed = False

    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        return sock

    def _acquire(self):
        with self._cv:
            while not self._idle and self._open >= self.MAX_CONNECTIONS and not self._closed:
                self._cv.wait()
            if self._closed:
                raise _LocalError(grpc.StatusCode.UNAVAILABLE, "the local transport is closed")
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return self._connect()
        except OSError as e:
            self._lost()
            raise _LocalError(grpc.StatusCode.UNAVAILABLE, f"local transport: {e}") from None

    def _give_back(self, sock):
        with self._cv:
            if self._closed:
                sock.close()
                self._open -= 1
            else:
                self._idle.append(sock)
            self._cv.notify()

    def _lost(self):
        with self._cv:
            self._open -= 1
            self._cv.notify()

    def call(self, request, fds=()):
        """(LocalResponse, received descriptors) of an OK answer, or None."""
        data = self.encode(request, fds)
        if data is None:
            return None
        sock = self._acquire()
        try:
            if fds:
                sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _pack_fds(fds))])
            else:
                sock.send(data)
            reply, ancillary, flags, _ = sock.recvmsg(self.MAX_MESSAGE, self.ANCILLARY)
        except OSError as e:
            sock.close()
            self._lost()
            raise _LocalError(grpc.StatusCode.UNAVAILABLE, f"local transport: {e}") from None
        if reply:
            self._give_back(sock)
        else:  # the server closed it
            sock.close()
            self._lost()
        return self.decode(reply, ancillary, flags)

    @classmethod
    def encode(cls, request, fds):
        """The datagram of LocalRequest `request` with descriptors `fds`, or
        None where the call goes over gRPC instead."""
        if len(fds) > cls.MAX_FDS:
            raise _LocalError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"a request with {len(fds)} descriptors is past the local "
                              f"transport's {cls.MAX_FDS}")
        data = request.SerializeToString()
        if len(data) > cls.MAX_MESSAGE:
            if fds:
                raise _LocalError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"a request of {len(data)} bytes with descriptors is past "
                                  f"the local transport's {cls.MAX_MESSAGE}")
            return None
        return data

    @staticmethod
    def decode(reply, ancillary, flags):
        """(LocalResponse, received descriptors) of an answer's datagram (b""
        where the server closed the connection), as recvmsg() gave it. An
        error raises _LocalError, and closes what came with it."""
        received = _unpack_fds(ancillary)
        if not reply:
            _close_all(received)
            raise _LocalError(grpc.StatusCode.UNAVAILABLE,
                              "local transport: the server closed the connection")
        if flags & socket.MSG_CTRUNC:
            _close_all(received)
            raise _LocalError(grpc.StatusCode.INTERNAL,
                              "local transport: the answer's descriptors were cut short")
        response = pb.LocalResponse.FromString(reply)
        if response.code != 0:
            _close_all(received)
            raise _LocalError(_CODES.get(response.code, grpc.StatusCode.UNKNOWN), response.message)
        return response, received

    def close(self):
        """Closes the idle connections now, and each busy one as its call ends."""
        with self._cv:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cv.notify_all()
        for sock in idle:
            sock.close()


def _release_sender(local, stub):
    """Sends a ReleaseRequest on the calling thread (see _release_steps). Holds no
    reference to the Client."""
    io = _BlockingIO(local, stub, None)
    return lambda request: _run_blocking(io, _release_steps(request, 10))


def _unique(ids):
    """`ids` without repeats, in order."""
    return list(dict.fromkeys(ids))


def _pack_fds(fds):
    return np.array(fds, dtype=np.intc).tobytes()


def _unpack_fds(ancillary):
    fds = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(np.frombuffer(data[:usable], dtype=np.intc).tolist())
    return fds


def _close_all(fds):
    for fd in fds:
        os.close(fd)


# --- calls, as steps -----------------------------------------------------------
# Whatever talks to the server is written once, as a generator of steps: it
# yields what it needs done (a _LocalCall, an _Rpc, or _SEND_PENDING) and is
# sent the answer, or has the step's error raised where it yielded. Client
# runs the steps on the calling thread (_run_blocking); aio.Client awaits
# each on its event loop. Requests, results and errors are one code for both.


class _LocalCall:
    """A step: LocalRequest `request` over the local transport, with the
    descriptors `fds`. Answers (LocalResponse, received descriptors), or
    None where it goes over gRPC instead (no local transport here, or too
    big for a datagram)."""

    __slots__ = ("request", "fds")

    def __init__(self, request, fds=()):
        self.request, self.fds = request, fds


class _Rpc:
    """A step: gRPC method `method` with `request` (an iterator of messages
    for ConvertUpload) and the call's keyword arguments `options`. Answers
    the response, or for a streamed answer (STREAMED) the list of its
    messages."""

    __slots__ = ("method", "request", "options")
    STREAMED = frozenset(("Read", "ConvertToData"))

    def __init__(self, method, request, options):
        self.method, self.request, self.options = method, request, options


# A step: sends the releases queued (_Releaser.send_pending), and answers
# whether there were any.
_SEND_PENDING = object()


class _Drive:
    """Generator `steps`, run: iterating gives each step it yields, for the
    driver to perform within answering(), setting `answer`. An error raised
    there (cancellation too) is raised in the steps instead, which clean
    up. Once they return, `value` is what they returned."""

    def __init__(self, steps):
        self._steps = steps
        # An error waits here until it is raised in the steps: a local that
        # kept it would tie the driver's frame and its traceback in a cycle,
        # holding what the steps held (a staged memfd) until the cycle
        # collector ran.
        self._failed = []
        self.answer = self.value = None

    def __iter__(self):
        while True:
            try:
                if self._failed:
                    step = self._steps.throw(self._failed.pop())
                else:
                    step = self._steps.send(self.answer)
            except StopIteration as done:
                self.value = done.value
                return
            self.answer = None
            yield step

    def answering(self):
        return self

    def __enter__(self):
        pass

    def __exit__(self, kind, error, traceback):
        if error is not None:
            self._failed.append(error)
        return True


def _run_blocking(io, steps):
    """What generator `steps` returns, each step performed on this thread
    by `io`."""
    drive = _Drive(steps)
    for step in drive:
        with drive.answering():
            drive.answer = io.perform(step)
    return drive.value


class _BlockingIO:
    """Performs steps on the calling thread: over `local` (a _Local, or
    None) and gRPC stub `stub`, and _SEND_PENDING with `releaser`."""

    def __init__(self, local, stub, releaser):
        self.local, self.stub, self.releaser = local, stub, releaser

    def perform(self, step):
        if step is _SEND_PENDING:
            return self.releaser.send_pending()
        if isinstance(step, _LocalCall):
            return None if self.local is None else self.local.call(step.request, step.fds)
        answer = getattr(self.stub, step.method)(step.request, **step.options)
        return list(answer) if step.method in _Rpc.STREAMED else answer


def _release_steps(request, timeout):
    """The steps of ReleaseRequest `request`: over the local transport when
    it is up and free, else over gRPC within `timeout` seconds."""
    answer = yield _LocalCall(pb.LocalRequest(release=request))
    if answer is None:
        yield _Rpc("Release", request, {"timeout": timeout})
    else:
        _close_all(answer[1])


class _Releaser:
    """Ends the leases of collected views without making the thread that
    dropped them wait on a round trip. Their ids ride along with this
    client's next Convert call (see take()); what no call took within a few
    milliseconds goes out in a Release call from a thread of its own. That
    thread also unmaps the mappings the idle cache lets go (see _Mappings)."""

    _GATHER_S = 0.005  # how long pending ids wait for a call to carry them
    _UNMAP_BATCH = 8

    def __init__(self, send):
        self.send_now = send  # sends one ReleaseRequest, and waits
        self._pending = []
        self._unmap = []
        self._cv = threading.Condition()
        self._busy = 0  # Release calls and calls carrying ids, in flight
        threading.Thread(target=self._run, daemon=True).start()
        _RELEASERS.add(self)

    def __call__(self, handle_id):
        with self._cv:
            self._pending.append(handle_id)
            if len(self._pending) == 1:
                self._cv.notify()

    def take(self):
        """The pending ids, for the caller's call to carry; then settle()."""
        if not self._pending:  # a racy peek is fine: ids left now go next time
            return []
        with self._cv:
            batch, self._pending = self._pending, []
            self._busy += 1
        return batch

    def settle(self, batch, delivered):
        """After the call that carried `batch`: queues it again unless the
        server got it."""
        with self._cv:
            if not delivered:
                self._pending[:0] = batch
            self._busy -= 1
            self._cv.notify_all()

    @contextlib.contextmanager
    def carried(self, request):
        """Around a call of ConvertRequest or ConvertBatchRequest `request`:
        puts the pending ids in its release_ids, and queues them again
        unless the server got them."""
        carried = self.take()
        if not carried:
            yield
            return
        request.release_ids.extend(_unique(carried))
        delivered = False
        try:
            yield
            delivered = True
        except grpc.RpcError as e:
            # Any answer but UNAVAILABLE comes from a server that ran the call,
            # and with it the releases.
            delivered = e.code() != grpc.StatusCode.UNAVAILABLE
            raise
        finally:
            self.settle(carried, delivered)

    def send_pending(self):
        """Sends the queued releases from the calling thread, and waits for
        those already on their way (the sender thread's, or a call's):
        whether there were any."""
        batch = self.take()
        if not batch:
            with self._cv:
                if not self._busy:
                    return False
                self._cv.wait_for(lambda: not self._busy)
            return True
        delivered = False
        try:
            self._send(batch)
            delivered = True
        finally:
            self.settle(batch, delivered)
        return True

    def unmap_later(self, mapping):
        """Drops `mapping` from the background thread, which unmaps it there
        (munmap is not free)."""
        with self._cv:
            self._unmap.append(mapping)
            if len(self._unmap) >= self._UNMAP_BATCH:
                self._cv.notify()

    def flush(self):
        """Waits until every queued release was sent."""
        with self._cv:
            self._cv.wait_for(lambda: not self._pending and not self._busy)

    def drain(self):
        """At exit: sends what is queued from the calling thread, without
        relying on the sender thread, which interpreter shutdown may stop."""
        with self._cv:
            self._cv.wait_for(lambda: not self._busy, timeout=5)
            batch, self._pending = self._pending, []
        self._send(batch)

    def _send(self, batch):
        batch = _unique(batch)  # the server refuses a Release that names an id twice
        if batch:
            try:
                self.send_now(pb.ReleaseRequest(id=batch[0], more_ids=batch[1:]))
            except Exception:  # unknown ids were released already or expired
                pass

    def _run(self):
        while True:
            with self._cv:
                self._cv.wait_for(
                    lambda: self._pending or len(self._unmap) >= self._UNMAP_BATCH)
                unmap, self._unmap = self._unmap, []
                gather = bool(self._pending)
                self._busy += gather
            # The last references: the mappings unmap here (one an array
            # still views would stay until that array goes; close() would not
            # wait for it).
            del unmap
            if not gather:
                continue
            time.sleep(self._GATHER_S)  # a Convert may carry them meanwhile
            with self._cv:
                batch, self._pending = self._pending, []
            self._send(batch)
            with self._cv:
                self._busy -= 1
                self._cv.notify_all()


_RELEASERS: weakref.WeakSet[_Releaser] = weakref.WeakSet()
_LEASE_FINALIZERS = set()  # the finalizers of live views, until they run


def _on_collect(obj, fn, *args):
    """Calls fn(*args) once `obj` is collected, or at exit."""
    def run():
        _LEASE_FINALIZERS.discard(finalizer)
        fn(*args)
    finalizer = weakref.finalize(obj, run)
    _LEASE_FINALIZERS.add(finalizer)


@atexit.register
def _flush_all():
    # Views still alive at exit release their handles now: weakref's own exit
    # hook may run after this one (its order depends on who imported first).
    for finalizer in list(_LEASE_FINALIZERS):
        finalizer()
    for releaser in list(_RELEASERS):
        releaser.drain()


def _describe(as_numpy, obj):
    """(address of element 0, shape, strides in elements or None, item size,
    dtype name) of a tensor or array. Tensors report their own strides, which
    survive even when empty (numpy zeroes an empty view's strides)."""
    if torch is not None and isinstance(obj, torch.Tensor):
        if obj.device.type != "cpu" and not obj.is_cuda:
            raise NotImplementedError(_OTHER_DEVICE.format(obj.device))
        name = _dtype_name(obj.dtype)
        if obj.numel() > 0:
            start = obj.data_ptr()
        else:
            # data_ptr() is 0 for an empty tensor; the storage still says where it is.
            storage = obj.untyped_storage() if hasattr(obj, "untyped_storage") else obj.storage()
            start = storage.data_ptr() + obj.storage_offset() * obj.element_size()
        return start, tuple(obj.shape), tuple(obj.stride()), obj.element_size(), name
    arr, name = as_numpy(obj)
    item = arr.itemsize
    strides = None if any(s % item for s in arr.strides) else tuple(s // item for s in arr.strides)
    return arr.__array_interface__["data"][0], arr.shape, strides, item, name


def _bounds(start, shape, strides, item):
    """(lowest, highest + 1) byte address a view touches; (start, start) when empty."""
    if 0 in shape:
        return start, start
    lo = hi = start
    for size, stride in zip(shape, strides):
        if stride < 0:
            lo += (size - 1) * stride * item
        else:
            hi += (size - 1) * stride * item
    return lo, hi + item


def _view_bounds(arr):
    """(lowest, highest + 1) byte address a numpy view touches."""
    strides = tuple(s // arr.itemsize for s in arr.strides)
    return _bounds(arr.__array_interface__["data"][0], arr.shape, strides, arr.itemsize)


_ALIGN = 64  # byte alignment of each array in a staging memfd or a share_tree() region


def _aligned(offset):
    return -(-offset // _ALIGN) * _ALIGN


class _Sources:
    """What the sources of one request (a Convert, or every item of a
    ConvertBatch) bring beside the message: the descriptors it attaches,
    each once (`fds`, in index order), and, over the local transport, the
    heap bytes past what a datagram holds, staged together in one memfd of
    this client's (each at a 64-byte aligned offset). `uploads`: whether a
    big inline payload may stream through ConvertUpload instead (a single
    Convert only). After the sources are filled, finish() makes the memfd;
    `staged` keeps it until the answer is mapped."""

    def __init__(self, local, uploads):
        self.local, self.uploads = local, uploads
        self.fds = []
        self._index = {}  # descriptor -> its index
        self.regions = 0  # descriptors of this client's regions among fds
        self.item = 0  # the item being filled
        self.staged_items = set()  # items whose bytes go in the staging memfd
        self.staged = None
        self._inline = 0  # heap bytes sent inline so far
        self._staging = None  # (index of the staging memfd, bytes so far, [(offset, lo, n, keep)])
        # item -> (its error's prefix in a batch, torch's words) of a copy=False
        # that torch refuses, which the server refuses too (see _source_of).
        self.refusals = {}

    def refuse(self, words):
        """Says the item being filled is a copy=False that torch refuses, in
        `words` (those of its first refusal)."""
        self.refusals.setdefault(self.item, ("", words))

    def in_torch_words(self, error):
        """`error` in torch's words when it is the server's refusal of one of
        the copy=False items that torch refuses too."""
        if error.code == grpc.StatusCode.FAILED_PRECONDITION:
            for prefix, words in self.refusals.values():
                if error.details.startswith(prefix):
                    return AsArrayValueError(error.code, prefix + words)
        return error

    def attach(self, fd):
        """The index of descriptor `fd` (a region's) in the request."""
        index = self._index.get(fd)
        if index is None:
            index = self._index[fd] = len(self.fds)
            self.fds.append(fd)
            self.regions += 1
        return index

    def stages(self, nbytes):
        """Whether heap bytes of this size go in the staging memfd: those
        that would take the request's inline bytes past _LOCAL_INLINE_MAX."""
        if not self.local:
            return False
        if self._inline + nbytes <= _LOCAL_INLINE_MAX:
            self._inline += nbytes
            return False
        return True

    def stage(self, lo, nbytes, keep):
        """(descriptor index, offset) of a slot in the staging memfd for the
        bytes [lo, lo + nbytes) of this process, which finish() copies there;
        `keep` holds them meanwhile."""
        if self._staging is None:
            self._staging = [len(self.fds), 0, []]
            self.fds.append(-1)  # its descriptor, once finish() makes it
        offset = _aligned(self._staging[1])
        self._staging[1] = offset + nbytes
        self._staging[2].append((offset, lo, nbytes, keep))
        self.staged_items.add(self.item)
        return self._staging[0], offset

    def finish(self, client):
        """The steps that copy the staged bytes into a memfd of `client`'s."""
        if self._staging is None:
            return
        index, total, parts = self._staging
        staged = yield from client._empty((total,), "uint8", hold=False)
        base = staged.ctypes.data
        for offset, lo, nbytes, _ in parts:
            ctypes.memmove(base + offset, lo, nbytes)
        self.fds[index] = client._regions[base].fd
        self.staged, self._staging = staged, None


# --- what asarray() takes ------------------------------------------------------
# torch.asarray (PyTorch 2.x) looks, in this order, for a tensor; a numpy
# array or scalar; a DLPack capsule; the buffer protocol; then, refusing
# copy=False from here on, __cuda_array_interface__, __dlpack__ and a
# sequence. _source_of() follows that order, and takes __array_interface__
# (an object numpy views) before the sequence.

# ScalarType names, as torch's messages print them.
_SCALAR_TYPES = {"bool": "Bool", "uint8": "Byte", "int8": "Char", "int16": "Short",
                 "int32": "Int", "int64": "Long", "float16": "Half", "bfloat16": "BFloat16",
                 "float32": "Float", "float64": "Double", "complex64": "ComplexFloat",
                 "complex128": "ComplexDouble"}
# What torch infers for a Python bool, int, float and complex, as the server does.
_PYTHON_KINDS = {"bool": "bool", "int": "int64", "float": "float32", "complex": "complex64"}
_CUDA_SOURCE = ("CUDA memory (a CUDA tensor, DLPack capsule or __cuda_array_interface__) is sent "
                "by its CUDA IPC handle, which needs torch with CUDA in this process")
_OTHER_DEVICE = "memory on {} is not a source this client sends: move it to the CPU first"

_capsule_is_valid = ctypes.pythonapi.PyCapsule_IsValid
_capsule_is_valid.argtypes = [ctypes.py_object, ctypes.c_char_p]
_capsule_is_valid.restype = ctypes.c_int


def _check_alias(name, options, sources, device="cpu"):
    """torch's refusals of copy=False for an array of dtype `name` on
    `device` (to another device, then into another dtype), which the server
    makes too."""
    if options.device and _same_device(options.device, device) is False:
        sources.refuse(f"can't alias tensor from device '{device}' to '{options.device}'.")
    elif options.HasField("dtype") and _NAME_OF_ENUM[options.dtype] != name:
        sources.refuse(f"can't alias tensor with dtype '{_SCALAR_TYPES[name]}' into dtype "
                       f"'{_SCALAR_TYPES[_NAME_OF_ENUM[options.dtype]]}'.")


def _same_device(asked, device):
    """Whether the device asked for ("cuda" means the current one) is
    `device` ("cpu" or "cuda:N")."""
    if asked == device:
        return True
    if asked == "cpu" or device == "cpu":
        return False
    if asked == "cuda":
        return torch is not None and device == f"cuda:{torch.cuda.current_device()}"
    return False


class _Exporter:
    """A DLPack capsule as numpy's from_dlpack takes it: through an exporter."""

    def __init__(self, capsule):
        self._capsule = capsule

    def __dlpack__(self, stream=None, **_):
        return self._capsule

    def __dlpack_device__(self):
        return (1, 0)  # kDLCPU: numpy refuses a capsule of any other device


def _source_of(obj, request, sources):
    """What torch.asarray makes of `obj`, in its order of lookup: an array or
    tensor that views obj's memory wherever torch's result would (a copy of
    a numpy scalar, as torch makes one), or None once `obj` is encoded as
    the request's literal; the options then get the dtype torch infers for
    a literal that holds numpy scalars, arrays or tensors. A copy=False
    that torch refuses goes as a source the server refuses (inline bytes,
    a literal), and `sources` keeps torch's words for its error."""
    options = request.options
    copy_false = options.HasField("copy") and not options.copy
    if isinstance(obj, np.ndarray) or (torch is not None and isinstance(obj, torch.Tensor)):
        return obj
    if isinstance(obj, np.generic):
        if copy_false:
            sources.refuse("can't alias NumPy scalars. Either remove copy=False or transform "
                           "it in a ndarray. ")
        return np.array(obj)
    if not isinstance(obj, (list, tuple, range, bool, int, float, complex)):
        if type(obj).__name__ == "PyCapsule" and _capsule_is_valid(obj, b"dltensor"):
            return torch.from_dlpack(obj) if torch is not None else np.from_dlpack(_Exporter(obj))
        try:
            view = memoryview(obj)
        except TypeError:
            view = None
        if view is not None:
            return _from_buffer(view, options)
    if copy_false:
        sources.refuse("can't alias arbitrary sequence into a tensor.")
        request.source.literal.nodes.add().list_length = 0
        return None
    if hasattr(obj, "__cuda_array_interface__"):
        if torch is None:
            raise NotImplementedError(_CUDA_SOURCE)
        return torch.as_tensor(obj)  # a view of its device memory, as torch takes it
    if hasattr(obj, "__dlpack__"):
        return torch.from_dlpack(obj) if torch is not None else np.from_dlpack(obj)
    if hasattr(obj, "__array_interface__"):
        return np.asarray(obj)
    if options.HasField("dtype"):
        _encode_literal(obj, request.source.literal.nodes, target=_NAME_OF_ENUM[options.dtype])
        return None
    kinds = set()
    _encode_literal(obj, request.source.literal.nodes, kinds=kinds)
    if kinds and not kinds <= set(_PYTHON_KINDS.values()):
        options.dtype = _DTYPES[_join(kinds)][0]
    return None


def _join(kinds):
    """The dtype torch infers for a literal whose leaves infer `kinds`."""
    joined = None
    for kind in kinds:
        joined = kind if joined is None else _promote(joined, kind)
    return joined


def _read_as(value, target):
    """A numpy scalar or a tensor in a literal as the Python number torch
    stores into dtype `target`, read as torch reads it (its errors too): a
    complex by __complex__, a floating value by __float__, an integer or a
    bool by __index__ (a Python float or complex subclass as itself)."""
    category = _category(target)
    if category == 3:
        return complex(value)
    if category == 2 or isinstance(value, float):
        return float(value)
    if isinstance(value, np.bool_) or (category == 0 and isinstance(value, complex)):
        return bool(value)
    return operator.index(value)


def _from_buffer(view, options):
    """torch.asarray of a buffer (a memoryview of it): its bytes as one
    dimension of the dtype asked for, or of float32 (torch's default),
    viewing them; torch's tensor views even a read-only buffer."""
    if not view.c_contiguous:
        raise RuntimeError("could not retrieve buffer from object")
    name = _NAME_OF_ENUM[options.dtype] if options.HasField("dtype") else "float32"
    item = _DTYPES[name][1].itemsize
    if view.nbytes == 0:
        raise ValueError("both buffer length (0) and count (-1) must not be 0")
    if view.nbytes % item:
        raise ValueError(f"buffer length ({view.nbytes} bytes) after offset (0 bytes) must be "
                         f"a multiple of element size ({item})")
    if name != "bfloat16":
        return np.frombuffer(view, dtype=_DTYPES[name][1])
    if torch is None:
        raise TypeError("a buffer read as bfloat16 needs torch")
    return torch.frombuffer(view, dtype=torch.bfloat16)


def _category(name):
    return 0 if name == "bool" else 3 if name.startswith("complex") else (
        2 if "float" in name else 1)


def _promote(a, b):
    """torch.promote_types of two dtype names: the higher category (bool,
    integer, floating, complex), where complex takes float64's precision;
    within one, the wider (uint8 and int8 give int16, float16 and bfloat16
    float32)."""
    if a == b:
        return a
    ca, cb = _category(a), _category(b)
    if ca != cb:
        high, low = (a, b) if ca > cb else (b, a)
        return "complex128" if (high, low) == ("complex64", "float64") else high
    if {a, b} == {"float16", "bfloat16"}:
        return "float32"
    if ca == 1:
        return _NAME_OF_NUMPY[np.promote_types(a, b)]
    return max(a, b, key=lambda n: _DTYPES[n][1].itemsize)


def _leaf_kind(value):
    """The dtype torch infers for a number of a literal: a numpy scalar's
    own, a Python number's by its type; None for anything else."""
    if isinstance(value, np.generic):
        return _dtype_name(value.dtype)
    for python in (bool, int, float, complex):  # bool first: it is an int
        if isinstance(value, python):
            return _PYTHON_KINDS[python.__name__]
    return None


# --- trees -------------------------------------------------------------------
# asarray_tree() and its kin take dicts, lists, tuples and namedtuples nested
# in any way. A leaf is array-like (an array, a tensor, a number, a reference
# this client made, or a list literal: a list of numbers and of such lists,
# as torch.asarray takes it), or anything else, which passes through as it is.


def _is_number(value):
    return isinstance(value, (bool, int, float, complex, np.number, np.bool_))


def _is_literal(value, depth=0):
    """Whether list `value` is a nested literal: numbers, and lists (or plain
    tuples) of them, all the way down. [] is one (torch makes it an empty
    tensor); a list that holds an array, a dict or a string is a container."""
    if depth > 64:
        return True  # past torch's rank; the encoder says so
    for item in value:
        if _is_number(item):
            continue
        if not (isinstance(item, list) or type(item) is tuple) or not _is_literal(item, depth + 1):
            return False
    return True


def _is_array_leaf(value):
    """An array-like leaf of a tree (see above)."""
    if isinstance(value, (np.ndarray, TensorRef, ViewRef, SharedArrayRef)) or _is_number(value):
        return True
    if torch is not None and isinstance(value, torch.Tensor):
        return True
    return isinstance(value, list) and _is_literal(value)


def _tree_leaves(node, path=""):
    """(key path, leaf) of every array-like leaf of a tree, in order. The key
    path is what indexes the leaf from the root: "['images'][0].labels"."""
    if isinstance(node, TreeRef):
        yield from _tree_leaves(node.tree, path)
    elif _is_array_leaf(node):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _tree_leaves(value, f"{path}[{key!r}]")
    elif isinstance(node, tuple) and hasattr(node, "_fields"):
        for field, value in zip(node._fields, node):
            yield from _tree_leaves(value, f"{path}.{field}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _tree_leaves(value, f"{path}[{i}]")


def _tree_rebuild(node, values):
    """The tree `node` with its array-like leaves, in _tree_leaves' order,
    replaced by the next of `values`; containers are new ones of the same
    types (a TreeRef becomes its tree), other leaves stay."""
    if isinstance(node, TreeRef):
        return _tree_rebuild(node.tree, values)
    if _is_array_leaf(node):
        return next(values)
    if isinstance(node, dict):
        items = [(key, _tree_rebuild(value, values)) for key, value in node.items()]
        if type(node) is dict:
            return dict(items)
        if isinstance(node, collections.defaultdict):
            return collections.defaultdict(node.default_factory, items)
        try:
            return type(node)(items)
        except TypeError:
            return dict(items)
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return type(node)(*[_tree_rebuild(value, values) for value in node])
    if isinstance(node, (list, tuple)):
        items = [_tree_rebuild(value, values) for value in node]
        if type(node) in (list, tuple):
            return type(node)(items)
        try:
            return type(node)(items)
        except TypeError:
            return list(items) if isinstance(node, list) else tuple(items)
    return node


def _per_item(value, n, what):
    """A batch option: one value for every item, or a list of one per item."""
    if isinstance(value, list):
        if len(value) != n:
            raise ValueError(f"{what}: {len(value)} values for {n} items")
        return value
    return [value] * n


class Client:
    """A connection to asarrayd. `address`: "unix:/path" or "host:port";
    None means the server's default socket. A context manager."""

    _regions: weakref.WeakValueDictionary[int, _Region]
    _allocations: dict[int, tuple[weakref.ref[Any], TensorRef]]
    _handles: weakref.WeakValueDictionary[int, _Mapping]
    _cuda_views: weakref.WeakValueDictionary[int, _CudaView]

    def __init__(self, address: str | None = None, local: bool = True, named: bool = False, *,
                 root_certificates: Pem = None, certificate_chain: Pem = None,
                 private_key: Pem = None, timeout: float | None = 60.0,
                 stream_timeout: float | None = None, retries: bool = True,
                 keepalive_ms: int = 30000, compression: bool = False) -> None:
        """`local`: use the server's local transport when it has one (a
        same-host Unix address): memory as descriptors, nothing named in
        /dev/shm, handles that end with this client. `named`: name memory in
        /dev/shm and make every call over gRPC, as gRPC-only callers do.

        On a TCP address: `root_certificates` (PEM bytes, or a file's path)
        connects with TLS and trusts that CA bundle; `certificate_chain` and
        `private_key` are this client's certificate, for a server that
        requires one (mutual TLS), whose subject then owns our handles.
        `timeout`: seconds each unary call may take; `stream_timeout`: each
        upload or read (None: no deadline). `retries`: retry the calls that
        are safe to repeat on UNAVAILABLE, with backoff. `keepalive_ms`: ping
        an idle connection this often (0: never), so that it survives load
        balancers. `compression`: gzip the messages that carry data."""
        self.address = address or "unix:" + default_socket_path()
        self.remote = not self.address.startswith("unix:")
        options: list[tuple[str, object]] = [("grpc.max_receive_message_length", -1),
                                              ("grpc.max_send_message_length", -1)]
        if retries:
            options += [("grpc.enable_retries", 1),
                        ("grpc.service_config", _RETRY_SERVICE_CONFIG)]
        if keepalive_ms:
            options += [("grpc.keepalive_time_ms", int(keepalive_ms)),
                        ("grpc.keepalive_timeout_ms", 20000),
                        ("grpc.keepalive_permit_without_calls", 1),
                        ("grpc.http2.max_pings_without_data", 0)]
        self._timeout, self._stream_timeout = timeout, stream_timeout
        self._compression = grpc.Compression.Gzip if compression else None
        pems = [_pem(v) for v in (root_certificates, private_key, certificate_chain)]
        self._tls = any(v is not None for v in pems)
        self._client_certificate = pems[2] is not None
        if self._tls:
            if not self.remote:
                raise ValueError("TLS is for TCP addresses; a Unix socket needs none")
            if (pems[1] is None) != (pems[2] is None):
                raise ValueError("a client certificate needs its private key, and the reverse")
            self._trust = "the system's roots" if root_certificates is None else (
                root_certificates if isinstance(root_certificates, (str, os.PathLike))
                else "root_certificates")
            credentials = grpc.ssl_channel_credentials(*pems)
        else:
            credentials = None
        self._channel_config = (credentials, options)  # aio.Client's channel has the same
        self._channel = _open_channel(grpc, self.address, credentials, options)
        self._stub = pb_grpc.AsArrayStub(self._channel)
        self._lock = threading.Lock()
        self._regions = weakref.WeakValueDictionary()  # address -> _Region
        self._last_region = None  # a weak reference to the region found last
        self._pool = _RegionPool()
        self._allocations = {}  # id(result of empty()) -> (weak reference, TensorRef)
        self._handles = weakref.WeakValueDictionary()  # mapping address -> mapping
        self._cuda_views = weakref.WeakValueDictionary()  # device address -> _CudaView
        # IPC handle -> (base address, weak reference to a tensor in it) of
        # this process's allocations sent as sources (see _fill_cuda_source).
        self._cuda_exports: dict[bytes, tuple[int, Any]] = {}
        unix = self.address.startswith("unix:") and not self.address.startswith("unix:@")
        self._local = None
        if local and not named and unix:
            try:
                self._local = _Local(self.address[5:] + ".local")
            except OSError:
                pass  # no local transport there: gRPC alone
        self._releaser = _Releaser(_release_sender(self._local, self._stub))
        self._mappings = _Mappings(self._releaser)
        self._io = _BlockingIO(self._local, self._stub, self._releaser)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._releaser.flush()
        if self._local is not None:
            self._local.close()  # the handles made over it end
        self._channel.close()

    @property
    def local(self) -> bool:
        """Whether calls go over the local transport (memory as descriptors)."""
        return self._local is not None

    def flush(self) -> None:
        """Waits until the releases of collected views have reached the server."""
        self._releaser.flush()

    # --- conversion ------------------------------------------------------------

    def asarray(self, obj: Source, *, dtype: DTypeLike = None, device: Device = None,
                copy: bool | None = None, requires_grad: bool = False,
                like: Like = "torch") -> Result:
        """torch.asarray through the server. `obj`: what torch.asarray takes
        (a CPU tensor, a numpy array or scalar, a DLPack capsule or an object
        with __dlpack__, a buffer such as bytes, bytearray, memoryview or
        array.array, read as torch reads one, an object with
        __array_interface__, a sequence of numbers, numpy scalars, arrays
        and one-element tensors, a scalar), or a TensorRef, a ViewRef or a
        SharedArrayRef. Memory in one of this client's regions is aliased
        where torch would alias it. Returns a torch tensor (or, with
        like="numpy", a numpy array; bfloat16 then comes as its uint16 bits)
        mapped onto the result's memory."""
        return self._run(self._asarray(obj, dtype, device, copy, requires_grad, like))

    def _asarray(self, obj, dtype, device, copy, requires_grad, like):
        request, sources, upload = self._convert_request(obj, dtype, device, copy, requires_grad)
        if self.remote:
            return (yield from self._convert_remote(request, upload, like, sources))
        yield from sources.finish(self)
        received = []
        try:
            if upload is not None:
                response = yield self._convert_upload(request, upload)
            else:
                response, received = yield from self._call("convert", request, sources.fds)
        except grpc.RpcError as e:
            raise self._error(e, sources) from None
        try:
            return (yield from self._results([response.handle], like, sources, received))[0]
        finally:
            _close_all(received)  # mapped now, or never
            # The staged copy goes back to the pool when `sources` goes; it is
            # reused only once no handle aliases it.

    def asarray_batch(self, objs: Iterable[Source], *,
                      dtype: DTypeLike | Sequence[DTypeLike] = None,
                      device: Device | Sequence[Device] = None,
                      copy: bool | Sequence[bool | None] | None = None,
                      requires_grad: bool | Sequence[bool] = False, like: Like = "torch",
                      keys: Sequence[object] | None = None) -> List[Result]:
        """asarray() of every item of `objs` in one ConvertBatch call, all or
        nothing: the list of results, in order. Each option is one value for
        every item, or a list of one per item. `keys`: a name for each item,
        which the error of a failing one quotes, as in "item 3 (['labels']):
        ...". Over the local transport the sources attach each descriptor
        once, and the copies the server makes come back in one memfd, mapped
        once; a batch whose answer would not fit in a datagram (some thousand
        handles) or carry more than 16 descriptors is RESOURCE_EXHAUSTED, as
        is one whose request names this client's regions and would not fit.
        A batch holds at most 4096 items; over gRPC (and from a remote
        client) its heap arrays travel inline, within one message."""
        return self._run(self._asarray_batch(objs, dtype, device, copy, requires_grad, like,
                                             keys))

    def _asarray_batch(self, objs, dtype, device, copy, requires_grad, like, keys):
        objs = list(objs)
        if not objs:
            return []
        handles, sources, received = yield from self._batch(objs, dtype, device, copy,
                                                            requires_grad, keys)
        try:
            return (yield from self._results(handles, like, sources, received))
        finally:
            _close_all(received)

    def asarray_tree(self, tree: Tree, *, dtype: DTypeLike = None, device: Device = None,
                     copy: bool | None = None, requires_grad: bool = False,
                     like: Like = "torch") -> Tree:
        """asarray() of every array-like leaf of a tree (dicts, lists, tuples
        and namedtuples, nested in any way; a TreeRef) in one batch call: the
        same structure, namedtuples of the same types, with a tensor (or a
        numpy array with like="numpy") at each of those leaves. Array-like
        leaves: numpy arrays and scalars, tensors, Python numbers, this
        client's references, and lists that hold only numbers and such lists
        (a literal, as torch.asarray takes it; a list that holds anything else
        is a container). Other leaves (strings, None, other objects) pass
        through as they are. An error names the failing leaf by its key path,
        as in "item 2 (['images'][1]): ..."."""
        return self._run(self._asarray_tree(tree, dtype, device, copy, requires_grad, like))

    def _asarray_tree(self, tree: Tree, dtype: DTypeLike, device: Device, copy: bool | None,
                      requires_grad: bool, like: Like) -> Generator[Any, Any, Tree]:
        leaves = list(_tree_leaves(tree))
        # ViewRefs of one held span (a TreeRef's leaves in one region) that
        # need no cast: the span is taken once, and each leaf is a view of
        # its mapping, made here; the span's lease ends with the last view.
        as_views = (not self.remote and dtype is None and device in (None, "cpu")
                    and copy is not True and not requires_grad)
        # Per leaf: its item, and the ViewRef to cut from that item's result or None.
        placed: list[tuple[int, ViewRef | None]]
        items: list[Source]
        spans: dict[str, int]
        items, keys, placed, spans = [], [], [], {}
        for path, leaf in leaves:
            if as_views and isinstance(leaf, ViewRef):
                at = spans.get(leaf.id)
                if at is None:
                    at = spans[leaf.id] = len(items)
                    items.append(TensorRef(leaf.id, "uint8", (), ()))
                    keys.append(path)
                placed.append((at, leaf))
            else:
                placed.append((len(items), None))
                items.append(leaf)
                keys.append(path)
        n = len(items)
        results = yield from self._asarray_batch(items, [dtype] * n, [device] * n, [copy] * n,
                                                 [requires_grad] * n, like, keys)
        bases = {}
        for at in spans.values():
            base = results[at].numpy() if like != "numpy" else results[at]
            # A span is a whole held tensor of bytes, as ref(tree) makes one;
            # views of anything else are the server's to take.
            bases[at] = base if base.dtype == np.uint8 and base.ndim == 1 else None
        out = []
        for at, view in placed:
            if view is None:
                out.append(results[at])
            elif bases[at] is not None:
                out.append(self._view_of(bases[at], view, like))
            else:
                out.append((yield from self._asarray(view, None, None, copy, False, like)))
        return _tree_rebuild(tree, iter(out))

    def _view_of(self, base, view, like):
        """The array a ViewRef describes, a view of `base` (the uint8 array of
        the span it is in), which it keeps."""
        storage = _DTYPES[view.dtype][1]
        arr = np.ndarray(view.shape, dtype=storage, buffer=base,
                         offset=view.offset + view.element_offset * storage.itemsize,
                         strides=[st * storage.itemsize for st in view.strides])
        return self._wrap(arr, view.dtype, like)

    def share_tree(self, tree: Tree, like: Like | None = None) -> Tree:
        """share() of every numpy array and tensor in a tree, all into ONE
        region of this process (each C-contiguous, at a 64-byte aligned
        offset): the same structure with those arrays in the region, which
        asarray_tree(..., copy=False) then aliases with a single descriptor.
        Other leaves (numbers, list literals, references, the rest) stay as
        they are. `like`: "numpy" or "torch" for every array, or None to keep
        each leaf's kind (a tensor stays a tensor). The region goes back to
        the pool once all of its arrays are collected."""
        return self._run(self._share_tree(tree, like))

    def _share_tree(self, tree: Tree, like: Like | None) -> Generator[Any, Any, Tree]:
        leaves = [leaf for _, leaf in _tree_leaves(tree)]
        picked = [(i, self._as_numpy(leaf)) for i, leaf in enumerate(leaves)
                  if self._is_array(leaf) or isinstance(leaf, (np.number, np.bool_))]
        if picked:
            offsets, total = [], 0
            for _, (arr, _) in picked:
                offsets.append(_aligned(total))
                total = offsets[-1] + arr.nbytes
            block = yield from self._empty((total,), "uint8", hold=False)
            for (i, (arr, name)), offset in zip(picked, offsets):
                out: np.ndarray = np.ndarray(arr.shape, dtype=arr.dtype, buffer=block,
                                             offset=offset)
                _copy_into(out, arr)
                kind = like or ("torch" if torch is not None and isinstance(leaves[i], torch.Tensor)
                                else "numpy")
                leaves[i] = self._wrap(out, name, kind)
        return _tree_rebuild(tree, iter(leaves))

    def ref(self, array: Array | Tree, *, ttl_ms: int | None = None) -> Ref | TreeRef:
        """A picklable reference to an array or tensor in one of this
        client's regions, for another process's asarray(): a TensorRef over
        the local transport, else a SharedArrayRef that names the region.
        The server holds a TensorRef's memory on this client's connection
        until the allocation `array` views is collected, release(ref), or
        this client closes (renew(ref) makes it outlive the client). For a
        whole allocation from empty() or share() the server holds it since it
        was made, and ref() makes no call.

        Of a tree (anything but one array or tensor, see asarray_tree()): a
        TreeRef, for another process's asarray_tree(ref, copy=False). Its
        tensors are taken in one batch call, each under a TTL lease (`ttl_ms`,
        or the server's default) that outlives this client: leaves in this
        client's regions are aliased, other arrays and literals copied into
        one arena of the server's. release(ref) ends them all."""
        return self._run(self._ref(array, ttl_ms))

    def _ref(self, array, ttl_ms):
        if not self._is_array(array):
            return (yield from self._ref_tree(array, ttl_ms))
        if ttl_ms is not None:
            raise TypeError("ttl_ms is for a tree; renew(ref, ttl_ms) gives an array's "
                            "reference a TTL lease")
        if self.remote:
            raise ValueError("a remote client shares no memory with the server; "
                             "upload() keeps a tensor there and returns its TensorRef")
        known = self._allocations.get(id(array))
        if known is not None and known[0]() is array:
            return known[1]  # returned by empty(), zeros() or share() as it is
        start, shape, strides, item, name = _describe(self._as_numpy, array)
        lo, hi = _bounds(start, shape, strides, item)
        region = self._region_holding(lo, hi)
        if region is None or strides is None:
            raise ValueError("the array does not live in a region of this client")
        held = region.held
        if (held is not None and start == region.address and tuple(shape) == held.shape and
                tuple(strides) == held.strides and name == held.dtype):
            return held  # the whole allocation: the server holds it already
        offset = min(lo - region.address, region.size)
        if not region.memfd:
            return SharedArrayRef(region.name, offset, hi - lo, name, shape, strides,
                                  (start - lo) // item)
        # The lease lasts as long as the allocation `array` views (a slice
        # handed over may be a temporary).
        owner = region.owner() if region.owner is not None else None
        return (yield from self._alias_on_server(region, offset, hi - lo, name, shape, strides,
                                                 (start - lo) // item,
                                                 owner if owner is not None else array))

    def share(self, array: Array, like: Like = "numpy") -> Result:
        """A copy of `array` in a shared region of this process, which asarray()
        can then alias (copy=False works on it)."""
        return self._run(self._share(array, like))

    def _share(self, array, like):
        arr, name = self._as_numpy(array)
        out = yield from self._empty(arr.shape, name)
        _copy_into(out, arr)
        return self._allocated(out, name, like)

    def empty(self, shape: Iterable[int], dtype: DTypeLike, like: Like = "torch") -> Result:
        """A writable array allocated directly in a shared region: fill it,
        then asarray() aliases it with no copy at all."""
        return self._run(self._new(shape, dtype, like, zero=False))

    def zeros(self, shape: Iterable[int], dtype: DTypeLike, like: Like = "torch") -> Result:
        return self._run(self._new(shape, dtype, like, zero=True))

    def _new(self, shape, dtype, like, zero):
        """The steps of empty() and zeros()."""
        name = _dtype_name(dtype)
        arr = yield from self._empty(tuple(shape), name, zero=zero)
        return self._allocated(arr, name, like)

    def read(self, target: Target, like: Like = "numpy") -> Result:
        """The elements of a held tensor (a Handle, an id, or a result of
        asarray()), read back over gRPC for remote use, as a new array."""
        return self._run(self._read(target, like))

    def _read(self, target, like):
        return (yield from self._stream("Read", pb.ReadRequest(id=self._id_of(target)), like,
                                        False))

    def _id_of(self, target):
        """The handle id of an id, a Handle, a TensorRef, or a result of asarray()."""
        if isinstance(target, str):
            return target
        if isinstance(target, (TensorRef, ViewRef, Handle)):
            return target.id
        return self.handle(target).id

    def _ids_of(self, target):
        """(ids, whether `target` is a single one): of what _id_of takes, a
        TreeRef, or lists, tuples and dicts of those (a result of
        asarray_tree(), whose string leaves would be taken as ids)."""
        if isinstance(target, TreeRef):
            return target.ids, False
        if isinstance(target, (list, tuple, dict)):
            ids = []
            for value in (target.values() if isinstance(target, dict) else target):
                if value is not None and not _is_number(value):
                    ids += self._ids_of(value)[0]
            return ids, False
        return [self._id_of(target)], True

    def upload(self, obj: Source, *, dtype: DTypeLike = None, device: Device = None,
               copy: bool | None = None, requires_grad: bool = False,
               ttl_ms: int | None = None) -> TensorRef:
        """Converts like asarray() but keeps the result on the server and
        returns its TensorRef, for another process (on the server's host, or
        any client) to take; for remote clients above all. The handle holds a
        TTL lease (`ttl_ms`, or the server's default) until release(ref)."""
        return self._run(self._upload(obj, dtype, device, copy, requires_grad, ttl_ms))

    def _upload(self, obj, dtype, device, copy, requires_grad, ttl_ms):
        request, sources, upload = self._convert_request(obj, dtype, device, copy, requires_grad)
        yield from sources.finish(self)
        request.ttl_ms = 0 if ttl_ms is None else int(ttl_ms)
        try:
            if upload is not None:
                response = yield self._convert_upload(request, upload)
            else:
                response, received = yield from self._call("convert", request, sources.fds)
                _close_all(received)
        except grpc.RpcError as e:
            raise self._error(e) from None
        handle = Handle(response.handle)
        return TensorRef(handle.id, handle.dtype, handle.shape, handle.strides)

    def handle(self, result: Array) -> Handle:
        """The Handle behind an array or tensor returned by asarray()."""
        if torch is not None and isinstance(result, torch.Tensor) and result.is_cuda:
            address = result.data_ptr()
            for view in list(self._cuda_views.values()):
                if view.start <= address < view.start + max(view.length, 1):
                    return view.handle
            raise KeyError("not a result of this client")
        lo, _ = _view_bounds(self._as_numpy(result)[0])
        for mapping in list(self._handles.values()):
            at = lo - mapping.address
            if 0 <= at < max(mapping.length, 1):
                for handle, start, end in list(mapping.live.values()):
                    if start <= at < max(end, start + 1):
                        return handle
        raise KeyError("not a result of this client")

    def release(self, target: Targets) -> None:
        """Ends leases: of a handle id, a Handle, a TensorRef, a result of
        asarray(), a TreeRef, or a list, tuple or dict of those, all in one
        call (each id once). Any unknown id raises AsArrayNotFoundError once
        the others are released."""
        return self._run(self._release(target))

    def _release(self, target):
        ids = _unique(self._ids_of(target)[0])
        if not ids:
            return
        try:
            yield from _release_steps(pb.ReleaseRequest(id=ids[0], more_ids=ids[1:]),
                                      self._timeout)
        except grpc.RpcError as e:
            raise self._error(e) from None

    def stats(self) -> pb.StatsResponse:
        return self._run(self._stats())

    def _stats(self):
        answer = yield from self._call_local(pb.LocalRequest(stats=pb.StatsRequest()))
        if answer is not None:
            return answer.stats
        try:
            return (yield self._rpc("Stats", pb.StatsRequest()))
        except grpc.RpcError as e:
            raise self._error(e) from None

    def list(self) -> List[Handle]:
        """The Handles this caller holds on the server (its own, or under
        mutual TLS its certificate's)."""
        return self._run(self._list())

    def _list(self):
        try:
            response = yield self._rpc("List", pb.ListRequest())
        except grpc.RpcError as e:
            raise self._error(e) from None
        return [Handle(h) for h in response.tensors]

    def renew(self, target: Targets, ttl_ms: int = 0) -> int | List[int]:
        """Extends leases (0: the server's default TTL); a handle that would
        end with this client's connection then outlives it. `target`: as
        release() takes it, all in one call. Returns when the lease ends (ms
        since the Unix epoch), or for a TreeRef or a list, tuple or dict, a
        list of those, one for each id in order."""
        return self._run(self._renew(target, ttl_ms))

    def _renew(self, target, ttl_ms):
        ids, single = self._ids_of(target)
        unique = _unique(ids)  # the server refuses a Renew that names an id twice
        if not unique:
            return []
        request = pb.RenewRequest(id=unique[0], ttl_ms=ttl_ms, more_ids=unique[1:])
        try:
            answer = yield from self._call_local(pb.LocalRequest(renew=request))
            response = answer.renew if answer is not None else (yield self._rpc("Renew", request))
        except grpc.RpcError as e:
            raise self._error(e) from None
        if single:
            return response.lease_expires_unix_ms
        ends = dict(zip(unique, [response.lease_expires_unix_ms,
                                 *response.more_lease_expires_unix_ms]))
        return [ends[i] for i in ids]

    # --- internals -------------------------------------------------------------
    # The methods that yield are generators of steps (see _LocalCall).

    def _run(self, steps):
        """What generator `steps` returns, its steps run on this thread."""
        return _run_blocking(self._io, steps)

    def _rpc(self, method, request, *, stream=False, data=False):
        """The step of a gRPC call with this client's deadline, and
        compression when it carries data."""
        kwargs = {"timeout": self._stream_timeout if stream else self._timeout}
        if data and self._compression is not None:
            kwargs["compression"] = self._compression
        return _Rpc(method, request, kwargs)

    def _convert_request(self, obj, dtype, device, copy, requires_grad):
        """(ConvertRequest, _Sources, upload) of one conversion (see _fill_source)."""
        request = pb.ConvertRequest()
        self._fill_options(request.options, dtype, device, copy, requires_grad)
        sources = _Sources(self._local is not None, uploads=True)
        return request, sources, self._fill_source(request, obj, sources)

    def _convert_upload(self, request, upload):
        return self._rpc("ConvertUpload", self._upload_messages(request, *upload),
                         stream=True, data=True)

    def _error(self, e, sources=None):
        """The exception for a grpc.RpcError (a refusal of copy=False that
        `sources` recorded in torch's words); an UNAVAILABLE one over TCP also
        says what this client expected of the connection."""
        error = from_rpc_error(e) if sources is None else sources.in_torch_words(from_rpc_error(e))
        if e.code() != grpc.StatusCode.UNAVAILABLE or not self.remote:
            return error
        if self._tls:
            hint = (f"TLS to {self.address}: the server must speak TLS with a certificate "
                    f"that {self._trust} trusts, for this host name")
            hint += ("; a server that requires client certificates needs certificate_chain "
                     "and private_key" if not self._client_certificate else
                     ", and accept this client's certificate")
        else:
            hint = (f"plaintext TCP to {self.address}: a server that serves TLS there closes "
                    "the connection; give root_certificates to connect with TLS")
        return type(error)(e.code(), f"{error.details} ({hint})")

    def _convert_remote(self, request, upload, like, sources=None):
        """A remote client's asarray(): the result's bytes, read back."""
        try:
            if upload is not None:
                handle = Handle((yield self._convert_upload(request, upload)).handle)
                try:
                    return (yield from self._stream("Read", pb.ReadRequest(id=handle.id), like,
                                                    handle.requires_grad))
                finally:
                    yield self._rpc("Release", pb.ReleaseRequest(id=handle.id))
            request.return_data = True
            try:
                response = yield self._rpc("Convert", request, data=True)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.RESOURCE_EXHAUSTED:
                    raise
                request.return_data = False  # past one message: streamed
                return (yield from self._stream("ConvertToData", request, like,
                                                request.options.requires_grad))
        except grpc.RpcError as e:
            raise self._error(e, sources) from None
        handle = Handle(response.handle)
        return self._from_bytes(response.data, handle, like, handle.requires_grad)

    def _stream(self, method, request, like, requires_grad):
        """A new array of the ReadResponse stream of `method` (Read,
        ConvertToData)."""
        try:
            messages = yield self._rpc(method, request, stream=True)
        except grpc.RpcError as e:
            raise self._error(e) from None
        handle = Handle(messages[0].handle)
        return self._from_bytes(bytearray().join(m.data for m in messages), handle, like,
                                requires_grad or handle.requires_grad)

    def _from_bytes(self, data, handle, like, requires_grad):
        """A new array of a result's row-major bytes, with the result's own
        strides (a transpose stays one, as torch.asarray would give it)."""
        storage = _DTYPES[handle.dtype][1]
        if isinstance(data, bytes):
            data = bytearray(data)  # writable, as a tensor's memory should be
        arr = np.frombuffer(data, dtype=storage).reshape(handle.shape)
        strides = tuple(handle.strides)
        if arr.ndim and strides != _contiguous_strides(handle.shape):
            extent = 0 if arr.size == 0 else 1 + sum(
                (n - 1) * s for n, s in zip(handle.shape, strides))
            base = np.empty(extent, dtype=storage)
            view = np.lib.stride_tricks.as_strided(
                base, handle.shape, [s * storage.itemsize for s in strides])
            view[...] = arr
            arr = view
        result = self._wrap(arr, handle.dtype, like)
        if requires_grad and like != "numpy":
            result.requires_grad_(True)
        return result

    def _call_local(self, request, fds=()):
        """The LocalResponse of a call over the local transport, or None when
        it should go over gRPC. Any descriptors that came with it are closed."""
        if self._local is None:
            return None
        answer = yield _LocalCall(request, fds)
        if answer is None:
            return None
        _close_all(answer[1])
        return answer[0]

    def _call(self, method, request, fds=()):
        """(response, received descriptors) of a "convert" (ConvertRequest) or
        a "convert_batch" (ConvertBatchRequest), carrying the releases of
        collected views along."""
        with self._releaser.carried(request):
            return (yield from self._call_once(method, request, fds))

    def _call_once(self, method, request, fds):
        if self._local is not None and not (method == "convert" and request.return_data):
            answer = yield _LocalCall(pb.LocalRequest(**{method: request}), fds)
            if answer is not None:
                return getattr(answer[0], method), answer[1]
        if fds:
            raise _LocalError(grpc.StatusCode.FAILED_PRECONDITION,
                              "descriptors travel only over the local transport")
        rpc = "Convert" if method == "convert" else "ConvertBatch"
        return (yield self._rpc(rpc, request, data=True)), []

    def _batch(self, objs, dtype, device, copy, requires_grad, keys, ttl_ms=None):
        """(handles, _Sources, received descriptors) of a ConvertBatch of
        `objs` with the options of asarray_batch()."""
        n = len(objs)
        options = list(zip(_per_item(dtype, n, "dtype"), _per_item(device, n, "device"),
                           _per_item(copy, n, "copy"),
                           _per_item(requires_grad, n, "requires_grad")))
        keys = [""] * n if keys is None else [str(k) for k in keys]
        if len(keys) != n:
            raise ValueError(f"keys: {len(keys)} for {n} items")
        sources = _Sources(self._local is not None, uploads=False)
        request = self._batch_request(objs, options, keys, sources)
        if sources.local and sources.fds and request.ByteSize() + 8 > _Local.MAX_MESSAGE:
            if sources.regions:
                raise self._error(_LocalError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"a batch of {n} items that names this client's regions takes "
                    f"{request.ByteSize()} bytes, past the local transport's "
                    f"{_Local.MAX_MESSAGE}: convert fewer at a time"))
            # Nothing of ours to name: every item inline, over gRPC.
            sources = _Sources(False, uploads=False)
            request = self._batch_request(objs, options, keys, sources)
        if ttl_ms is not None:
            request.ttl_ms = int(ttl_ms)
        yield from sources.finish(self)
        try:
            response, received = yield from self._call("convert_batch", request, sources.fds)
        except grpc.RpcError as e:
            raise self._error(e, sources) from None
        return list(response.handles), sources, received

    def _batch_request(self, objs, options, keys, sources):
        """The ConvertBatchRequest of `objs`; an item this client cannot send
        raises its error with the item's index and key in front."""
        request = pb.ConvertBatchRequest()
        for i, (obj, item_options, key) in enumerate(zip(objs, options, keys)):
            item = request.items.add()
            sources.item = i
            try:
                self._fill_options(item.options, *item_options)
                self._fill_source(item, obj, sources)
                if i in sources.refusals:  # the server's error of it starts so
                    sources.refusals[i] = (f"item {i} ({key}): " if key else f"item {i}: ",
                                           sources.refusals[i][1])
            except (TypeError, ValueError, NotImplementedError) as e:
                if type(e) not in (TypeError, ValueError, NotImplementedError):
                    raise  # a subclass may not take a message alone
                raise type(e)(f"item {i} ({key}): {e}" if key else f"item {i}: {e}") from None
        if any(keys):
            request.keys.extend(keys)
        return request

    def _results(self, protos, like, sources, received):
        """The arrays of an answer's TensorHandles: mapped, or for a remote
        client read back (and then released)."""
        handles = [Handle(proto) for proto in protos]
        for i in sources.staged_items:
            # The result may alias the staged copy, never the caller's array.
            handles[i].shares_memory = handles[i].proto.shares_memory = False
        if not self.remote:
            return self._map_all(handles, like, sources.fds, received)
        results = []
        try:
            for h in handles:
                results.append((yield from self._stream("Read", pb.ReadRequest(id=h.id), like,
                                                        h.requires_grad)))
            return results
        finally:
            try:
                yield from _release_steps(pb.ReleaseRequest(
                    id=handles[0].id, more_ids=[h.id for h in handles[1:]]), self._timeout)
            except grpc.RpcError:
                pass  # the TTL ends them

    def _ref_tree(self, tree, ttl_ms):
        """ref() of a tree: a TreeRef of tensors held under TTL leases. The
        leaves that lie in one region of this client's are held once, as the
        span of the region they cover, and referenced as views of it
        (ViewRef); other arrays and literals are copied into the server's
        arena (a staged copy would stay aliased, keeping a staging memfd of
        ours from the pool for the lease's life). One call in all."""
        leaves = list(_tree_leaves(tree))
        refs = []
        if leaves:
            objs, copies, keys = [], [], []
            spans = {}  # region -> [item, lo, hi]
            placed = []  # per leaf: (item, None) or (region, (lo, hi, start, shape, strides, name))
            for path, leaf in leaves:
                where = self._place_in_region(leaf) if self._is_array(leaf) else None
                if where is None:
                    placed.append((len(objs), None))
                    objs.append(leaf)
                    copies.append(True if self._is_array(leaf) else None)
                    keys.append(path)
                    continue
                region, view = where
                span = spans.get(region)
                if span is None:
                    span = spans[region] = [len(objs), view[0], view[1]]
                    objs.append(None)  # the span, once known
                    copies.append(None)
                    keys.append(path)
                span[1], span[2] = min(span[1], view[0]), max(span[2], view[1])
                placed.append((region, view))
            for region, (item, lo, hi) in spans.items():
                objs[item] = np.frombuffer(region.map, dtype=np.uint8, count=hi - lo,
                                           offset=lo - region.address)
            handles, _, received = yield from self._batch(
                objs, None, None, copies, False, keys, ttl_ms=0 if ttl_ms is None else ttl_ms)
            _close_all(received)
            for where, view in placed:
                if view is None:
                    h = handles[where]
                    refs.append(TensorRef(h.id, _NAME_OF_ENUM[h.dtype], h.layout.shape,
                                          h.layout.strides))
                    continue
                item, span_lo, _ = spans[where]
                lo, hi, start, shape, strides, name, item_size = view
                refs.append(ViewRef(handles[item].id, lo - span_lo, hi - lo, name, shape, strides,
                                    (start - lo) // item_size))
        return TreeRef(_tree_rebuild(tree, iter(refs)), refs)

    @staticmethod
    def _is_array(obj):
        return isinstance(obj, np.ndarray) or (torch is not None and isinstance(obj, torch.Tensor))

    def _place_in_region(self, obj):
        """(region, (lo, hi, start, shape, strides, dtype name, item size)) of
        an array or tensor in a memfd region of this client's, else None."""
        try:
            start, shape, strides, item, name = _describe(self._as_numpy, obj)
        except (TypeError, NotImplementedError):
            return None
        if strides is None:
            return None
        lo, hi = _bounds(start, shape, strides, item)
        region = self._region_holding(lo, hi)
        if region is None or not region.memfd:
            return None
        return region, (lo, hi, start, shape, strides, name, item)

    @staticmethod
    def _fill_options(options, dtype, device, copy, requires_grad):
        name = _dtype_name(dtype)
        if name is not None:
            options.dtype = _DTYPES[name][0]
        if device is not None:
            options.device = str(device)
        if copy is not None:
            options.copy = bool(copy)
        options.requires_grad = bool(requires_grad)

    def _as_numpy(self, obj):
        """(numpy view of obj's memory, dtype name) for arrays and tensors."""
        if torch is not None and isinstance(obj, torch.Tensor):
            if obj.device.type != "cpu":
                raise NotImplementedError(_OTHER_DEVICE.format(obj.device))
            t = obj.detach()
            if t.dtype == torch.bfloat16:
                return t.view(torch.int16).numpy().view(np.uint16), "bfloat16"
            return t.numpy(), _dtype_name(t.dtype)
        arr = np.asarray(obj)
        if arr.dtype.byteorder == ">":
            raise TypeError("big-endian arrays are not supported; convert with .astype('<...')")
        return arr, _dtype_name(arr.dtype)

    @staticmethod
    def _fill_fd_source(fd, index, offset, size, name, layout):
        fd.fd_index, fd.offset, fd.size = index, offset, size
        fd.dtype = _DTYPES[name][0]
        fd.layout.CopyFrom(layout)

    def _fill_source(self, request, obj, sources):
        """Fills request.source, the descriptors it attaches going in
        `sources` (a _Sources), and heap bytes there too when they are
        staged in a memfd; returns (storage bytes, dtype, layout) when the
        payload is large enough to stream instead (where `sources` allows
        uploads), else None."""
        if isinstance(obj, TensorRef):
            request.source.tensor_id = obj.id
            return None
        if isinstance(obj, ViewRef):
            view = request.source.tensor_view
            view.tensor_id, view.offset, view.size = obj.id, obj.offset, obj.size
            view.dtype = _DTYPES[obj.dtype][0]
            view.layout.shape.extend(obj.shape)
            view.layout.strides.extend(obj.strides)
            view.layout.offset = obj.element_offset
            return None
        if isinstance(obj, TreeRef):
            raise TypeError("a TreeRef is a tree: asarray_tree() takes it")
        if isinstance(obj, SharedArrayRef):
            if self.remote:
                raise ValueError("a SharedArrayRef names memory on the server's host, which a "
                                 "remote client cannot reach")
            shm = request.source.shared_memory
            shm.name, shm.offset, shm.size = obj.name, obj.offset, obj.size
            shm.dtype = _DTYPES[obj.dtype][0]
            shm.layout.CopyFrom(pb.Layout(shape=obj.shape, strides=obj.strides,
                                          offset=obj.element_offset))
            return None
        obj = _source_of(obj, request, sources)
        if obj is None:  # a literal, encoded
            return None
        if torch is not None and isinstance(obj, torch.Tensor) and obj.is_cuda:
            self._fill_cuda_source(request, obj, sources)
            return None
        keep = obj  # what holds the bytes until they are sent or staged
        start, shape, strides, item, name = _describe(self._as_numpy, obj)
        copy_false = request.options.HasField("copy") and not request.options.copy
        if copy_false:
            _check_alias(name, request.options, sources)
        if strides is None:  # byte strides that are not whole elements
            keep = np.ascontiguousarray(self._as_numpy(obj)[0])
            start, shape, strides, item, name = _describe(self._as_numpy, keep)
        lo, hi = _bounds(start, shape, strides, item)
        layout = pb.Layout(shape=shape, strides=strides, offset=(start - lo) // item)
        region = self._region_holding(lo, hi)
        if region is not None and region.memfd:
            self._fill_fd_source(request.source.fd, sources.attach(region.fd),
                                 min(lo - region.address, region.size), hi - lo, name, layout)
            return None
        if region is not None:
            shm = request.source.shared_memory
            shm.name, shm.size = region.name, hi - lo
            shm.offset = min(lo - region.address, region.size)
            shm.dtype = _DTYPES[name][0]
            shm.layout.CopyFrom(layout)
            return None
        if not copy_false and sources.stages(hi - lo):
            # Too big for the datagram: the bytes go in a memfd of this
            # client's (one copy, as into a message) instead of over gRPC,
            # which would name the result in /dev/shm and give it a TTL lease.
            index, offset = sources.stage(lo, hi - lo, keep)
            self._fill_fd_source(request.source.fd, index, offset, hi - lo, name, layout)
            return None
        storage = ctypes.string_at(lo, hi - lo) if hi > lo else b""
        if sources.uploads and len(storage) > (
                _REMOTE_UPLOAD_THRESHOLD if self.remote else _UPLOAD_THRESHOLD):
            return storage, _DTYPES[name][0], layout
        inline = request.source.inline_array
        inline.dtype = _DTYPES[name][0]
        inline.layout.CopyFrom(layout)
        inline.storage = storage
        return None

    def _fill_cuda_source(self, request, tensor, sources):
        """A CUDA tensor's source: the tensor a CUDA result of this client's
        is, by id; else its allocation, by a CUDA IPC handle this process
        exports (the server aliases it, or copies from it on the device)."""
        start, shape, strides, item, name = _describe(self._as_numpy, tensor)
        device = f"cuda:{tensor.device.index}"
        if request.options.HasField("copy") and not request.options.copy:
            _check_alias(name, request.options, sources, device)
        lo, hi = _bounds(start, shape, strides, item)
        for view in list(self._cuda_views.values()):
            if view.start <= lo < view.start + max(view.length, 1):
                h = view.handle
                if (start, shape, strides) != (view.start + h.offset * item, tuple(h.shape),
                                               tuple(h.strides)) or name != h.dtype:
                    raise ValueError("a view of a CUDA result other than the result itself: pass "
                                     "the result, or a copy of the view")
                request.source.tensor_id = h.id
                return
        if self.remote:
            raise ValueError("CUDA memory reaches the server only on its host, by IPC handle; a "
                             "remote client sends host memory (.cpu())")
        # The server reads the memory once the call is in: what this process
        # queued on it must be done by then.
        torch.cuda.synchronize(tensor.device)
        ipc_handle, base = _cuda_export(lo, tensor.device.index)
        for dead in [k for k, (_, ref) in self._cuda_exports.items() if ref() is None]:
            del self._cuda_exports[dead]
        self._cuda_exports[ipc_handle] = (base, weakref.ref(tensor))
        array = request.source.cuda_ipc
        array.ipc_handle, array.device = ipc_handle, tensor.device.index
        array.offset, array.size = lo - base, hi - lo
        array.dtype = _DTYPES[name][0]
        array.layout.CopyFrom(pb.Layout(shape=shape, strides=strides, offset=(start - lo) // item))

    @staticmethod
    def _upload_messages(request, storage, dtype, layout):
        header = pb.ConvertUploadHeader(dtype=dtype, layout=layout, storage_size=len(storage),
                                        options=request.options)
        yield pb.ConvertUploadRequest(header=header)
        view = memoryview(storage)
        for start in range(0, len(storage), _CHUNK):
            yield pb.ConvertUploadRequest(data=bytes(view[start:start + _CHUNK]))

    def _region_holding(self, lo, hi):
        region = self._regions.get(lo)  # an array that starts its region, as empty() makes
        if region is not None and hi <= region.address + region.size:
            return region
        region = self._last_region() if self._last_region is not None else None
        if region is not None and region.address <= lo and hi <= region.address + region.size:
            return region  # the leaves of one tree share a region
        for region in list(self._regions.values()):
            end = region.address + region.size
            # An empty view holds nothing: its start may sit anywhere in the mapping.
            if region.address <= lo and (hi <= end if hi > lo else lo <= region.address + len(region.map)):
                self._last_region = weakref.ref(region)
                return region
        return None

    def _empty(self, shape, name, zero=False, hold=True):
        storage = _DTYPES[name][1]
        if self.remote:  # nothing to share with a server on another host
            return np.zeros(shape, dtype=storage)
        nbytes = int(np.prod(shape, dtype=np.int64)) * storage.itemsize
        memfd = self._local is not None
        region = self._pool.take(nbytes, memfd)
        if region is None and self._pool.has(nbytes, memfd) and (yield _SEND_PENDING):
            # The handles that kept a free region locked may be this
            # client's own, still queued: released now, it may be reused.
            region = self._pool.take(nbytes, memfd)
        if region is None:
            region = _Region(nbytes, memfd)  # fresh pages are zero
            self._regions[region.address] = region
        elif zero:
            ctypes.memset(region.address, 0, nbytes)
        arr = np.ndarray(shape, dtype=storage, buffer=region.map)
        arr.setflags(write=True)
        region.owner = weakref.ref(arr)
        region.held = None
        # `arr` is this allocation's own: every view of it keeps it (numpy
        # stops collapsing bases at the mapping, another type). The region
        # goes back to the pool when it is collected.
        _on_collect(arr, self._pool.give, region)
        if hold and region.memfd and nbytes:
            # Held by the server from the start, so that ref() of it needs no
            # call: the one call is made here, where torch.mp's
            # share_memory_() makes its file.
            region.held = yield from self._alias_on_server(
                region, 0, region.size, name, shape,
                tuple(s // storage.itemsize for s in arr.strides), 0, arr)
        return arr

    def _alias_on_server(self, region, offset, size, name, shape, strides, element_offset,
                         owner):
        """A TensorRef of the server's handle aliasing a view of memfd
        `region` (on this client's connection); its lease ends when `owner`
        is collected, or when this client closes."""
        request = pb.ConvertRequest()
        request.options.copy = False
        self._fill_fd_source(request.source.fd, 0, offset, size, name,
                             pb.Layout(shape=shape, strides=strides, offset=element_offset))
        try:
            response, received = yield from self._call("convert", request, [region.fd])
        except grpc.RpcError as e:
            raise self._error(e) from None
        _close_all(received)
        _on_collect(owner, self._releaser, response.handle.id)
        return TensorRef(response.handle.id, name, shape, strides)

    def _allocated(self, arr, name, like):
        """The array or tensor that empty(), zeros() or share() return; one
        the server holds is remembered, so that ref() of it costs nothing."""
        result = self._wrap(arr, name, like)
        region = self._regions.get(arr.ctypes.data)
        held = region.held if region is not None else None
        if held is not None:
            key, allocations = id(result), self._allocations
            # The entry goes with `result` (before its id can be reused).
            allocations[key] = (weakref.ref(result, lambda _: allocations.pop(key, None)), held)
        return result

    def _wrap(self, arr, name, like):
        if like == "numpy":
            return arr
        if torch is None:
            raise RuntimeError("torch is not installed; pass like='numpy'")
        if name == "bfloat16":  # numpy has no bfloat16; torch takes the bits as int16
            return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
        return torch.from_numpy(arr)

    def _map_all(self, handles, like, request_fds=(), received=()):
        """The arrays of the handles of one answer. A CUDA handle opens on its
        own; host memory (a descriptor, the request's own or one the answer
        brought, or a named segment) is mapped once a file for all of its
        handles, such as a batch's arena: handles whose bytes overlap (aliases
        of one region) get mappings of their own, so that handle() tells them
        apart. Whatever fails releases the handles not mapped yet."""
        results = [None] * len(handles)
        files = {}  # (st_dev, st_ino) or name -> [(index, location, descriptor)]
        file_of = {}  # descriptor -> its (st_dev, st_ino)
        unsettled = set(range(len(handles)))
        try:
            for i, handle in enumerate(handles):
                if handle.proto.HasField("cuda"):
                    unsettled.discard(i)  # _map_cuda releases it if it fails
                    results[i] = self._map_cuda(handle, like)
                    continue
                location, fd = self._location(handle, request_fds, received)
                if location.size == 0:  # nothing to map; the array alone holds the lease
                    results[i] = self._view(handle, like)
                    unsettled.discard(i)
                    continue
                key = location.name if fd is None else file_of.get(fd)
                if key is None:
                    st = os.fstat(fd)
                    key = file_of[fd] = (st.st_dev, st.st_ino)
                files.setdefault(key, []).append((i, location, fd))
            for members in files.values():
                for group in _disjoint(members):
                    lo = min(location.offset for _, location, _ in group)
                    hi = max(location.offset + location.size for _, location, _ in group)
                    _, location, fd = group[0]
                    mapping, start = self._mappings.open(location.name if fd is None else None,
                                                         lo, hi - lo, fd)
                    self._handles[mapping.address] = mapping
                    for i, location, _ in group:
                        results[i] = self._view(handles[i], like, mapping,
                                                start + location.offset - lo, location.size)
                        unsettled.discard(i)
        except BaseException:
            for i in unsettled:
                self._releaser(handles[i].id)
            raise
        return results

    @staticmethod
    def _location(handle, request_fds, received):
        """(location, descriptor or None) of a host handle's memory."""
        if handle.proto.HasField("fd"):
            location = handle.proto.fd
            held = request_fds if location.request_fd else received
            if location.fd_index >= len(held):
                raise RuntimeError(f"the handle names descriptor {location.fd_index} of "
                                   f"{len(held)}")
            return location, held[location.fd_index]
        location = handle.proto.shared_memory
        if not location.name:
            raise RuntimeError("the handle names no memory this process can map")
        return location, None

    def _view(self, handle, like, mapping=None, start=0, size=0):
        """The array of a handle: its `size` bytes at `start` in `mapping`,
        or none (an empty one) without a mapping."""
        storage = _DTYPES[handle.dtype][1]
        strides = [s * storage.itemsize for s in handle.strides]
        if mapping is None:
            arr = np.ndarray(handle.shape, dtype=storage, buffer=bytearray(0), strides=strides)
            _on_collect(arr, self._releaser, handle.id)
        else:
            arr = np.ndarray(handle.shape, dtype=storage, buffer=mapping.buffer,
                             offset=start + handle.offset * storage.itemsize, strides=strides)
            if not mapping.writable:
                arr.setflags(write=False)
            mapping.live[handle.id] = (handle, start, start + size)
            # `arr` is this handle's own: every view of it, numpy's or
            # torch's, keeps it (numpy stops collapsing bases at the mapping,
            # another type).
            _on_collect(arr, self._mappings.done, mapping, handle.id)
        return self._finish(self._wrap(arr, handle.dtype, like), handle, like)

    def _map_cuda(self, handle, like):
        """Opens a CUDA handle into a torch CUDA tensor viewing the server's
        allocation (no copy). Its collection closes the IPC mapping, then
        releases the lease."""
        if like == "numpy" or torch is None or not torch.cuda.is_available():
            self._releaser(handle.id)
            raise RuntimeError(
                f"the result is on {handle.proto.device}: opening it needs torch with CUDA in "
                "this process; use client.read() for its bytes, or like='torch'")
        location = handle.proto.cuda
        storage = _DTYPES[handle.dtype][1]
        if handle.dtype == "bfloat16":  # no bfloat16 in the interface: its bits as int16
            storage = np.dtype("<i2")
        own = self._cuda_exports.get(location.ipc_handle)
        owner = own[1]() if own is not None else None
        if owner is None:
            own = None
        try:
            # A process cannot open its own IPC handle: an alias of this
            # process's allocation views it where it is.
            base = own[0] if own is not None else _cuda_ipc_open(location.ipc_handle,
                                                                 location.device)
        except Exception:
            self._releaser(handle.id)
            raise
        view = _CudaView({
            "shape": tuple(handle.shape),
            "typestr": storage.str,
            "data": (base + location.offset + handle.offset * storage.itemsize, False),
            "strides": tuple(s * storage.itemsize for s in handle.strides),
            "version": 3,
        })
        view.handle = handle
        view.start, view.length = base + location.offset, location.size
        self._cuda_views[view.start] = view
        if own is not None:
            view.owner = owner  # the caller's tensor lives as long as the alias
            _on_collect(view, self._releaser, handle.id)
        else:
            _on_collect(view, _cuda_close_and_release, base, location.device, self._releaser,
                        handle.id)
        tensor = torch.as_tensor(view, device=f"cuda:{location.device}")  # keeps `view` alive
        if handle.dtype == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        return self._finish(tensor, handle, like)

    @staticmethod
    def _finish(result, handle, like):
        if handle.requires_grad and like != "numpy":
            result.requires_grad_(True)
        return result


_LIBC = ctypes.CDLL(None, use_errno=True)
_LIBC.mmap.restype = ctypes.c_void_p
_LIBC.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                       ctypes.c_int, ctypes.c_long]
_LIBC.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
_MAP_FAILED = ctypes.c_void_p(-1).value


class _Mapping:
    """One mapping of a handle's file (a named segment, or a memfd sent as a
    descriptor): a file of at most _POPULATE_MAX bytes whole (so that any
    later handle in it can reuse the mapping), a larger one from the page
    that holds the handle's bytes. `start`: where those bytes begin in the
    mapping; `buffer`: the bytes, which arrays view, unmapped once the last
    of them and this object are gone. It keeps no descriptor (Python's mmap
    would keep a duplicate open for as long as it lives); one it is given
    stays the caller's."""

    def __init__(self, name, offset, size, given_fd=None):
        if given_fd is not None:
            fd, writable = given_fd, True
        else:
            try:
                fd, writable = os.open("/dev/shm" + name, os.O_RDWR), True
            except PermissionError:
                fd, writable = os.open("/dev/shm" + name, os.O_RDONLY), False
        try:
            st = os.fstat(fd)
            whole = offset + size <= st.st_size <= _POPULATE_MAX
            base = 0 if whole else offset // mmap.PAGESIZE * mmap.PAGESIZE
            length = st.st_size if whole else offset - base + size
            # A small mapping is populated in the same call: one pass in the
            # kernel is cheaper than the page fault of the first read.
            flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if length <= _POPULATE_MAX else 0)
            prot = mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0)
            address = _LIBC.mmap(None, max(length, 1), prot, flags, fd, base)
            if address in (None, _MAP_FAILED):
                err = ctypes.get_errno()
                raise OSError(err, f"mapping {name or 'a memfd'}: {os.strerror(err)}")
        finally:
            if given_fd is None:
                os.close(fd)
        self.buffer = (ctypes.c_char * length).from_address(address)
        weakref.finalize(self.buffer, _LIBC.munmap, address, max(length, 1))
        self.name, self.length, self.start, self.reusable = name, length, offset - base, whole
        self.writable = writable
        self.file = (st.st_dev, st.st_ino, st.st_size)
        self.live = {}  # the live handles that view it: id -> (Handle, start, end)
        self.address = address if writable else 0

    def serves(self, offset, size):
        """Whether a handle of `size` bytes at `offset` can use this mapping."""
        return self.reusable and offset + size <= self.length


def _disjoint(members):
    """Handles of one file, (index, location, descriptor), in groups whose
    bytes do not overlap (first fit by offset: the fewest groups)."""
    groups, ends = [], []
    for member in sorted(members, key=lambda m: m[1].offset):
        begin, end = member[1].offset, member[1].offset + member[1].size
        for g, last in enumerate(ends):
            if last <= begin:
                groups[g].append(member)
                ends[g] = end
                break
        else:
            groups.append([member])
            ends.append(end)
    return groups


class _Mappings:
    """A client's mappings of handle segments. When the last view of a handle
    is collected, the mapping of a small segment stays, idle, for the next
    handle in the same segment, which then needs no open and no map: a
    consumer that converts the same producer buffer again and again maps it
    once. Idle mappings are found by file, not by name, since a producer's
    recycled region comes back under a new one. At most _IDLE_MAX stay; the
    oldest is unmapped off the caller's thread. An idle mapping keeps its
    segment's memory (at most _IDLE_MAX times _POPULATE_MAX bytes), not its
    name."""

    def __init__(self, releaser):
        self._releaser = releaser
        self._idle = collections.OrderedDict()  # (dev, inode, size) -> idle _Mapping
        self._lock = threading.RLock()  # done() may run from a collection under it

    def open(self, name, offset, size, fd=None):
        """(mapping, where the bytes at `offset` begin in it) of a named
        segment, or of the file behind descriptor `fd` (which stays open)."""
        mapping = None
        if self._idle:
            try:
                st = os.fstat(fd) if fd is not None else os.stat("/dev/shm" + name)
            except OSError:
                st = None  # the open below says why
            if st is not None:
                with self._lock:
                    mapping = self._idle.pop((st.st_dev, st.st_ino, st.st_size), None)
        if mapping is not None:
            if mapping.serves(offset, size):
                return mapping, offset
            self._releaser.unmap_later(mapping)
        mapping = _Mapping(name, offset, size, fd)
        return mapping, mapping.start

    def done(self, mapping, handle_id):
        """The handle's last view was collected: ends its lease, and keeps
        its mapping idle once no other live handle views it."""
        with self._lock:
            mapping.live.pop(handle_id, None)
            last = not mapping.live
        self._releaser(handle_id)
        if not last or not mapping.reusable:
            return  # others view it, or it is unmapped with its last reference
        with self._lock:
            evicted = [self._idle.pop(mapping.file, None)]
            self._idle[mapping.file] = mapping
            if len(self._idle) > _IDLE_MAX:
                evicted.append(self._idle.popitem(last=False)[1])
        for old in evicted:
            if old is not None and old is not mapping:
                self._releaser.unmap_later(old)


class _CudaView:
    """Device memory of an opened CUDA IPC handle, described for
    torch.as_tensor by __cuda_array_interface__; the tensor holds it."""

    start: int  # its device address, and bytes
    length: int
    handle: Handle

    def __init__(self, interface):
        self.__cuda_array_interface__ = interface


class _IpcHandle(ctypes.Structure):
    _fields_ = [("reserved", ctypes.c_ubyte * 64)]  # bytes, NULs included


_CUDART: list[ctypes.CDLL] = []


def _cudart():
    """The CUDA runtime torch loaded (the one whose context it uses)."""
    if not _CUDART:
        torch.cuda.init()
        paths = []
        with open("/proc/self/maps") as maps:
            paths = [line.split()[-1] for line in maps if "libcudart.so" in line]
        lib = None
        for name in paths + ["libcudart.so", "libcudart.so.13", "libcudart.so.12"]:
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if lib is None:
            raise RuntimeError("cannot find the CUDA runtime library to open CUDA IPC handles")
        lib.cudaIpcOpenMemHandle.argtypes = [ctypes.POINTER(ctypes.c_void_p), _IpcHandle,
                                             ctypes.c_uint]
        lib.cudaIpcCloseMemHandle.argtypes = [ctypes.c_void_p]
        lib.cudaIpcGetMemHandle.argtypes = [ctypes.POINTER(_IpcHandle), ctypes.c_void_p]
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        _CUDART.append(lib)
    return _CUDART[0]


def _cuda_ipc_open(ipc_handle, device):
    """Device address of another process's allocation, opened by IPC handle."""
    if len(ipc_handle) != 64:
        raise ValueError(f"a CUDA IPC handle holds 64 bytes, not {len(ipc_handle)}")
    lib = _cudart()
    ptr = ctypes.c_void_p()
    with torch.cuda.device(device):
        err = lib.cudaIpcOpenMemHandle(ctypes.byref(ptr), _IpcHandle.from_buffer_copy(ipc_handle), 1)
    if err != 0:
        raise RuntimeError(f"cudaIpcOpenMemHandle on cuda:{device}: "
                           f"{lib.cudaGetErrorString(err).decode()}")
    return ptr.value


def _cuda_driver():
    """The CUDA driver library, for the range of an allocation."""
    if not _CUDA_DRIVER:
        lib = ctypes.CDLL("libcuda.so.1")
        lib.cuMemGetAddressRange_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64),
                                                ctypes.POINTER(ctypes.c_size_t), ctypes.c_uint64]
        _CUDA_DRIVER.append(lib)
    return _CUDA_DRIVER[0]


_CUDA_DRIVER: list[ctypes.CDLL] = []


def _cuda_export(address, device):
    """(the 64-byte CUDA IPC handle, the base address) of the allocation of
    this process's that holds a device address (torch's caching allocator
    hands out parts of larger allocations)."""
    lib = _cudart()
    base, size = ctypes.c_uint64(), ctypes.c_size_t()
    handle = _IpcHandle()
    with torch.cuda.device(device):
        err = _cuda_driver().cuMemGetAddressRange_v2(ctypes.byref(base), ctypes.byref(size),
                                                     ctypes.c_uint64(address))
        if err != 0:
            raise RuntimeError(f"cuMemGetAddressRange on cuda:{device} failed (CUresult {err}): "
                               "the memory is not a CUDA allocation of this process")
        err = lib.cudaIpcGetMemHandle(ctypes.byref(handle), ctypes.c_void_p(base.value))
    if err != 0:
        raise RuntimeError(f"cudaIpcGetMemHandle on cuda:{device}: "
                           f"{lib.cudaGetErrorString(err).decode()} (memory from "
                           "cudaMallocAsync or expandable segments has no IPC handle)")
    return bytes(handle.reserved), base.value


def _cuda_close_and_release(base, device, releaser, handle_id):
    with torch.cuda.device(device):
        _cudart().cudaIpcCloseMemHandle(ctypes.c_void_p(base))
    releaser(handle_id)


def _encode_literal(value, nodes, depth=0, kinds=None, target=None):
    """Appends `value` to `nodes` in prefix order (see asarray.proto), as
    torch reads a sequence: an array in it is the sequence of its items, a
    tensor one number. `target`, the dtype asked for, says how a numpy
    scalar or a tensor is read (_read_as); without one, `kinds` gathers the
    dtype torch infers for each leaf (_leaf_kind), a tensor's its own."""
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            value = value[()]  # a numpy scalar, as torch reads a 0-d array in a list
        else:
            value = list(value)  # items as numpy scalars (rows of a matrix), as torch iterates
    node = nodes.add()
    if isinstance(value, (list, tuple, range)):
        if depth >= 64:
            raise ValueError("literal nests lists deeper than the maximum rank 64")
        node.list_length = len(value)
        for item in value:
            _encode_literal(item, nodes, depth + 1, kinds, target)
        return
    tensor = torch is not None and isinstance(value, torch.Tensor)
    if target is not None and (tensor or isinstance(value, np.generic)):
        value = _read_as(value, target)
    elif tensor:
        kinds = set() if kinds is None else kinds
        kinds.add(_dtype_name(value.dtype))
        value = value.item() if value.numel() == 1 else _read_as(value, _join(kinds))
    elif kinds is not None:
        kind = _leaf_kind(value)
        if kind is not None:
            kinds.add(kind)
    if isinstance(value, (bool, np.bool_)):
        node.bool_value = bool(value)
    elif isinstance(value, (int, np.integer)):
        if _INT64[0] <= int(value) <= _INT64[1]:
            node.int_value = int(value)
        else:
            node.not_a_number = f"the integer {int(value)}, which int64 cannot hold"
    elif isinstance(value, (float, np.floating)):
        node.float_value = float(value)
    elif isinstance(value, (complex, np.complexfloating)):
        node.complex_value.real, node.complex_value.imag = value.real, value.imag
    else:
        node.not_a_number = f"a {type(value).__name__} ({value!r:.40})"
