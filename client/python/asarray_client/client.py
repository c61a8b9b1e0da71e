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
the last numpy array or torch tensor viewing that mapping is garbage-collected
(see _releases). Regions made by share(), empty() and zeros() belong to this
process, and are reused once no handle in any process aliases them (see
_regions).

Batches: asarray_batch() and asarray_tree() convert many array-likes in one
ConvertBatch call, all or nothing. Their sources attach each descriptor once;
heap arrays too big for the datagram go together into one staging memfd; the
copies the server makes come back in one arena (one file), which the client
maps once for all of its handles. share_tree() copies a tree's arrays into
one region, and ref() of a tree gives a picklable TreeRef of tensors the
server holds under TTL leases, which another process takes in one call.

Client composes the parts, each a module of its own: _transport (the
channel and the local transport), _steps (calls written once for the sync
and the asyncio client), _sources (what a request sends), _regions (memory
it shares), _mappings and _cuda (the results' memory), _releases (the ends
of leases), _refs (handles and references), and what they build on:
_dtypes, _arrays, _literal and _trees.
"""
from __future__ import annotations

from typing import Any, Generator, Iterable, List, Sequence

import grpc
import numpy as np

from asarray.v1 import asarray_pb2 as pb
from asarray.v1 import asarray_pb2_grpc as pb_grpc

from ._arrays import _as_numpy, _bounds, _describe, _from_bytes, _is_array, _view_bounds, _wrap
from ._cuda import _Cuda
from ._dtypes import _DTYPES, _NAME_OF_ENUM, _dtype_name
from ._mappings import _Mappings
from ._refs import Handle, SharedArrayRef, TensorRef, TreeRef, ViewRef
from ._regions import _copy_into, _Regions
from ._releases import _on_collect, _release_sender, _release_steps, _Releaser, _unique
from ._sources import _aligned, _fill_fd_source, _fill_options, _Sources, _upload_messages
from ._steps import _BlockingIO, _LocalCall, _Rpc, _run_blocking
from ._torch import torch
from ._transport import _ChannelConfig, _close_all, _Local, _LocalError, default_socket_path
from ._trees import _is_number, _tree_leaves, _tree_rebuild
from ._types import (Array, Device, DTypeLike, Like, Pem, Ref, Result, Source, Target, Targets,
                     Tree)
from .errors import from_rpc_error

__all__ = ["Client", "Handle", "SharedArrayRef", "TensorRef", "TreeRef", "ViewRef",
           "default_socket_path"]


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
        self._timeout, self._stream_timeout = timeout, stream_timeout
        self._compression = grpc.Compression.Gzip if compression else None
        # aio.Client's channel has the same configuration.
        self._channel_config = _ChannelConfig(self.address, self.remote, root_certificates,
                                              certificate_chain, private_key, retries,
                                              keepalive_ms)
        self._channel = self._channel_config.open(grpc)
        self._stub = pb_grpc.AsArrayStub(self._channel)
        unix = self.address.startswith("unix:") and not self.address.startswith("unix:@")
        self._local = None
        if local and not named and unix:
            try:
                self._local = _Local(self.address[5:] + ".local")
            except OSError:
                pass  # no local transport there: gRPC alone
        self._releaser = _Releaser(_release_sender(self._local, self._stub))
        self._regions = _Regions()
        self._mappings = _Mappings(self._releaser)
        self._cuda = _Cuda(self._releaser)
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
        yield from sources.finish()
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
        return _wrap(arr, view.dtype, like)

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
        picked = [(i, _as_numpy(leaf)) for i, leaf in enumerate(leaves)
                  if _is_array(leaf) or isinstance(leaf, (np.number, np.bool_))]
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
                leaves[i] = _wrap(out, name, kind)
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
        if not _is_array(array):
            return (yield from self._ref_tree(array, ttl_ms))
        if ttl_ms is not None:
            raise TypeError("ttl_ms is for a tree; renew(ref, ttl_ms) gives an array's "
                            "reference a TTL lease")
        if self.remote:
            raise ValueError("a remote client shares no memory with the server; "
                             "upload() keeps a tensor there and returns its TensorRef")
        known = self._regions.allocation(array)
        if known is not None:
            return known  # returned by empty(), zeros() or share() as it is
        start, shape, strides, item, name = _describe(array)
        lo, hi = _bounds(start, shape, strides, item)
        region = self._regions.holding(lo, hi)
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
        arr, name = _as_numpy(array)
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
        yield from sources.finish()
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
            handle = self._cuda.handle_of(result.data_ptr())
        else:
            handle = self._mappings.handle_of(_view_bounds(_as_numpy(result)[0])[0])
        if handle is None:
            raise KeyError("not a result of this client")
        return handle

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
    # The methods that yield are generators of steps (see _steps).

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
        """(ConvertRequest, _Sources, upload) of one conversion (see _Sources.fill)."""
        request = pb.ConvertRequest()
        _fill_options(request.options, dtype, device, copy, requires_grad)
        sources = self._sources(self._local is not None, uploads=True)
        return request, sources, sources.fill(request, obj)

    def _sources(self, local, uploads):
        """The _Sources of a new request (over the local transport where `local`)."""
        return _Sources(local, uploads, self.remote, self._regions, self._cuda)

    def _convert_upload(self, request, upload):
        return self._rpc("ConvertUpload", _upload_messages(request, *upload),
                         stream=True, data=True)

    def _error(self, e, sources=None):
        """The exception for a grpc.RpcError (a refusal of copy=False that
        `sources` recorded in torch's words); an UNAVAILABLE one over TCP also
        says what this client expected of the connection."""
        error = from_rpc_error(e) if sources is None else sources.in_torch_words(from_rpc_error(e))
        if e.code() != grpc.StatusCode.UNAVAILABLE or not self.remote:
            return error
        hint = self._channel_config.unavailable_hint()
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
        return _from_bytes(response.data, handle, like, handle.requires_grad)

    def _stream(self, method, request, like, requires_grad):
        """A new array of the ReadResponse stream of `method` (Read,
        ConvertToData)."""
        try:
            messages = yield self._rpc(method, request, stream=True)
        except grpc.RpcError as e:
            raise self._error(e) from None
        handle = Handle(messages[0].handle)
        return _from_bytes(bytearray().join(m.data for m in messages), handle, like,
                                requires_grad or handle.requires_grad)

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
        sources = self._sources(self._local is not None, uploads=False)
        request = self._batch_request(objs, options, keys, sources)
        if sources.local and sources.fds and request.ByteSize() + 8 > _Local.MAX_MESSAGE:
            if sources.regions:
                raise self._error(_LocalError(
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                    f"a batch of {n} items that names this client's regions takes "
                    f"{request.ByteSize()} bytes, past the local transport's "
                    f"{_Local.MAX_MESSAGE}: convert fewer at a time"))
            # Nothing of ours to name: every item inline, over gRPC.
            sources = self._sources(False, uploads=False)
            request = self._batch_request(objs, options, keys, sources)
        if ttl_ms is not None:
            request.ttl_ms = int(ttl_ms)
        yield from sources.finish()
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
                _fill_options(item.options, *item_options)
                sources.fill(item, obj)
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
            return self._mappings.map_all(handles, like, sources.fds, received, self._cuda.open)
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
                where = self._place_in_region(leaf) if _is_array(leaf) else None
                if where is None:
                    placed.append((len(objs), None))
                    objs.append(leaf)
                    copies.append(True if _is_array(leaf) else None)
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

    def _place_in_region(self, obj):
        """(region, (lo, hi, start, shape, strides, dtype name, item size)) of
        an array or tensor in a memfd region of this client's, else None."""
        try:
            start, shape, strides, item, name = _describe(obj)
        except (TypeError, NotImplementedError):
            return None
        if strides is None:
            return None
        lo, hi = _bounds(start, shape, strides, item)
        region = self._regions.holding(lo, hi)
        if region is None or not region.memfd:
            return None
        return region, (lo, hi, start, shape, strides, name, item)

    def _empty(self, shape, name, zero=False, hold=True):
        storage = _DTYPES[name][1]
        if self.remote:  # nothing to share with a server on another host
            return np.zeros(shape, dtype=storage)
        arr, region = yield from self._regions.allocate(shape, storage, self._local is not None,
                                                        zero)
        if hold and region.memfd and arr.nbytes:
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
        _fill_fd_source(request.source.fd, 0, offset, size, name,
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
        result = _wrap(arr, name, like)
        self._regions.remember(result, arr)
        return result
