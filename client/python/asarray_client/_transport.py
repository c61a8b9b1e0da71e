"""How a client reaches asarrayd: the default address (as the proto says),
the gRPC channel's configuration (retries, keepalive, TLS, and what a
refused connection says about them), and the local transport:
SOCK_SEQPACKET connections to the socket beside the server's Unix one,
LocalRequest datagrams with file descriptors passed as SCM_RIGHTS (see
LocalRequest in the proto)."""
import json
import os
import socket
import threading

import grpc
import numpy as np

from asarray.v1 import asarray_pb2 as pb

from ._types import Pem

# Retries on UNAVAILABLE, with backoff, of the calls that are safe to repeat.
_RETRY_SERVICE_CONFIG = json.dumps({"methodConfig": [{
    "name": [{"service": "asarray.v1.AsArray", "method": m}
             for m in ("Read", "ConvertToData", "Renew", "List", "Stats")] +
            [{"service": "grpc.health.v1.Health", "method": "Check"}],
    "retryPolicy": {"maxAttempts": 4, "initialBackoff": "0.1s", "maxBackoff": "2s",
                    "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]},
}]})


def default_socket_path() -> str:
    """The socket asarrayd listens on by default: the rule and the paths
    are the proto's (see default_socket_in_runtime_dir there), which the
    server reads too."""
    options = pb.DESCRIPTOR.GetOptions().Extensions
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    if runtime.startswith("/"):
        return f"{runtime}/{options[pb.default_socket_in_runtime_dir]}"
    return options[pb.default_socket_otherwise].replace("{uid}", str(os.geteuid()))


def _pem(value):
    """PEM bytes: given as bytes or str of PEM, or as a file's path."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str) and value.lstrip().startswith("-----BEGIN"):
        return value.encode()
    with open(value, "rb") as f:
        return f.read()



class _ChannelConfig:
    """How a client's gRPC channels reach `address` ("unix:/path" or
    "host:port"; `remote` for the latter): their options and credentials
    (see Client for the arguments), for open() to make a channel of the
    sync or the asyncio gRPC API."""

    def __init__(self, address: str, remote: bool, root_certificates: Pem,
                 certificate_chain: Pem, private_key: Pem, retries: bool,
                 keepalive_ms: int) -> None:
        self.address = address
        options: list[tuple[str, object]] = [("grpc.max_receive_message_length", -1),
                                              ("grpc.max_send_message_length", -1)]
        if retries:
            options += [("grpc.enable_retries", 1),
                        ("grpc.service_config", _RETRY_SERVICE_CONFIG)]
        if keepalive_ms:
            options += [("grpc.keepalive_time_ms", int(keepalive_ms)),
                        ("grpc.keepalive_timeout_ms", 20000),
                        ("grpc.keepalive_permit_without_calls", 1),
                        ("grpc.http2.max_pings_without_data", 0)]
        pems = [_pem(v) for v in (root_certificates, private_key, certificate_chain)]
        self._tls = any(v is not None for v in pems)
        self._client_certificate = pems[2] is not None
        if self._tls:
            if not remote:
                raise ValueError("TLS is for TCP addresses; a Unix socket needs none")
            if (pems[1] is None) != (pems[2] is None):
                raise ValueError("a client certificate needs its private key, and the reverse")
            self._trust = "the system's roots" if root_certificates is None else (
                root_certificates if isinstance(root_certificates, (str, os.PathLike))
                else "root_certificates")
            credentials = grpc.ssl_channel_credentials(*pems)
        else:
            credentials = None
        self._credentials, self._options = credentials, options

    def open(self, module):
        """A channel of `module` (grpc, or grpc.aio) to the address, with TLS
        when there are credentials."""
        if self._credentials is None:
            return module.insecure_channel(self.address, options=self._options)
        return module.secure_channel(self.address, self._credentials, options=self._options)

    def unavailable_hint(self):
        """What an UNAVAILABLE call over TCP says: what this client expected
        of the connection."""
        if self._tls:
            hint = (f"TLS to {self.address}: the server must speak TLS with a certificate "
                    f"that {self._trust} trusts, for this host name")
            hint += ("; a server that requires client certificates needs certificate_chain "
                     "and private_key" if not self._client_certificate else
                     ", and accept this client's certificate")
        else:
            hint = (f"plaintext TCP to {self.address}: a server that serves TLS there closes "
                    "the connection; give root_certificates to connect with TLS")
        return hint


_CODES = {code.value[0]: code for code in grpc.StatusCode}


class _LocalError(grpc.RpcError):
    """An error answer of the local transport, shaped like gRPC's."""

    def __init__(self, code, details):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self):
        return self._code

    def details(self):
        return self._details


