"""Arrays and tensors as memory: the numpy view of a tensor's storage and
back (bfloat16 as its uint16 bits), where an array's element 0 is, its
strides in elements, the bytes it touches, and a new array of a result's
bytes."""
import numpy as np

from ._dtypes import _DTYPES, _dtype_name
from ._torch import torch

_OTHER_DEVICE = "memory on {} is not a source this client sends: move it to the CPU first"


def _is_array(obj):
    return isinstance(obj, np.ndarray) or (torch is not None and isinstance(obj, torch.Tensor))


def _as_numpy(obj):
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


def _wrap(arr, name, like):
    """The result of numpy storage `arr` of dtype `name`: itself, or with
    like="torch" a tensor viewing it."""
    if like == "numpy":
        return arr
    if torch is None:
        raise RuntimeError("torch is not installed; pass like='numpy'")
    if name == "bfloat16":  # numpy has no bfloat16; torch takes the bits as int16
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


def _finish(result, handle, like):
    """`result`, requiring grad where its handle says so."""
    if handle.requires_grad and like != "numpy":
        result.requires_grad_(True)
    return result


def _describe(obj):
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
    arr, name = _as_numpy(obj)
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


def _contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _from_bytes(data, handle, like, requires_grad):
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
    result = _wrap(arr, handle.dtype, like)
    if requires_grad and like != "numpy":
        result.requires_grad_(True)
    return result
