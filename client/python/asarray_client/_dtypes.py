"""The dtypes asarrayd supports: their names as torch spells them, their
proto enum values, the numpy dtype each is stored as here (bfloat16, which
numpy lacks, as its uint16 bits), torch's ScalarType names, and torch's
rules for them (naming a dtype given any way, promotion)."""
import numpy as np

from asarray.v1 import asarray_pb2 as pb

from ._torch import torch

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
# ScalarType names, as torch's messages print them.
_SCALAR_TYPES = {"bool": "Bool", "uint8": "Byte", "int8": "Char", "int16": "Short",
                 "int32": "Int", "int64": "Long", "float16": "Half", "bfloat16": "BFloat16",
                 "float32": "Float", "float64": "Double", "complex64": "ComplexFloat",
                 "complex128": "ComplexDouble"}


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

