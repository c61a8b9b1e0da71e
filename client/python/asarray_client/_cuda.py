"""CUDA memory, by CUDA IPC handle: results on a GPU opened into torch
tensors that view the server's allocation, and this process's own CUDA
tensors sent as sources by the IPC handle of their allocation. The CUDA
runtime is torch's own (found in this process), loaded on first use."""
from __future__ import annotations

import ctypes
import weakref
from typing import Any, Callable

import numpy as np

from asarray.v1 import asarray_pb2 as pb

from ._arrays import _bounds, _finish
from ._dtypes import _DTYPES
from ._refs import Handle
from ._releases import _on_collect
from ._torch import torch


class _Cuda:
    """A client's CUDA memory: the results it opened, by device address
    (for handle(), and to send one back by id), and the allocations of this
    process it exported as sources, by IPC handle (a result that aliases
    one views it where it is: a process cannot open its own IPC handle).
    Collected results close their IPC mapping, then end their lease with
    `releaser`."""

    def __init__(self, releaser: Callable[[str], None]) -> None:
        self._releaser = releaser
        # device address -> _CudaView
        self._views: weakref.WeakValueDictionary[int, _CudaView] = weakref.WeakValueDictionary()
        # IPC handle -> (base address, weak reference to a tensor in it) of
        # this process's allocations sent as sources (see fill_source).
        self._exports: dict[bytes, tuple[int, Any]] = {}

    def handle_of(self, address):
        """The Handle of the opened result whose memory holds device
        `address`, or None."""
        for view in list(self._views.values()):
            if view.start <= address < view.start + max(view.length, 1):
                return view.handle
        return None

    def fill_source(self, request, tensor, described, remote):
        """Fills request.source with CUDA tensor `tensor` (`described` by
        _describe()): the tensor a CUDA result of this client's is, by id;
        else its allocation, by a CUDA IPC handle this process exports (the
        server aliases it, or copies from it on the device), which a
        `remote` client cannot send."""
        start, shape, strides, item, name = described
        lo, hi = _bounds(start, shape, strides, item)
        for view in list(self._views.values()):
            if view.start <= lo < view.start + max(view.length, 1):
                h = view.handle
                if (start, shape, strides) != (view.start + h.offset * item, tuple(h.shape),
                                               tuple(h.strides)) or name != h.dtype:
                    raise ValueError("a view of a CUDA result other than the result itself: pass "
                                     "the result, or a copy of the view")
                request.source.tensor_id = h.id
                return
        if remote:
            raise ValueError("CUDA memory reaches the server only on its host, by IPC handle; a "
                             "remote client sends host memory (.cpu())")
        # The server reads the memory once the call is in: what this process
        # queued on it must be done by then.
        torch.cuda.synchronize(tensor.device)
        ipc_handle, base = _cuda_export(lo, tensor.device.index)
        for dead in [k for k, (_, ref) in self._exports.items() if ref() is None]:
            del self._exports[dead]
        self._exports[ipc_handle] = (base, weakref.ref(tensor))
        array = request.source.cuda_ipc
        array.ipc_handle, array.device = ipc_handle, tensor.device.index
        array.offset, array.size = lo - base, hi - lo
        array.dtype = _DTYPES[name][0]
        array.layout.CopyFrom(pb.Layout(shape=shape, strides=strides, offset=(start - lo) // item))


    def open(self, handle, like):
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
        own = self._exports.get(location.ipc_handle)
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
        self._views[view.start] = view
        if own is not None:
            view.owner = owner  # the caller's tensor lives as long as the alias
            _on_collect(view, self._releaser, handle.id)
        else:
            _on_collect(view, _cuda_close_and_release, base, location.device, self._releaser,
                        handle.id)
        tensor = torch.as_tensor(view, device=f"cuda:{location.device}")  # keeps `view` alive
        if handle.dtype == "bfloat16":
            tensor = tensor.view(torch.bfloat16)
        return _finish(tensor, handle, like)


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
