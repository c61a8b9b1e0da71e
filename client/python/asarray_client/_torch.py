"""torch where it is installed, else None: the client's one optional
dependency, imported here once. Without it results come as numpy arrays
(like="numpy") and sources are numpy arrays, buffers and literals."""
try:
    import torch
except ImportError:  # numpy-only use
    torch = None

__all__ = ["torch"]
