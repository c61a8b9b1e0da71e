"""A remote client over mutual TLS: results as bytes, identities by
certificate, refusals that say they are about TLS. Runs against a server on
loopback, and again from the two-host test, across a veth pair between two
network namespaces (ASARRAY_REMOTE_SERVER; ASARRAY_REMOTE_IFACE then names
this side's interface, whose byte counters show what compression saves)."""
import os

import numpy as np
import pytest
import torch

from asarray_client import AsArrayError, AsArrayNotFoundError, Client, TensorRef

from conftest import remote_client


def test_results_are_bytes_with_torch_semantics(remote):
    assert remote.remote and not remote.local
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    got = remote.asarray(x.T, dtype=torch.float64, requires_grad=True)
    want = torch.asarray(torch.from_numpy(x.T), dtype=torch.float64, requires_grad=True)
    assert torch.equal(got.detach(), want.detach())
    assert got.stride() == want.stride() and got.requires_grad
    assert remote.asarray([[1, 2.5], [3, 4]]).dtype == torch.float32
    with pytest.raises(KeyError):
        remote.handle(got)  # no handle behind a copy
    assert remote.list() == []


def test_uploads_stream_and_big_results_stream_back(remote):
    big = np.random.default_rng(1).random(5_000_000)  # 40 MB: a streamed upload
    got = remote.asarray(big, dtype=torch.float32)
    assert torch.equal(got, torch.from_numpy(big).float())
    # 12 MiB of float64 from 1.5 MB of uint8: past the server's 8 MiB
    # message, so it comes through ConvertToData.
    small = np.arange(1_500_000, dtype=np.int64).astype(np.uint8)
    wide = remote.asarray(small, dtype=torch.float64)
    assert torch.equal(wide, torch.from_numpy(small).double())
    assert remote.list() == []


def test_upload_read_and_release(remote):
    ref = remote.upload(np.arange(10, dtype=np.int32), ttl_ms=60000)
    assert isinstance(ref, TensorRef) and ref.shape == (10,)
    assert [h.id for h in remote.list()] == [ref.id]
    assert remote.read(ref).tolist() == list(range(10))
    taken = remote.asarray(ref, dtype=torch.float16)
    assert taken.tolist() == [float(i) for i in range(10)]
    remote.release(ref)
    assert remote.list() == []
    with pytest.raises(AsArrayNotFoundError):
        remote.read(ref)


def test_another_identity_finds_nothing(remote, tls_server, pki):
    ref = remote.upload(np.ones(4), ttl_ms=60000)
    with remote_client(tls_server, pki, "bob") as bob:
        assert bob.list() == []
        for reach in (lambda: bob.read(ref), lambda: bob.asarray(ref),
                      lambda: bob.renew(ref), lambda: bob.release(ref)):
            with pytest.raises(AsArrayNotFoundError):
                reach()
    assert [h.id for h in remote.list()] == [ref.id]
    remote.release(ref)


@pytest.mark.parametrize("how,says", [
    ("plaintext", "plaintext TCP"),
    ("untrusted", "untrusted.pem"),
    ("no client certificate", "needs certificate_chain and private_key"),
])
def test_refusals_say_they_are_about_tls(tls_server, pki, how, says):
    kwargs = {"plaintext": {},
              "untrusted": dict(root_certificates=f"{pki}/untrusted.pem",
                                certificate_chain=f"{pki}/alice.pem",
                                private_key=f"{pki}/alice.key"),
              "no client certificate": dict(root_certificates=f"{pki}/ca.pem")}[how]
    with Client(tls_server.tcp_address, **kwargs) as c:
        with pytest.raises(AsArrayError) as e:
            c.asarray([1, 2])
    assert e.value.code.name == "UNAVAILABLE"
    assert "TLS" in str(e.value) and says in str(e.value)


def test_no_shared_memory_is_asked_for(remote):
    before = set(os.listdir("/dev/shm"))
    arr = remote.empty((1000,), torch.float32)  # plain memory: nothing to share
    arr[:] = 2
    with pytest.raises(ValueError, match="remote"):
        remote.ref(arr)
    assert remote.asarray(arr).sum().item() == 2000
    assert set(os.listdir("/dev/shm")) <= before


def _tx_bytes():
    iface = os.environ.get("ASARRAY_REMOTE_IFACE")
    with open(f"/sys/class/net/{iface}/statistics/tx_bytes") as f:
        return int(f.read())


@pytest.mark.parametrize("compression", [False, True])
def test_compression_shrinks_what_crosses_the_wire(tls_server, pki, compression):
    zeros = np.zeros(4 << 20, dtype=np.float32)  # 16 MiB that compress to almost nothing
    with remote_client(tls_server, pki, compression=compression) as c:
        c.stats()  # connected, before counting
        counted = bool(os.environ.get("ASARRAY_REMOTE_IFACE"))
        before = _tx_bytes() if counted else 0
        ref = c.upload(zeros, ttl_ms=60000)
        sent = _tx_bytes() - before if counted else None
        assert c.read(ref).sum() == 0
        c.release(ref)
    if counted:  # across the veth pair: what the interface sent
        if compression:
            assert sent < zeros.nbytes // 8, sent
        else:
            assert sent > zeros.nbytes, sent
