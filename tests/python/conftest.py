"""Fixtures for the Python client tests: a real asarrayd on a private socket.

Environment (set by ctest): ASARRAYD, the server binary; PYTHONPATH with the
assembled client; ASARRAY_CONFORMANCE_DIR, the folder of cases.jsonl.
"""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import pytest


def segments(prefix):
    return [n for n in os.listdir("/dev/shm") if n.startswith(prefix)]


class Server:
    def __init__(self, lease_ttl="30s", args=()):
        self.dir = tempfile.mkdtemp(prefix="asarrayd-py-")
        self.address = f"unix:{self.dir}/s/asarrayd.sock"
        self.prefix = f"asarrayd-py-{os.getpid()}-{os.path.basename(self.dir)[-6:]}"
        self.process = subprocess.Popen(
            [os.environ["ASARRAYD"], f"--listen={self.address}", f"--shm_prefix={self.prefix}",
             f"--lease_ttl={lease_ttl}", *args], stderr=subprocess.DEVNULL)
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
