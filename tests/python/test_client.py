"""The Python client beyond conformance: zero-copy, lifetimes, errors."""
import gc
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

from asarray_client import (AsArrayNotFoundError, AsArrayTypeError, AsArrayValueError,
                            Client)
from conftest import Server, segments


def test_aliased_result_is_the_source_memory(client):
    shared = client.share(np.arange(6, dtype=np.float64).reshape(2, 3))
    result = client.asarray(shared, copy=False)
    assert client.handle(result).shares_memory
    result[1, 2] = 42.0  # write through the result ...
    assert shared[1, 2] == 42.0  # ... and read it in the source
    shared[0, 0] = -1.0
    assert result[0, 0] == -1.0


def test_empty_then_fill_needs_no_copy(client):
    produced = client.empty((4, 5), torch.float32)
    produced.copy_(torch.arange(20, dtype=torch.float32).reshape(4, 5))
    consumed = client.asarray(produced.T, copy=False)
    assert client.handle(consumed).shares_memory
    assert consumed.stride() == (1, 5)
    assert torch.equal(consumed, produced.T)
    assert torch.equal(client.zeros((3,), "int64"), torch.zeros(3, dtype=torch.int64))


def test_heap_array_is_copied_and_copy_false_fails_like_torch(client):
    heap = np.ones(8, dtype=np.int32)
    assert not client.handle(client.asarray(heap)).shares_memory
    with pytest.raises(ValueError) as error:
        client.asarray(heap, copy=False)
    assert error.value.code.name == "FAILED_PRECONDITION"
    shared = client.share(heap)
    with pytest.raises(AsArrayValueError):
        client.asarray(shared, dtype=torch.float32, copy=False)


def test_bfloat16_complex_bool_and_numpy_results(client):
    t = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    got = client.asarray(t)
    assert got.dtype == torch.bfloat16 and torch.equal(got, t)
    c = client.asarray(np.array([1 + 2j, 3 - 4j], dtype=np.complex64), dtype=torch.complex128)
    assert c.dtype == torch.complex128 and c[1] == 3 - 4j
    b = client.asarray([0.0, 2j, float("nan")], dtype=torch.bool, like="numpy")
    assert b.dtype == np.bool_ and b.tolist() == [False, True, True]


def test_literal_errors_mirror_torch(client):
    with pytest.raises(ValueError):
        client.asarray([[1, 2], [3]])
    with pytest.raises(TypeError):
        client.asarray([1, [2]])
    with pytest.raises(AsArrayTypeError):
        client.asarray([1 + 1j], dtype=torch.float32)
    with pytest.raises(RuntimeError):
        client.asarray([1, 2], requires_grad=True)
    with pytest.raises(RuntimeError):
        client.asarray([300], dtype=torch.int8)
    with pytest.raises(RuntimeError):
        client.asarray([None])


def test_read_returns_the_bytes_and_release_ends_the_handle(client):
    t = client.asarray(np.arange(6, dtype=np.int16).reshape(2, 3).T)
    back = client.read(t)
    assert back.tolist() == [[0, 3], [1, 4], [2, 5]]
    handle_id = client.handle(t).id
    client.release(t)
    with pytest.raises(AsArrayNotFoundError):
        client.read(handle_id)


def test_dropping_the_views_releases_everything(server, client):
    before = client.stats().tensors
    views = [client.asarray(np.full(1000, i, dtype=np.float32)) for i in range(10)]
    alias = views[3][10:20]
    assert client.stats().tensors == before + 10
    del views
    gc.collect()
    client.flush()
    assert client.stats().tensors == before + 1  # the slice still holds its handle
    assert alias[0] == 3
    del alias
    gc.collect()
    client.flush()
    assert client.stats().tensors == before


@pytest.mark.parametrize("named", [False, True], ids=["memfd", "named"])
def test_small_regions_are_recycled_only_when_no_handle_aliases_them(server, named):
    with Client(server.address, named=named) as client:
        _recycles_only_unaliased_regions(client, named)


def _recycles_only_unaliased_regions(client, named):
    first = client.empty((256,), torch.float32)
    first.fill_(1.0)
    stale = client.ref(first)
    alias = client.asarray(first, copy=False)
    address = first.data_ptr()
    del first
    gc.collect()
    second = client.empty((256,), torch.float32)  # the first is aliased: not reused
    assert second.data_ptr() != address
    second.fill_(2.0)
    assert torch.equal(alias, torch.ones(256))
    del alias
    gc.collect()
    client.flush()
    third = client.empty((256,), torch.float32)  # free now: reused (a named one renamed)
    assert third.data_ptr() == address
    if named:
        assert client.ref(third).name != stale.name
    with pytest.raises(AsArrayNotFoundError):  # a reference that outlived its array
        client.asarray(stale, copy=False)
    third.fill_(3.0)
    del third
    gc.collect()
    zeros = client.zeros((256,), torch.float32)
    assert zeros.data_ptr() == address and not zeros.any()


