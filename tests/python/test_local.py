"""The Python client over the local transport: memory as descriptors, nothing
named in /dev/shm, handles that end with the connection, and a pool of
regions that is reused only when no process still aliases a region."""
import gc
import os
import pickle
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from asarray_client import Client, TensorRef
from asarray_client._transport import _Local
from asarray_client.errors import AsArrayNotFoundError, AsArrayValueError


def _ours(server):
    """Entries of /dev/shm this test process or its server could have made
    (other tests run beside this one)."""
    mine = f"asarray-client-{os.getpid()}-"
    return sorted(n for n in os.listdir("/dev/shm")
                  if n.startswith(server.prefix) or n.startswith(mine))


@pytest.fixture(scope="module")
def no_names(server):
    """Checks that the whole module adds nothing to /dev/shm. (Earlier
    modules' named results may go meanwhile, as their leases end.)"""
    before = _ours(server)
    yield
    gc.collect()
    assert set(_ours(server)) <= set(before)


@pytest.fixture
def local(server, no_names):
    with Client(server.address) as c:
        assert c.local
        yield c


def _open_fds():
    return len(os.listdir("/proc/self/fd"))


def _wait(condition, timeout=5.0):
    """Seconds until condition() held, or None."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.0002)
    return None


def test_every_way_in_names_nothing_and_matches_torch(local, server):
    before = _ours(server)
    src = np.arange(24, dtype=np.float32).reshape(4, 6)
    big = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)  # > a datagram
    shared = local.share(src)
    empty = local.empty((4, 6), torch.float32)
    empty.copy_(torch.from_numpy(src))
    results = {
        "share": local.asarray(shared, copy=False),
        "empty": local.asarray(empty, copy=False),
        "cast": local.asarray(shared, dtype=torch.bfloat16),
        "literal": local.asarray([[1, 2.5], [3, 4]], dtype=torch.float64),
        "heap": local.asarray(src, dtype=torch.float16),
        "big heap": local.asarray(big),
        "big cast": local.asarray(big, dtype=torch.float64),
        "zeros": local.asarray(local.zeros((3,), torch.int64), copy=False),
    }
    expected = {
        "share": torch.asarray(src), "empty": torch.asarray(src),
        "cast": torch.asarray(src, dtype=torch.bfloat16),
        "literal": torch.asarray([[1, 2.5], [3, 4]], dtype=torch.float64),
        "heap": torch.asarray(src, dtype=torch.float16), "big heap": torch.asarray(big),
        "big cast": torch.asarray(big, dtype=torch.float64), "zeros": torch.zeros(3, dtype=torch.int64),
    }
    for name, got in results.items():
        assert got.dtype == expected[name].dtype, name
        assert torch.equal(got, expected[name]), name
        handle = local.handle(got)
        assert handle.proto.HasField("fd"), name  # memory as a descriptor, no name
    assert local.handle(results["share"]).proto.fd.request_fd  # the region's own
    assert local.handle(results["share"]).shares_memory
    assert not local.handle(results["big heap"]).shares_memory  # a copy of the caller's array
    results["share"][0, 0] = 100
    assert shared[0, 0] == 100
    assert _ours(server) == before


def test_received_descriptors_are_closed_once_mapped(local):
    for _ in range(5):  # warm: gRPC and the pool open what they keep
        local.asarray(np.ones(8, dtype=np.float32), dtype=torch.float64)
    gc.collect()
    local.flush()
    before = _open_fds()
    kept = [local.asarray(np.full(8, i, dtype=np.float32), dtype=torch.float64) for i in range(200)]
    # Beyond the warm set: at most the local connections that calls from the
    # releaser's thread opened beside this one's, never one per result.
    assert _open_fds() <= before + 1 + _Local.MAX_CONNECTIONS
    assert [int(t[0]) for t in kept[:3]] == [0, 1, 2]


def test_handles_end_with_the_client(server, local):
    before = local.stats().tensors
    other = Client(server.address)
    kept = [other.asarray(np.ones(4, dtype=np.float32)) for _ in range(10)]
    assert local.stats().tensors == before + 10
    assert local.stats().connection_leases >= 10
    other.close()
    assert _wait(lambda: local.stats().tensors == before) is not None
    assert torch.equal(kept[0], torch.ones(4))  # the mapping outlives the lease


def test_calls_from_many_threads_all_stay_local(server, local):
    """Calls that meet on the client's connection each get one of their own:
    none falls back to gRPC, where a descriptor-backed tensor has no
    location to map (the releaser's thread sends releases meanwhile)."""
    import threading
    producer = Client(server.address)
    tensors = [producer.empty((256,), torch.float32) for _ in range(4)]
    for i, t in enumerate(tensors):
        t.fill_(i)
    refs = [producer.ref(t) for t in tensors]
    errors, seen = [], []

    def take(i):
        try:
            for _ in range(150):
                view = local.asarray(refs[i], copy=False)
                seen.append((i, float(view[-1]), local.handle(view).shares_memory))
                del view  # its release goes out from the releaser's thread
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=take, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(seen) == 600
    assert all(value == i and shares for i, value, shares in seen)
    assert 1 <= local.stats().local_connections
    producer.close()


KILLED = """
import sys, numpy as np, torch
from asarray_client import Client
c = Client(sys.argv[1])
region = c.empty((1024,), torch.float32)
keep = [c.asarray(np.full(4, i, dtype=np.float32)) for i in range(500)]
keep += [c.asarray(region[i:i + 2], copy=False) for i in range(500)]
print(len(keep), flush=True)
sys.stdin.read()
"""


def _settled(client):
    """The server's Stats once the handles earlier tests let go are gone:
    a closed client's end on the server's thread, released views in this
    process's queue."""
    gc.collect()
    client.flush()
    last = [None]

    def steady():
        s = client.stats()
        now = (s.tensors, s.client_regions)
        same, last[0] = now == last[0], now
        time.sleep(0.02)
        return same
    assert _wait(steady) is not None, "the server's handles never settled"
    return client.stats()


def test_a_killed_clients_handles_are_reclaimed(server, local):
    baseline = _settled(local)
    child = subprocess.Popen([sys.executable, "-c", KILLED, server.address],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ))
    try:
        assert child.stdout.readline().strip() == "1000"
        # And the region's own: the server holds every allocation of empty().
        assert local.stats().tensors == baseline.tensors + 1001
        child.send_signal(signal.SIGKILL)
        child.wait()
        took = _wait(lambda: local.stats().tensors == baseline.tensors
                     and local.stats().client_regions == baseline.client_regions)
    finally:
        child.kill()
    assert took is not None, "the killed client's handles were never reclaimed"
    print(f"reclaimed 1001 handles {took * 1000:.1f} ms after SIGKILL was reaped")


