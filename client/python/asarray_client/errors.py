"""Exceptions that mirror torch's, each carrying the gRPC status code."""
import grpc


class AsArrayError(Exception):
    """Base of every error the server reports; `code` is the grpc.StatusCode."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.details = message


class AsArrayValueError(AsArrayError, ValueError):
    """copy=False where a copy is needed (torch: ValueError), ragged literals."""


class AsArrayTypeError(AsArrayError, TypeError):
    """A value of the wrong kind: complex into a real dtype, a list where a number belongs."""


class AsArrayRuntimeError(AsArrayError, RuntimeError):
    """Overflow, requires_grad on an integer dtype, values that are not numbers, and the rest."""


class AsArrayNotFoundError(AsArrayError, KeyError):
    """An unknown, released or expired tensor id."""


_TYPE_ERRORS = ("cannot be stored in the real dtype", "where a number belongs",
                "where a list of length")
_RUNTIME_ERRORS = ("without overflow", "requires_grad", "literal holds")


def from_rpc_error(error: grpc.RpcError) -> AsArrayError:
    """The exception for a grpc.RpcError, chosen as torch would raise it."""
    code, message = error.code(), error.details() or ""
    if code == grpc.StatusCode.FAILED_PRECONDITION:
        return AsArrayValueError(code, message)
    if code == grpc.StatusCode.NOT_FOUND:
        return AsArrayNotFoundError(code, message)
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        if any(s in message for s in _TYPE_ERRORS):
            return AsArrayTypeError(code, message)
        if any(s in message for s in _RUNTIME_ERRORS):
            return AsArrayRuntimeError(code, message)
        return AsArrayValueError(code, message)
    return AsArrayRuntimeError(code, message)
