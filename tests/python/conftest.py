"""Fixtures for the Python client tests: a real asarrayd on a private socket.

Environment (set by ctest): ASARRAYD, the server binary; PYTHONPATH with the
assembled client; ASARRAY_CONFORMANCE_DIR, the folder of cases.jsonl.
"""
import os
import shutil
import signal
import subprocess
import re
import tempfile
import threading
import time

import pytest


def segments(prefix):
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


PKI_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "scripts",
                          "test_pki.sh")


class Server:
    """`tcp`: also listen on a loopback port, whose "host:port" is then
    self.tcp_address (TLS and mutual TLS come with `args`)."""

    def __init__(self, lease_ttl="30s", args=(), tcp=False):
        self.dir = tempfile.mkdtemp(prefix="asarrayd-py-")
        self.address = f"unix:{self.dir}/s/asarrayd.sock"
        self.prefix = f"asarrayd-py-{os.getpid()}-{os.path.basename(self.dir)[-6:]}"
        listen = self.address + (",127.0.0.1:0" if tcp else "")
        self.process = subprocess.Popen(
            [os.environ["ASARRAYD"], f"--listen={listen}", f"--shm_prefix={self.prefix}",
             f"--lease_ttl={lease_ttl}", *args],
            stderr=subprocess.PIPE if tcp else subprocess.DEVNULL, text=True)
        self.tcp_address = None
        if tcp:
            for line in self.process.stderr:
                found = re.search(r"listening on (.*) \(instance", line)
                if found:
                    self.tcp_address = found.group(1).split(", ")[-1]
                    break
            # The rest of its log is read and dropped, so that it never blocks.
            threading.Thread(target=self.process.stderr.read, daemon=True).start()
            if self.tcp_address is None:
                raise RuntimeError("asarrayd did not say where it listens")
        from asarray_client import Client
        deadline = time.monotonic() + 20
        while True:
            try:
                with Client(self.address) as client:
                    client.stats()
                break
            except Exception:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise RuntimeError("asarrayd did not start")
                time.sleep(0.02)

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        self.process.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)
        left = segments(self.prefix)
        assert not left, f"segments left in /dev/shm: {left}"


@pytest.fixture(scope="session")
def server():
    s = Server()
    yield s
    s.stop()


class _RemoteServer:
    """A server on another host (ASARRAY_REMOTE_SERVER), as the two-host
    test starts one: nothing to stop here."""

    def __init__(self, address):
        self.tcp_address = address


@pytest.fixture(scope="session")
def pki():
    """A throwaway CA with a server certificate and clients alice and bob
    (the two-host test's own, from ASARRAY_REMOTE_PKI, when it runs us)."""
    if os.environ.get("ASARRAY_REMOTE_PKI"):
        yield os.environ["ASARRAY_REMOTE_PKI"]
        return
    directory = tempfile.mkdtemp(prefix="asarrayd-pki-")
    subprocess.run(["bash", PKI_SCRIPT, directory], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="session")
def tls_server(pki):
    """A server with a TLS listener on loopback that requires client
    certificates (mutual TLS), and sends at most 8 MiB in one message. The
    two-host test points ASARRAY_REMOTE_SERVER at one across its veth pair."""
    if os.environ.get("ASARRAY_REMOTE_SERVER"):
        yield _RemoteServer(os.environ["ASARRAY_REMOTE_SERVER"])
        return
    s = Server(tcp=True, args=[f"--tls_cert={pki}/server.pem", f"--tls_key={pki}/server.key",
                               f"--tls_client_ca={pki}/ca.pem", "--max_message_bytes=8388608"])
    yield s
    s.stop()


def remote_client(tls_server, pki, who="alice", **kwargs):
    from asarray_client import Client
    return Client(tls_server.tcp_address, root_certificates=f"{pki}/ca.pem",
                  certificate_chain=f"{pki}/{who}.pem", private_key=f"{pki}/{who}.key", **kwargs)


@pytest.fixture
def remote(tls_server, pki):
    """A remote client (alice) of tls_server, over mutual TLS."""
    with remote_client(tls_server, pki) as c:
        yield c


@pytest.fixture
def client(server):
    from asarray_client import Client
    with Client(server.address) as c:
        yield c


@pytest.fixture
def grpc_client(server):
    """A client that keeps every call on gRPC (no local transport)."""
    from asarray_client import Client
    with Client(server.address, local=False) as c:
        yield c
