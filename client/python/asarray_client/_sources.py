"""The sources of a request: what torch.asarray makes of each object given
to asarray(), in its order of lookup, and how it goes to the server: by
reference (a held tensor, a view of one, a named segment), as a
descriptor of one of this client's regions, staged in one memfd with the
request's other heap bytes, inline, as an upload stream, as a literal, or
by CUDA IPC handle. A copy=False that torch refuses is refused in torch's
words."""
import ctypes

import grpc
import numpy as np

from asarray.v1 import asarray_pb2 as pb

from ._arrays import _as_numpy, _bounds, _describe
from ._dtypes import _DTYPES, _NAME_OF_ENUM, _SCALAR_TYPES, _dtype_name
from ._literal import _PYTHON_KINDS, _encode_literal, _join
from ._refs import SharedArrayRef, TensorRef, TreeRef, ViewRef
from ._torch import torch
from .errors import AsArrayValueError


_UPLOAD_THRESHOLD = 32 << 20
# A remote client streams past 4 MiB: a server's message limit may be small,
# and a message in flight over a network is best kept short.
_REMOTE_UPLOAD_THRESHOLD = 4 << 20
# Inline bytes past this go in a memfd over the local transport (a datagram
# holds 64 KiB with the rest of the request).
_LOCAL_INLINE_MAX = 60 << 10
_CHUNK = 1 << 20

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
    Convert only). fill() fills each source; then finish() makes the
    memfd, and `staged` keeps it until the answer is mapped. `remote`: the
    client's server is on another host; `regions`, `cuda`: the client's
    _Regions and _Cuda, where memory it sends may lie."""

    def __init__(self, local, uploads, remote, regions, cuda):
        self.local, self.uploads = local, uploads
        self._remote, self._client_regions, self._cuda = remote, regions, cuda
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

    def finish(self):
        """The steps that copy the staged bytes into a memfd of the client's."""
        if self._staging is None:
            return
        index, total, parts = self._staging
        staged, region = yield from self._client_regions.allocate(
            (total,), _DTYPES["uint8"][1], memfd=True, zero=False)
        base = staged.ctypes.data
        for offset, lo, nbytes, _ in parts:
            ctypes.memmove(base + offset, lo, nbytes)
        self.fds[index] = region.fd
        self.staged, self._staging = staged, None

    def fill(self, request, obj):
        """Fills request.source with `obj`, the descriptors it attaches going
        in `fds`, and its heap bytes in the staging memfd when they are
        staged; returns (storage bytes, dtype, layout) when the payload is
        large enough to stream instead (where uploads are allowed), else
        None."""
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
            if self._remote:
                raise ValueError("a SharedArrayRef names memory on the server's host, which a "
                                 "remote client cannot reach")
            shm = request.source.shared_memory
            shm.name, shm.offset, shm.size = obj.name, obj.offset, obj.size
            shm.dtype = _DTYPES[obj.dtype][0]
            shm.layout.CopyFrom(pb.Layout(shape=obj.shape, strides=obj.strides,
                                          offset=obj.element_offset))
            return None
        obj = _source_of(obj, request, self)
        if obj is None:  # a literal, encoded
            return None
        if torch is not None and isinstance(obj, torch.Tensor) and obj.is_cuda:
            described = _describe(obj)
            if request.options.HasField("copy") and not request.options.copy:
                _check_alias(described[4], request.options, self, f"cuda:{obj.device.index}")
            self._cuda.fill_source(request, obj, described, self._remote)
            return None
        keep = obj  # what holds the bytes until they are sent or staged
        start, shape, strides, item, name = _describe(obj)
        copy_false = request.options.HasField("copy") and not request.options.copy
        if copy_false:
            _check_alias(name, request.options, self)
        if strides is None:  # byte strides that are not whole elements
            keep = np.ascontiguousarray(_as_numpy(obj)[0])
            start, shape, strides, item, name = _describe(keep)
        lo, hi = _bounds(start, shape, strides, item)
        layout = pb.Layout(shape=shape, strides=strides, offset=(start - lo) // item)
        region = self._client_regions.holding(lo, hi)
        if region is not None and region.memfd:
            _fill_fd_source(request.source.fd, self.attach(region.fd),
                            min(lo - region.address, region.size), hi - lo, name, layout)
            return None
        if region is not None:
            shm = request.source.shared_memory
            shm.name, shm.size = region.name, hi - lo
            shm.offset = min(lo - region.address, region.size)
            shm.dtype = _DTYPES[name][0]
            shm.layout.CopyFrom(layout)
            return None
        if not copy_false and self.stages(hi - lo):
            # Too big for the datagram: the bytes go in a memfd of this
            # client's (one copy, as into a message) instead of over gRPC,
            # which would name the result in /dev/shm and give it a TTL lease.
            index, offset = self.stage(lo, hi - lo, keep)
            _fill_fd_source(request.source.fd, index, offset, hi - lo, name, layout)
            return None
        storage = ctypes.string_at(lo, hi - lo) if hi > lo else b""
        if self.uploads and len(storage) > (
                _REMOTE_UPLOAD_THRESHOLD if self._remote else _UPLOAD_THRESHOLD):
            return storage, _DTYPES[name][0], layout
        inline = request.source.inline_array
        inline.dtype = _DTYPES[name][0]
        inline.layout.CopyFrom(layout)
        inline.storage = storage
        return None


def _fill_options(options, dtype, device, copy, requires_grad):
    name = _dtype_name(dtype)
    if name is not None:
        options.dtype = _DTYPES[name][0]
    if device is not None:
        options.device = str(device)
    if copy is not None:
        options.copy = bool(copy)
    options.requires_grad = bool(requires_grad)


def _fill_fd_source(fd, index, offset, size, name, layout):
    fd.fd_index, fd.offset, fd.size = index, offset, size
    fd.dtype = _DTYPES[name][0]
    fd.layout.CopyFrom(layout)


def _upload_messages(request, storage, dtype, layout):
    header = pb.ConvertUploadHeader(dtype=dtype, layout=layout, storage_size=len(storage),
                                    options=request.options)
    yield pb.ConvertUploadRequest(header=header)
    view = memoryview(storage)
    for start in range(0, len(storage), _CHUNK):
        yield pb.ConvertUploadRequest(data=bytes(view[start:start + _CHUNK]))


# torch.asarray (PyTorch 2.x) looks, in this order, for a tensor; a numpy
# array or scalar; a DLPack capsule; the buffer protocol; then, refusing
# copy=False from here on, __cuda_array_interface__, __dlpack__ and a
# sequence. _source_of() follows that order, and takes __array_interface__
# (an object numpy views) before the sequence.

_CUDA_SOURCE = ("CUDA memory (a CUDA tensor, DLPack capsule or __cuda_array_interface__) is sent "
                "by its CUDA IPC handle, which needs torch with CUDA in this process")

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
