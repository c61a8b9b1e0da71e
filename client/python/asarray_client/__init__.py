"""Python client of asarrayd: torch.asarray as a service, results mapped from
POSIX shared memory without a copy.

    from asarray_client import Client
    with Client() as client:
        t = client.asarray(numpy_array, dtype=torch.bfloat16)
"""
from .client import Client, Handle, SharedArrayRef
from .errors import (AsArrayError, AsArrayNotFoundError, AsArrayRuntimeError,
                     AsArrayTypeError, AsArrayValueError)

__all__ = ["Client", "Handle", "SharedArrayRef", "AsArrayError", "AsArrayValueError", "AsArrayTypeError",
           "AsArrayRuntimeError", "AsArrayNotFoundError"]
