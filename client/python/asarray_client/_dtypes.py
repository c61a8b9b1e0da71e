"""The dtypes asarrayd supports, as the proto's DType declares them (the
one source: names, enum values, item sizes and torch's ScalarType names
are read from its descriptor): the numpy dtype each is stored as here
(bfloat16, which numpy lacks, as its uint16 bits), and torch's rules for
them (naming a dtype given any way, promotion)."""
import numpy as np

from asarray.v1 import asarray_pb2 as pb

from ._torch import torch


def _storage(name, item_size):
    """The numpy dtype an element of dtype `name` is held as here,
    little-endian as on the wire: numpy's own, or for bfloat16, which numpy
    lacks, its bits as an unsigned integer."""
    if name == "bfloat16":
        return np.dtype(f"<u{item_size}")
    # As np.dtype("<i2") makes it: in native order ("=") on a little-endian host.
    storage = np.dtype(np.dtype(name).newbyteorder("<").str)
    if storage.itemsize != item_size:
        raise ImportError(f"asarray.proto gives {name} {item_size} bytes an element, "
                          f"numpy {storage.itemsize}")
    return storage


def _read_proto():
    """({name: (proto enum, numpy storage)}, {name: ScalarType name}) of the
    DType values of the proto, read from its descriptor (see DType there)."""
    dtypes, scalar_types = {}, {}
    for value in pb.DType.DESCRIPTOR.values:
        if value.number == pb.DTYPE_UNSPECIFIED:
            continue
        name = value.name.removeprefix("DTYPE_").lower()
        options = value.GetOptions()
        dtypes[name] = (value.number, _storage(name, options.Extensions[pb.dtype_item_size]))
        scalar_types[name] = options.Extensions[pb.dtype_scalar_type]
    return dtypes, scalar_types


# name: (proto enum, numpy dtype of the storage); name: ScalarType name, as
# torch's messages print it.
_DTYPES, _SCALAR_TYPES = _read_proto()
_NAME_OF_ENUM = {enum: name for name, (enum, _) in _DTYPES.items()}
# bfloat16's storage, uint16, names no dtype: asarrayd has no uint16.
_NAME_OF_NUMPY = {storage: name for name, (_, storage) in _DTYPES.items() if name != "bfloat16"}


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

