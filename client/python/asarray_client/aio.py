"""asarray_client.aio.Client: asarray_client.Client for asyncio services.

The same methods, those that talk to the server as coroutines. Each is the
sync client's own code (its steps, see _steps.py) with every
call to the server awaited here instead of made on the calling thread: gRPC
through grpc.aio, and the local transport on non-blocking sockets that the
event loop watches. No call blocks the loop on a round trip, and any number
of coroutines may call at once (over the local transport, up to
_Local.MAX_CONNECTIONS of them in flight, each on a connection of its own).

Make the client in the event loop that uses it (grpc.aio binds a channel to
the loop it was made in):

    async with aio.Client() as client:
        t = await client.asarray(numpy_array, dtype=torch.bfloat16)

What does not call the server stays as it was: mappings, regions and the
releases of collected views, which a thread of the client sends (or the next
convert carries), so that dropping a result never waits on the loop.
"""
from __future__ import annotations

import asyncio
import socket
from typing import Any, Iterable, List, Sequence

import grpc
import grpc.aio

from asarray.v1 import asarray_pb2 as pb
from asarray.v1 import asarray_pb2_grpc as pb_grpc

from . import client as _client
from ._refs import Handle, TensorRef, TreeRef
from ._steps import _SEND_PENDING, _Drive, _LocalCall, _Rpc
from ._transport import _close_all, _Local, _LocalError, _pack_fds
from ._types import Array, Device, DTypeLike, Like, Ref, Result, Source, Target, Targets, Tree


class _AioLocal:
    """The local transport (see _Local) on the running event loop. A call
    takes an idle connection, or opens one while fewer than MAX_CONNECTIONS
    are busy (else waits for one), sends its datagram, and awaits the answer
    as the loop finds the socket readable. A call cancelled after its
    request left still gets its answer read, off the caller: its
    descriptors are closed and its handles released (`release`, with each
    id), and the connection then serves the next call. The connections stay
    open for the client's life: the handles made over them end when they
    close."""

    def __init__(self, path, release):
        self._path, self._release = path, release
        self._idle = []
        self._slots = asyncio.Semaphore(_Local.MAX_CONNECTIONS)
        self._closed = False

    async def call(self, request, fds=()):
        """(LocalResponse, received descriptors) of an OK answer, or None
        where the call goes over gRPC instead."""
        data = _Local.encode(request, fds)
        if data is None:
            return None
        sock = await self._acquire()
        loop = asyncio.get_running_loop()
        rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _pack_fds(fds))] if fds else []
        try:
            await _when_ready(loop.add_writer, loop.remove_writer, sock,
                              lambda: sock.sendmsg([data], rights))
        except OSError as e:
            self._lost(sock)
            raise _LocalError(grpc.StatusCode.UNAVAILABLE, f"local transport: {e}") from None
        except BaseException:  # cancelled before the request left
            self._put_back(sock)
            raise
        try:
            # Never there yet: the server has only just been woken.
            reply, ancillary, flags, _ = await _when_ready(
                loop.add_reader, loop.remove_reader, sock, lambda: _receive(sock), now=False)
        except OSError as e:
            self._lost(sock)
            raise _LocalError(grpc.StatusCode.UNAVAILABLE, f"local transport: {e}") from None
        except BaseException:
            loop.add_reader(sock, self._drain, loop, sock)
            raise
        if reply:
            self._put_back(sock)
        else:  # the server closed it
            self._lost(sock)
        return _Local.decode(reply, ancillary, flags)

    async def _acquire(self):
        await self._slots.acquire()
        if self._closed:
            self._slots.release()
            raise _LocalError(grpc.StatusCode.UNAVAILABLE, "the local transport is closed")
        if self._idle:
            return self._idle.pop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC |
                             socket.SOCK_NONBLOCK)
        try:
            await asyncio.get_running_loop().sock_connect(sock, self._path)
        except BaseException as e:
            self._lost(sock)
            if isinstance(e, OSError):
                raise _LocalError(grpc.StatusCode.UNAVAILABLE,
                                  f"local transport: {e}") from None
            raise
        return sock

    def _put_back(self, sock):
        if self._closed:
            sock.close()
        else:
            self._idle.append(sock)
        self._slots.release()

    def _lost(self, sock):
        sock.close()
        self._slots.release()

    def _drain(self, loop, sock):
        """Reads the answer of a call whose caller was cancelled."""
        try:
            reply, ancillary, flags, _ = _receive(sock)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            loop.remove_reader(sock)
            self._lost(sock)
            return
        loop.remove_reader(sock)
        try:
            response, received = _Local.decode(reply, ancillary, flags)
        except _LocalError:
            pass  # an error keeps nothing on the server
        else:
            _close_all(received)
            for handle_id in _made(response):
                self._release(handle_id)
        if reply:
            self._put_back(sock)
        else:
            self._lost(sock)

    def close(self):
        """Closes the idle connections now, and each busy one as its call ends."""
        self._closed = True
        idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()