class _Local:
    """asarrayd's local transport: SOCK_SEQPACKET connections to the socket
    beside its gRPC one, one LocalRequest datagram each way with file
    descriptors beside it (see LocalRequest in the proto), which costs a
    fraction of a gRPC round trip. Calls from several threads run at once,
    each on a connection of its own (at most MAX_CONNECTIONS; beyond that a
    call waits for one). The connections stay open for the client's life:
    the handles made over them end when they close. call() answers None
    where the call should go over gRPC instead: a request too big for a
    datagram that carries no descriptors."""

    MAX_MESSAGE = 64 << 10
    MAX_FDS = 16
    MAX_CONNECTIONS = 4
    ANCILLARY = socket.CMSG_SPACE(MAX_FDS * 4)  # room for an answer's descriptors

    def __init__(self, path):
        self._path = path
        self._cv = threading.Condition()
        self._idle = [self._connect()]  # OSError: no local transport there
        self._open = 1
        self._closed = False

    def _connect(self):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET | socket.SOCK_CLOEXEC)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        return sock

    def _acquire(self):
        with self._cv:
            while not self._idle and self._open >= self.MAX_CONNECTIONS and not self._closed:
                self._cv.wait()
            if self._closed:
                raise _LocalError(grpc.StatusCode.UNAVAILABLE, "the local transport is closed")
            if self._idle:
                return self._idle.pop()
            self._open += 1
        try:
            return self._connect()
        except OSError as e:
            self._lost()
            raise _LocalError(grpc.StatusCode.UNAVAILABLE, f"local transport: {e}") from None

    def _give_back(self, sock):
        with self._cv:
            if self._closed:
                sock.close()
                self._open -= 1
            else:
                self._idle.append(sock)
            self._cv.notify()

    def _lost(self):
        with self._cv:
            self._open -= 1
            self._cv.notify()

    def call(self, request, fds=()):
        """(LocalResponse, received descriptors) of an OK answer, or None."""
        data = self.encode(request, fds)
        if data is None:
            return None
        sock = self._acquire()
        try:
            if fds:
                sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _pack_fds(fds))])
            else:
                sock.send(data)
            reply, ancillary, flags, _ = sock.recvmsg(self.MAX_MESSAGE, self.ANCILLARY)
        except OSError as e:
            sock.close()
            self._lost()
            raise _LocalError(grpc.StatusCode.UNAVAILABLE, f"local transport: {e}") from None
        if reply:
            self._give_back(sock)
        else:  # the server closed it
            sock.close()
            self._lost()
        return self.decode(reply, ancillary, flags)

    @classmethod
    def encode(cls, request, fds):
        """The datagram of LocalRequest `request` with descriptors `fds`, or
        None where the call goes over gRPC instead."""
        if len(fds) > cls.MAX_FDS:
            raise _LocalError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                              f"a request with {len(fds)} descriptors is past the local "
                              f"transport's {cls.MAX_FDS}")
        data = request.SerializeToString()
        if len(data) > cls.MAX_MESSAGE:
            if fds:
                raise _LocalError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                  f"a request of {len(data)} bytes with descriptors is past "
                                  f"the local transport's {cls.MAX_MESSAGE}")
            return None
        return data

    @staticmethod
    def decode(reply, ancillary, flags):
        """(LocalResponse, received descriptors) of an answer's datagram (b""
        where the server closed the connection), as recvmsg() gave it. An
        error raises _LocalError, and closes what came with it."""
        received = _unpack_fds(ancillary)
        if not reply:
            _close_all(received)
            raise _LocalError(grpc.StatusCode.UNAVAILABLE,
                              "local transport: the server closed the connection")
        if flags & socket.MSG_CTRUNC:
            _close_all(received)
            raise _LocalError(grpc.StatusCode.INTERNAL,
                              "local transport: the answer's descriptors were cut short")
        response = pb.LocalResponse.FromString(reply)
        if response.code != 0:
            _close_all(received)
            raise _LocalError(_CODES.get(response.code, grpc.StatusCode.UNKNOWN), response.message)
        return response, received

    def close(self):
        """Closes the idle connections now, and each busy one as its call ends."""
        with self._cv:
            self._closed = True
            idle, self._idle = self._idle, []
            self._open -= len(idle)
            self._cv.notify_all()
        for sock in idle:
            sock.close()


def _pack_fds(fds):
    return np.array(fds, dtype=np.intc).tobytes()


def _unpack_fds(ancillary):
    fds = []
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            usable = len(data) - len(data) % 4
            fds.extend(np.frombuffer(data[:usable], dtype=np.intc).tolist())
    return fds


def _close_all(fds):
    for fd in fds:
        os.close(fd)
