"""Literals: nested sequences of numbers (Python's, numpy scalars and
arrays, one-element tensors) encoded for the request in prefix order (see
Literal in the proto), read as torch.asarray reads a sequence, with the
dtype torch would infer for them."""
import operator

import numpy as np

from ._dtypes import _category, _dtype_name, _promote
from ._torch import torch

_INT64 = (-(1 << 63), (1 << 63) - 1)
# What torch infers for a Python bool, int, float and complex, as the server does.
_PYTHON_KINDS = {"bool": "bool", "int": "int64", "float": "float32", "complex": "complex64"}


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


def _leaf_kind(value):
    """The dtype torch infers for a number of a literal: a numpy scalar's
    own, a Python number's by its type; None for anything else."""
    if isinstance(value, np.generic):
        return _dtype_name(value.dtype)
    for python in (bool, int, float, complex):  # bool first: it is an int
        if isinstance(value, python):
            return _PYTHON_KINDS[python.__name__]
    return None