def _receive(sock):
    return sock.recvmsg(_Local.MAX_MESSAGE, _Local.ANCILLARY)


def _made(response):
    """The ids of the handles an answer (a LocalResponse) made."""
    method = response.WhichOneof("method")
    if method == "convert":
        return [response.convert.handle.id]
    if method == "convert_batch":
        return [h.id for h in response.convert_batch.handles]
    return []


async def _when_ready(add, remove, sock, attempt, now=True):
    """What attempt() returns once the loop finds `sock` ready for it (`add`
    and `remove`: loop.add_reader and remove_reader, or the writer pair);
    tried at once first where `now`."""
    if now:
        try:
            return attempt()
        except (BlockingIOError, InterruptedError):
            pass
    done = asyncio.get_running_loop().create_future()

    def ready():
        if done.done():
            return
        try:
            done.set_result(attempt())
        except (BlockingIOError, InterruptedError):
            pass  # woken for nothing: wait on
        except Exception as e:
            done.set_exception(e)

    add(sock, ready)
    try:
        return await done
    finally:
        remove(sock)


class _AsyncIO:
    """Awaits steps on the running loop: over `local` (an _AioLocal, or
    None) and grpc.aio stub `stub`; _SEND_PENDING runs the blocking
    `releaser`.send_pending() in the loop's executor."""

    def __init__(self, local, stub, releaser):
        self.local, self.stub, self.releaser = local, stub, releaser

    async def perform(self, step):
        if step is _SEND_PENDING:
            return await asyncio.get_running_loop().run_in_executor(None,
                                                                    self.releaser.send_pending)
        if isinstance(step, _LocalCall):
            return None if self.local is None else await self.local.call(step.request, step.fds)
        call = getattr(self.stub, step.method)(step.request, **step.options)
        if step.method in _Rpc.STREAMED:
            return [message async for message in call]
        return await call


async def _run(io, steps):
    """What generator `steps` returns, each step awaited from `io` (see
    client._run_blocking, which performs them on a thread)."""
    drive = _Drive(steps)
    for step in drive:
        with drive.answering():
            drive.answer = await io.perform(step)
    return drive.value


