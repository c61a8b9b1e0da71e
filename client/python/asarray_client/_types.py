"""Type aliases of the public API, for annotations: the modules that use them
import annotations lazily (from __future__ import annotations), so torch
need not be installed for them."""
import os
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch

    from ._refs import Handle, SharedArrayRef, TensorRef, TreeRef, ViewRef

# What a result is returned as: a torch tensor, or a numpy array.
Like = Literal["torch", "numpy"]
# An array or tensor given to a call.
Array = Union[np.ndarray, "torch.Tensor"]
# A result: a torch tensor, or with like="numpy" a numpy array. Which one
# depends on the value of `like`, so it is Any: callers need not narrow it.
Result = Any
# torch.float32, np.float32, "float32", "torch.float32", ...; None: the source's.
DTypeLike = Union[npt.DTypeLike, "torch.dtype"]
# "cpu", "cuda", "cuda:1", a torch.device; None: the source's.
Device = Union[str, "torch.device", None]
# What asarray() converts: numpy arrays and scalars, CPU tensors, Python
# numbers and nested lists of them, and this client's references. Checked
# when the call is made, so any object is taken here.
Source = object
# A tree of sources (dicts, lists, tuples, namedtuples), or a TreeRef.
Tree = Any
# A reference another process's asarray() takes.
Ref = Union["TensorRef", "ViewRef", "SharedArrayRef"]
# A held tensor: its id, Handle or reference, or a result of asarray().
Target = Union[str, "Handle", "TensorRef", "ViewRef", Array]
# Targets, all in one call: a TreeRef, or lists, tuples and dicts of targets.
Targets = Union[Target, "TreeRef", list[Any], tuple[Any, ...], dict[Any, Any]]
# PEM bytes or text, or the path of a file that holds them.
Pem = Union[bytes, str, "os.PathLike[str]", None]
