"""Python client of asarrayd: torch.asarray as a service, results mapped
without a copy (memfds sent over the local transport, or POSIX shared memory
over gRPC).

    from asarray_client import Client
    with Client() as client:
        t = client.asarray(numpy_array, dtype=torch.bfloat16)

For asyncio, asarray_client.aio.Client has the same methods as coroutines.
"""
from . import aio
from ._refs import Handle, SharedArrayRef, TensorRef, TreeRef, ViewRef
from .client import Client
from .errors import (AsArrayError, AsArrayNotFoundError, AsArrayRuntimeError,
                     AsArrayTypeError, AsArrayValueError)

__all__ = ["Client", "Handle", "SharedArrayRef", "TensorRef", "TreeRef", "ViewRef", "AsArrayError",
           "AsArrayValueError", "AsArrayTypeError", "AsArrayRuntimeError", "AsArrayNotFoundError",
           "aio"]
