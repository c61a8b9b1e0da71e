"""Trees: the dicts, lists, tuples and namedtuples, nested in any way, that
asarray_tree() and its kin take. A leaf is array-like (an array, a tensor,
a number, a reference this client made, or a list literal: a list of
numbers and of such lists, as torch.asarray takes it), or anything else,
which passes through as it is."""
import collections

import numpy as np

from ._refs import SharedArrayRef, TensorRef, TreeRef, ViewRef
from ._torch import torch


def _is_number(value):
    return isinstance(value, (bool, int, float, complex, np.number, np.bool_))


def _is_literal(value, depth=0):
    """Whether list `value` is a nested literal: numbers, and lists (or plain
    tuples) of them, all the way down. [] is one (torch makes it an empty
    tensor); a list that holds an array, a dict or a string is a container."""
    if depth > 64:
        return True  # past torch's rank; the encoder says so
    for item in value:
        if _is_number(item):
            continue
        if not (isinstance(item, list) or type(item) is tuple) or not _is_literal(item, depth + 1):
            return False
    return True


def _is_array_leaf(value):
    """An array-like leaf of a tree (see above)."""
    if isinstance(value, (np.ndarray, TensorRef, ViewRef, SharedArrayRef)) or _is_number(value):
        return True
    if torch is not None and isinstance(value, torch.Tensor):
        return True
    return isinstance(value, list) and _is_literal(value)


def _tree_leaves(node, path=""):
    """(key path, leaf) of every array-like leaf of a tree, in order. The key
    path is what indexes the leaf from the root: "['images'][0].labels"."""
    if isinstance(node, TreeRef):
        yield from _tree_leaves(node.tree, path)
    elif _is_array_leaf(node):
        yield path, node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _tree_leaves(value, f"{path}[{key!r}]")
    elif isinstance(node, tuple) and hasattr(node, "_fields"):
        for field, value in zip(node._fields, node):
            yield from _tree_leaves(value, f"{path}.{field}")
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            yield from _tree_leaves(value, f"{path}[{i}]")


def _tree_rebuild(node, values):
    """The tree `node` with its array-like leaves, in _tree_leaves' order,
    replaced by the next of `values`; containers are new ones of the same
    types (a TreeRef becomes its tree), other leaves stay."""
    if isinstance(node, TreeRef):
        return _tree_rebuild(node.tree, values)
    if _is_array_leaf(node):
        return next(values)
    if isinstance(node, dict):
        items = [(key, _tree_rebuild(value, values)) for key, value in node.items()]
        if type(node) is dict:
            return dict(items)
        if isinstance(node, collections.defaultdict):
            return collections.defaultdict(node.default_factory, items)
        try:
            return type(node)(items)
        except TypeError:
            return dict(items)
    if isinstance(node, tuple) and hasattr(node, "_fields"):
        return type(node)(*[_tree_rebuild(value, values) for value in node])
    if isinstance(node, (list, tuple)):
        items = [_tree_rebuild(value, values) for value in node]
        if type(node) in (list, tuple):
            return type(node)(items)
        try:
            return type(node)(items)
        except TypeError:
            return list(items) if isinstance(node, list) else tuple(items)
    return node