CONSUMER = """
import pickle, sys, torch
from asarray_client import Client
c = Client(sys.argv[1])
ref = pickle.loads(bytes.fromhex(sys.stdin.readline()))
t = c.asarray(ref, copy=False)
h = c.handle(t)
assert h.shares_memory and h.proto.HasField("fd") and not h.proto.fd.request_fd
print(int(t.sum()), flush=True)   # what the producer wrote
t[0] = -7                          # seen by the producer
print("wrote", flush=True)
sys.stdin.readline()               # hold the view until told
print(int(t.sum()), flush=True)    # must still be the first data
del t
c.flush()
print("dropped", flush=True)
sys.stdin.readline()
"""


def test_a_pooled_region_is_not_reused_while_another_process_aliases_it(server, local):
    child = subprocess.Popen([sys.executable, "-c", CONSUMER, server.address],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ))
    try:
        first = local.empty((256,), torch.int32)
        first.fill_(1)
        address = first.data_ptr()
        ref = local.ref(first)
        assert isinstance(ref, TensorRef)
        child.stdin.write(pickle.dumps(ref).hex() + "\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == "256"
        assert child.stdout.readline().strip() == "wrote"
        assert int(first[0]) == -7  # the same memory
        # The producer is done with it; the consumer still views it.
        del first
        gc.collect()
        local.flush()
        second = local.empty((256,), torch.int32)
        assert second.data_ptr() != address, "reused while another process aliases it"
        second.fill_(5)  # the producer's next data
        child.stdin.write("\n")
        child.stdin.flush()
        assert child.stdout.readline().strip() == str(-7 + 255)  # unchanged
        assert child.stdout.readline().strip() == "dropped"
        del second
        gc.collect()
        local.flush()
        third = local.empty((256,), torch.int32)
        assert third.data_ptr() == address  # free everywhere now: reused
    finally:
        child.kill()
        child.wait()


def test_copy_false_of_a_heap_array_still_fails_when_big(local):
    with pytest.raises(AsArrayValueError) as error:
        local.asarray(np.ones(100_000, dtype=np.float32), copy=False)
    assert error.value.code.name == "FAILED_PRECONDITION"


def test_a_ref_ends_with_the_producers_allocation(server, local):
    produced = local.empty((8,), torch.float32)
    ref = local.ref(produced[2:4])
    with Client(server.address) as consumer:
        taken = consumer.asarray(ref, copy=False)
        assert consumer.handle(taken).shares_memory
        del taken
        del produced
        gc.collect()
        local.flush()
        with pytest.raises(AsArrayNotFoundError):
            consumer.asarray(ref, copy=False)


def test_named_mode_still_goes_through_dev_shm(server):
    with Client(server.address, named=True) as c:
        _named_mode(c, server)
        gc.collect()  # every view is gone before the client closes: its releases go out


def _named_mode(c, server):
    assert not c.local
    region = c.share(np.arange(6, dtype=np.int16))
    alias = c.asarray(region, copy=False)
    handle = c.handle(alias)
    assert handle.shares_memory and handle.proto.shared_memory.name.startswith("/asarray-client-")
    cast = c.asarray(region, dtype=torch.float32)
    assert c.handle(cast).proto.shared_memory.name.startswith("/" + server.prefix)
    assert torch.equal(cast, torch.arange(6, dtype=torch.float32))


def test_ref_of_an_allocation_makes_no_call(server, local):
    """The server holds what empty() and share() allocate from the start, so
    ref() of it is free; a slice still costs a call, and both map the same
    bytes in another client."""
    whole = local.empty((64, 4), torch.float32)
    whole.copy_(torch.arange(256, dtype=torch.float32).reshape(64, 4))
    shared = local.share(np.full(10, 7, dtype=np.int16), like="torch")
    before = local.stats().local_converts
    refs = [local.ref(whole), local.ref(shared)]
    assert local.stats().local_converts == before
    part = local.ref(whole[3:5])
    assert local.stats().local_converts == before + 1
    with Client(server.address) as other:
        assert torch.equal(other.asarray(refs[0], copy=False), whole)
        assert torch.equal(other.asarray(refs[1], copy=False), torch.full((10,), 7, dtype=torch.int16))
        view = other.asarray(part, copy=False)
        assert torch.equal(view, whole[3:5])
        whole[4, 0] = -1  # the very same memory
        assert float(view[1, 0]) == -1


def test_a_big_share_is_copied_exactly(local):
    """share() copies a big array on several threads, in page-sized parts
    with a ragged end."""
    src = np.random.default_rng(5).integers(-1 << 30, 1 << 30, size=(3 << 20) + 123,
                                            dtype=np.int32)
    out = local.share(src)
    assert out.dtype == src.dtype and out.shape == src.shape
    assert np.array_equal(out, src)
    strided = local.share(src[::3])
    assert np.array_equal(strided, src[::3])