def test_a_small_segment_is_mapped_once_for_handles_in_turn(client):
    shared = client.share(np.arange(8, dtype=np.float32))
    first = client.asarray(shared, copy=False)
    address = first.data_ptr()
    del first
    gc.collect()
    second = client.asarray(shared, copy=False)
    assert second.data_ptr() == address  # the idle mapping, no new one
    third = client.asarray(shared, copy=False)  # the second still lives: a mapping of its own
    assert third.data_ptr() != address
    assert client.handle(third).id != client.handle(second).id
    shared[0] = 7.0
    assert second[0] == 7.0 and third[0] == 7.0


def test_releases_ride_along_with_the_next_convert(client):
    client._releaser._GATHER_S = 1.0  # the background sender waits; a Convert is sooner
    before = client.stats().tensors
    view = client.asarray(np.ones(4, dtype=np.float32))
    assert client.stats().tensors == before + 1
    del view
    gc.collect()
    keep = client.asarray(np.zeros(4, dtype=np.float32))
    assert client.stats().tensors == before + 1
    assert keep.sum() == 0


def test_the_local_transport_carries_converts_like_grpc(server):
    with Client(server.address) as fast, Client(server.address, local=False) as plain:
        results = [c.asarray([[1, 2.5], [3, 4]], dtype=torch.float16) for c in (fast, plain)]
        assert fast.local and not plain.local  # each took its way
        assert torch.equal(results[0], results[1]) and results[0].dtype == torch.float16
        for c in (fast, plain):
            with pytest.raises(AsArrayValueError) as error:
                c.asarray(np.ones(3), copy=False)
            assert error.value.code.name == "FAILED_PRECONDITION"
            with pytest.raises(TypeError):
                c.asarray([1, [2]])
        shared = fast.share(np.arange(4, dtype=np.int64))
        alias = fast.asarray(shared, copy=False)
        alias[0] = 9
        assert shared[0] == 9


def test_threads_share_a_client_and_each_gets_its_own_answer(client):
    import threading
    failures = []

    def convert(k):
        for i in range(50):
            got = client.asarray([k, i], dtype=torch.int64)
            if got.tolist() != [k, i]:
                failures.append((k, i, got.tolist()))

    threads = [threading.Thread(target=convert, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []


def test_without_a_local_transport_the_client_uses_grpc():
    server = Server(args=["--local_transport=false"])
    try:
        with Client(server.address) as c:
            assert torch.equal(c.asarray([1, 2]), torch.tensor([1, 2]))
            assert not c.local
    finally:
        server.stop()


CHILD = """
import os, sys, numpy as np
from asarray_client import Client
c = Client(sys.argv[1])
keep = [c.asarray(np.ones(100)) for _ in range(5)]
if sys.argv[2] == "crash":
    os._exit(0)
"""


@pytest.mark.parametrize("how", ["exit", "crash"])
def test_client_process_exit_leaves_nothing(how):
    # A clean exit releases at once (the lease alone would hold for a minute);
    # after a crash the short lease reclaims everything.
    server = Server(lease_ttl="60s" if how == "exit" else "1s")
    try:
        subprocess.run([sys.executable, "-c", CHILD, server.address, how], check=True,
                       env=dict(os.environ))
        with Client(server.address) as c:
            deadline = time.monotonic() + 10
            while c.stats().tensors and time.monotonic() < deadline:
                time.sleep(0.05)
            assert c.stats().tensors == 0
        assert segments(server.prefix) == []
    finally:
        server.stop()


def test_another_process_aliases_a_region_by_reference(server, client):
    produced = client.empty((1000,), torch.int32)
    produced.copy_(torch.arange(1000, dtype=torch.int32))
    ref = client.ref(produced[10:20])
    child = (
        "import sys, pickle, torch\n"
        "from asarray_client import Client\n"
        "c = Client(sys.argv[1])\n"
        "t = c.asarray(pickle.loads(bytes.fromhex(sys.argv[2])), copy=False)\n"
        "assert c.handle(t).shares_memory\n"
        "t[0] = -5\n"
        "print(int(t[1]))\n")
    import pickle
    out = subprocess.run([sys.executable, "-c", child, server.address, pickle.dumps(ref).hex()],
                         check=True, capture_output=True, text=True, env=dict(os.environ))
    assert out.stdout.strip() == "11"
    assert produced[10] == -5  # the other process wrote into this process's memory


def test_a_region_whose_release_is_on_its_way_is_waited_for_and_reused(server):
    """The release that frees a region may be in flight on the sender thread
    when the next allocation asks for one: it waits for it, and reuses the
    region, rather than making a new one."""
    import threading
    with Client(server.address) as client:
        first = client.empty((256,), torch.float32)
        address = first.data_ptr()
        sending = threading.Event()
        send = client._releaser.send_now

        def slow_send(request):
            sending.set()
            time.sleep(0.05)  # a slow round trip
            return send(request)

        client._releaser.send_now = slow_send
        del first
        gc.collect()
        assert sending.wait(5)  # the sender thread has the release, in flight
        second = client.empty((256,), torch.float32)
        assert second.data_ptr() == address
