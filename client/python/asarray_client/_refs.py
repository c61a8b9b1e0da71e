"""What the server says about a tensor it holds (Handle), and the picklable
references to tensors and memory that one process hands another
(TensorRef, SharedArrayRef, ViewRef, TreeRef). Their public home is the
package: asarray_client.TensorRef, which is also where pickles name them."""
from __future__ import annotations

from typing import Iterable

from asarray.v1 import asarray_pb2 as pb

from ._dtypes import _NAME_OF_ENUM
from ._types import Tree


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


# Pickles name each class where callers import it from, whichever module
# defines it: a reference pickled here loads in any version of the client.
for _cls in (Handle, TensorRef, SharedArrayRef, TreeRef, ViewRef):
    _cls.__module__ = "asarray_client"
del _cls
