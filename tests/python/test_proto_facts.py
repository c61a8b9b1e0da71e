"""What the client reads from the proto's options rather than keeping a copy
(each DType's item size, the default socket), checked against a server,
which has its own reading of them: where the two disagree, one is wrong."""
import os
import shutil
import signal
import subprocess
import tempfile
import time

import numpy as np
import pytest

from asarray.v1 import asarray_pb2 as pb
from asarray_client import Client
from asarray_client._dtypes import _DTYPES
from asarray_client._transport import default_socket_path
from conftest import segments

DTYPES = [v for v in pb.DType.DESCRIPTOR.values if v.number != pb.DTYPE_UNSPECIFIED]


@pytest.mark.parametrize("value", DTYPES, ids=lambda v: v.name)
def test_each_item_size_is_the_servers(client, value):
    name = value.name.removeprefix("DTYPE_").lower()
    item_size = value.GetOptions().Extensions[pb.dtype_item_size]
    assert _DTYPES[name][1].itemsize == item_size
    result = client.asarray([0, 1, 0], dtype=name)
    proto = client.handle(result).proto
    location = proto.fd if proto.HasField("fd") else proto.shared_memory
    assert location.size == 3 * item_size


def test_the_fallback_socket_is_under_tmp_by_uid(monkeypatch):
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    assert default_socket_path() == f"/tmp/asarrayd-{os.geteuid()}/asarrayd.sock"
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/dir")  # not absolute: not used
    assert default_socket_path() == f"/tmp/asarrayd-{os.geteuid()}/asarrayd.sock"


def test_a_client_given_no_address_finds_a_server_on_its_default(monkeypatch):
    runtime = tempfile.mkdtemp(prefix="asarrayd-xdg-")
    prefix = f"asarrayd-py-xdg-{os.getpid()}"
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    server = subprocess.Popen(
        [os.environ["ASARRAYD"], "--listen=default", f"--shm_prefix={prefix}"],
        stderr=subprocess.DEVNULL)
    try:
        assert default_socket_path() == f"{runtime}/asarrayd/asarrayd.sock"
        deadline = time.monotonic() + 20
        while True:
            try:
                with Client() as client:
                    client.stats()
                break
            except Exception:
                assert server.poll() is None and time.monotonic() < deadline, "no asarrayd there"
                time.sleep(0.02)
        with Client() as client:
            assert client.address == "unix:" + default_socket_path()
            assert client.local  # and its local transport beside it
            assert client.asarray(np.arange(3), like="numpy").tolist() == [0, 1, 2]
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
        shutil.rmtree(runtime, ignore_errors=True)
    assert not segments(prefix)