class Client:
    """asarray_client.Client for asyncio: takes the same arguments, and has
    the same methods, as coroutines where they call the server (handle()
    and the properties call nothing). An async context manager; close()
    ends what the client holds on the server's connections."""

    def __init__(self, address: str | None = None, local: bool = True, named: bool = False,
                 **options: Any) -> None:
        # The sync client keeps the state (regions, mappings, the releases
        # of collected views, which its thread sends) and builds requests;
        # this one makes the calls.
        self._core = _client.Client(address, local, named, **options)
        self._channel = self._core._channel_config.open(grpc.aio)
        sync_local, transport = self._core._local, None
        if sync_local is not None:
            transport = _AioLocal(sync_local._path, self._core._releaser)
        self._io = _AsyncIO(transport, pb_grpc.AsArrayStub(self._channel),
                            self._core._releaser)

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._io.local is not None:
            self._io.local.close()  # the handles made over it end
        await self._channel.close()
        # The sync client's close() waits for the releases still on their way.
        await asyncio.get_running_loop().run_in_executor(None, self._core.close)

    @property
    def address(self) -> str:
        return self._core.address

    @property
    def remote(self) -> bool:
        return self._core.remote

    @property
    def local(self) -> bool:
        """Whether calls go over the local transport (memory as descriptors)."""
        return self._core.local

    async def flush(self) -> None:
        """Waits until the releases of collected views have reached the server."""
        await asyncio.get_running_loop().run_in_executor(None, self._core.flush)

    async def _call(self, steps):
        return await _run(self._io, steps)

    # Client's methods; their docstrings are Client's (set below).

    async def asarray(self, obj: Source, *, dtype: DTypeLike = None, device: Device = None,
                      copy: bool | None = None, requires_grad: bool = False,
                      like: Like = "torch") -> Result:
        return await self._call(self._core._asarray(obj, dtype, device, copy, requires_grad,
                                                    like))

    async def asarray_batch(self, objs: Iterable[Source], *,
                            dtype: DTypeLike | Sequence[DTypeLike] = None,
                            device: Device | Sequence[Device] = None,
                            copy: bool | Sequence[bool | None] | None = None,
                            requires_grad: bool | Sequence[bool] = False, like: Like = "torch",
                            keys: Sequence[object] | None = None) -> List[Result]:
        return await self._call(self._core._asarray_batch(objs, dtype, device, copy,
                                                          requires_grad, like, keys))

    async def asarray_tree(self, tree: Tree, *, dtype: DTypeLike = None, device: Device = None,
                           copy: bool | None = None, requires_grad: bool = False,
                           like: Like = "torch") -> Tree:
        return await self._call(self._core._asarray_tree(tree, dtype, device, copy,
                                                         requires_grad, like))

    async def share_tree(self, tree: Tree, like: Like | None = None) -> Tree:
        return await self._call(self._core._share_tree(tree, like))

    async def ref(self, array: Array | Tree, *, ttl_ms: int | None = None) -> Ref | TreeRef:
        return await self._call(self._core._ref(array, ttl_ms))

    async def share(self, array: Array, like: Like = "numpy") -> Result:
        return await self._call(self._core._share(array, like))

    async def empty(self, shape: Iterable[int], dtype: DTypeLike, like: Like = "torch") -> Result:
        return await self._call(self._core._new(shape, dtype, like, zero=False))

    async def zeros(self, shape: Iterable[int], dtype: DTypeLike, like: Like = "torch") -> Result:
        return await self._call(self._core._new(shape, dtype, like, zero=True))

    async def read(self, target: Target, like: Like = "numpy") -> Result:
        return await self._call(self._core._read(target, like))

    async def upload(self, obj: Source, *, dtype: DTypeLike = None, device: Device = None,
                     copy: bool | None = None, requires_grad: bool = False,
                     ttl_ms: int | None = None) -> TensorRef:
        return await self._call(self._core._upload(obj, dtype, device, copy, requires_grad,
                                                   ttl_ms))

    def handle(self, result: Array) -> Handle:
        return self._core.handle(result)

    async def release(self, target: Targets) -> None:
        await self._call(self._core._release(target))

    async def stats(self) -> pb.StatsResponse:
        return await self._call(self._core._stats())

    async def list(self) -> List[Handle]:
        return await self._call(self._core._list())

    async def renew(self, target: Targets, ttl_ms: int = 0) -> int | List[int]:
        return await self._call(self._core._renew(target, ttl_ms))


for _name in ("asarray", "asarray_batch", "asarray_tree", "share_tree", "ref", "share", "empty",
              "zeros", "read", "upload", "handle", "release", "stats", "list", "renew"):
    getattr(Client, _name).__doc__ = getattr(_client.Client, _name).__doc__
del _name
