"""asarray_client.aio.Client against a real asarrayd: the sync client's
behaviours as coroutines, over the local transport and over gRPC (and from a
remote client over mutual TLS), calls in flight at once, cancellation, and
every conformance case compared with live torch."""
import asyncio
import collections
import functools
import gc
import inspect
import time

import numpy as np
import pytest
import torch

import asarray_client
from asarray_client import (AsArrayError, AsArrayNotFoundError, AsArrayTypeError,
                            AsArrayValueError, Client, TensorRef, TreeRef, aio)
from asarray_client._transport import _Local

import test_conformance as conformance

Sample = collections.namedtuple("Sample", "images labels")
TRANSPORTS = pytest.mark.parametrize("local", [True, False], ids=["local", "grpc"])


def _async(test):
    """Runs async test `test` in an event loop of its own; pytest finds its
    fixtures in the signature, which wraps() keeps."""
    @functools.wraps(test)
    def run(*args, **kwargs):
        asyncio.run(asyncio.wait_for(test(*args, **kwargs), 120))
    return run


async def _until(condition, timeout=10.0):
    """Whether the coroutine function `condition` came true within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if await condition():
            return True
        await asyncio.sleep(0.01)
    return False


def _remote(tls_server, pki, **kwargs):
    return aio.Client(tls_server.tcp_address, root_certificates=f"{pki}/ca.pem",
                      certificate_chain=f"{pki}/alice.pem", private_key=f"{pki}/alice.key",
                      **kwargs)


def test_the_package_exports_it():
    assert asarray_client.aio.Client is aio.Client
    for name in ("asarray", "asarray_batch", "asarray_tree", "share_tree", "ref", "share",
                 "empty", "zeros", "read", "upload", "release", "stats", "list", "renew",
                 "flush", "close"):
        assert inspect.iscoroutinefunction(getattr(aio.Client, name)), name
        assert callable(getattr(Client, name)), name


@TRANSPORTS
@_async
async def test_conversions_match_torch(server, local):
    src = np.arange(24, dtype=np.float32).reshape(4, 6)
    big = np.random.default_rng(1).standard_normal(100_000).astype(np.float32)  # > a datagram
    bf16 = torch.tensor([1.5, -2.25, 3.0], dtype=torch.bfloat16)
    async with aio.Client(server.address, local=local) as client:
        assert client.local == local and not client.remote
        got = {
            "literal": await client.asarray([[1, 2.5], [3, 4]], dtype=torch.float16),
            "heap": await client.asarray(src.T, dtype=torch.float64),
            "big": await client.asarray(big),
            "bfloat16": await client.asarray(bf16),
            "grad": await client.asarray(src, requires_grad=True),
        }
        want = {
            "literal": torch.asarray([[1, 2.5], [3, 4]], dtype=torch.float16),
            "heap": torch.asarray(src.T, dtype=torch.float64),
            "big": torch.asarray(big), "bfloat16": bf16,
            "grad": torch.asarray(src, requires_grad=True),
        }
        for name, tensor in got.items():
            assert tensor.dtype == want[name].dtype, name
            assert tensor.stride() == want[name].stride(), name
            assert tensor.requires_grad == want[name].requires_grad, name
            assert torch.equal(tensor.detach(), want[name].detach()), name
            assert not client.handle(tensor).shares_memory, name
        as_numpy = await client.asarray([0.0, 2j, float("nan")], dtype=torch.bool, like="numpy")
        assert as_numpy.dtype == np.bool_ and as_numpy.tolist() == [False, True, True]


@TRANSPORTS
@_async
async def test_copy_false_aliases_this_clients_memory_and_refuses_the_heap(server, local):
    async with aio.Client(server.address, local=local) as client:
        shared = await client.share(np.arange(6, dtype=np.float64).reshape(2, 3))
        alias = await client.asarray(shared, copy=False)
        assert client.handle(alias).shares_memory
        alias[1, 2] = 42.0
        assert shared[1, 2] == 42.0
        produced = await client.empty((4, 5), torch.float32)
        produced.copy_(torch.arange(20, dtype=torch.float32).reshape(4, 5))
        consumed = await client.asarray(produced.T, copy=False)
        assert client.handle(consumed).shares_memory and consumed.stride() == (1, 5)
        assert torch.equal(consumed, produced.T)
        assert torch.equal(await client.zeros((3,), "int64"), torch.zeros(3, dtype=torch.int64))
        with pytest.raises(AsArrayValueError) as error:
            await client.asarray(np.ones(8, dtype=np.int32), copy=False)
        assert error.value.code.name == "FAILED_PRECONDITION"
        with pytest.raises(AsArrayValueError):
            await client.asarray(shared, dtype=torch.float32, copy=False)


BAD = [
    ([[1, 2], [3]], {}),
    ([1, [2]], {}),
    ([1 + 1j], {"dtype": torch.float32}),
    ([1, 2], {"requires_grad": True}),
    ([300], {"dtype": torch.int8}),
    ([None], {}),
    (np.ones(3), {"copy": False}),
    ("0" * 32, {}),
    (TensorRef("0" * 32, "float32", (1,), (1,)), {}),
]


@TRANSPORTS
@_async
async def test_errors_are_the_sync_clients(server, local):
    with Client(server.address, local=local) as sync:
        async with aio.Client(server.address, local=local) as client:
            for obj, kwargs in BAD:
                with pytest.raises(Exception) as want:
                    sync.asarray(obj, **kwargs)
                with pytest.raises(Exception) as got:
                    await client.asarray(obj, **kwargs)
                assert type(got.value) is type(want.value), obj
                assert str(got.value) == str(want.value), obj
            with pytest.raises(AsArrayTypeError):
                await client.asarray([1 + 1j], dtype=torch.float32)
            with pytest.raises(AsArrayNotFoundError):
                await client.read("0" * 32)
            with pytest.raises(KeyError):
                client.handle(torch.ones(2))


@TRANSPORTS
@_async
async def test_upload_read_renew_list_and_release(server, local):
    async with aio.Client(server.address, local=local) as client:
        ref = await client.upload(np.arange(10, dtype=np.int32), ttl_ms=60000)
        assert isinstance(ref, TensorRef) and ref.shape == (10,)
        assert ref.id in [h.id for h in await client.list()]
        assert (await client.read(ref)).tolist() == list(range(10))
        taken = await client.asarray(ref, dtype=torch.float16)
        assert taken.tolist() == [float(i) for i in range(10)]
        now_ms = time.time() * 1000
        assert await client.renew(ref, ttl_ms=600000) > now_ms + 500000
        assert len(await client.renew([ref, ref.id], ttl_ms=600000)) == 2
        await client.release(ref)
        assert ref.id not in [h.id for h in await client.list()]
        with pytest.raises(AsArrayNotFoundError):
            await client.read(ref)
        with pytest.raises(AsArrayNotFoundError):
            await client.release(ref)


@TRANSPORTS
@_async
async def test_dropping_the_views_releases_them(server, local):
    async with aio.Client(server.address, local=local) as client:
        before = (await client.stats()).tensors
        views = [await client.asarray(np.full(1000, i, dtype=np.float32)) for i in range(10)]
        alias = views[3][10:20]
        assert (await client.stats()).tensors == before + 10
        del views
        gc.collect()
        await client.flush()
        assert (await client.stats()).tensors == before + 1  # the slice holds its handle
        assert alias[0] == 3
        del alias
        gc.collect()
        await client.flush()
        assert (await client.stats()).tensors == before


@TRANSPORTS
@_async
async def test_batches_and_trees(server, local):
    async with aio.Client(server.address, local=local) as client:
        items = [np.arange(4, dtype=np.int16), [1.5, 2.5], torch.ones(2, 3).T, np.float32(2)]
        got = await client.asarray_batch(items, dtype=[None, torch.float64, None, None])
        want = [torch.asarray(items[0]), torch.asarray([1.5, 2.5], dtype=torch.float64),
                torch.ones(2, 3).T, torch.asarray(np.array(np.float32(2)))]
        for g, w in zip(got, want):
            assert g.dtype == w.dtype and g.stride() == w.stride() and torch.equal(g, w)
        assert await client.asarray_batch([]) == []
        tree = {"images": [np.ones((2, 2)), np.zeros(3)], "sample": Sample([1, 2], "cat"),
                "name": "batch-1"}
        out = await client.asarray_tree(tree, dtype=torch.float32)
        assert isinstance(out["sample"], Sample) and out["sample"].labels == "cat"
        assert out["name"] is tree["name"]
        assert torch.equal(out["images"][0], torch.ones(2, 2))
        assert out["sample"].images.dtype == torch.float32
        with pytest.raises(ValueError) as error:
            await client.asarray_tree({"a": np.ones(2), "b": [[1, 2], [3]]})
        assert error.value.details.startswith("item 1 (['b']): ")

        shared = await client.share_tree({"w": np.arange(6, dtype=np.float32).reshape(2, 3),
                                          "b": torch.arange(3, dtype=torch.bfloat16)})
        starts = [shared["w"].ctypes.data, shared["b"].data_ptr()]
        assert max(starts) - min(starts) < 4096  # one region
        aliased = await client.asarray_tree(shared, copy=False)
        assert all(client.handle(t).shares_memory for t in aliased.values())
        aliased["w"][1, 1] = 100
        assert shared["w"][1, 1] == 100


@_async
async def test_a_tree_ref_is_taken_by_another_client(server):
    async with aio.Client(server.address) as producer, aio.Client(server.address) as consumer:
        shared = await producer.share_tree({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
        ref = await producer.ref({"w": shared["w"], "heap": np.arange(4, dtype=np.int16),
                                  "literal": [1.5, 2.5]}, ttl_ms=600000)
        assert isinstance(ref, TreeRef) and len(ref.refs) == 3
        array_ref = await producer.ref(shared["w"][1])
        tree = await consumer.asarray_tree(ref, copy=False)
        assert tree["w"].tolist() == [[0, 1, 2], [3, 4, 5]]
        assert all(consumer.handle(t).shares_memory for t in tree.values())
        tree["w"][0, 0] = -9  # the producer's memory
        assert shared["w"][0, 0] == -9
        row = await consumer.asarray(array_ref, copy=False)
        assert row.tolist() == [3, 4, 5]
        assert len(await consumer.renew(ref, ttl_ms=600000)) == 3
        await consumer.release(ref)
        with pytest.raises(AsArrayNotFoundError):
            await consumer.asarray_tree(ref)


@TRANSPORTS
@_async
async def test_coroutines_call_at_once_and_each_gets_its_answer(server, local):
    async with aio.Client(server.address, local=local) as client:
        answers = await asyncio.gather(*[client.asarray([k, k * k], dtype=torch.int64)
                                         for k in range(64)])
        assert [t.tolist() for t in answers] == [[k, k * k] for k in range(64)]
        if local:
            # A connection serves one call at a time, and is opened only
            # while every open one is busy: all of them means as many calls
            # were on their way together.
            assert len(client._io.local._idle) == _Local.MAX_CONNECTIONS
            await asyncio.gather(*[client.stats() for _ in range(8)])
            assert len(client._io.local._idle) == _Local.MAX_CONNECTIONS  # and reused


@_async
async def test_the_loop_runs_while_a_call_is_on_its_way(server):
    async with aio.Client(server.address) as client:
        events = []
        transport = client._io.local
        call = transport.call

        async def logged(request, fds=()):
            events.append("sent")
            try:
                return await call(request, fds)
            finally:
                events.append("answered")

        transport.call = logged
        done = asyncio.Event()

        async def tick():
            while not done.is_set():
                events.append("tick")
                await asyncio.sleep(0)

        ticker = asyncio.ensure_future(tick())
        await asyncio.sleep(0)
        for k in range(5):
            assert (await client.asarray([k])).tolist() == [k]
        done.set()
        await ticker
        calls = [i for i, e in enumerate(events) if e == "sent"]
        assert len(calls) == 5
        for start in calls:
            end = events.index("answered", start)
            assert "tick" in events[start:end]  # the ticker ran meanwhile


@_async
async def test_a_cancelled_call_leaves_nothing_and_its_connection_serves_on(server):
    async with aio.Client(server.address) as client:
        before = await client.stats()
        call = asyncio.ensure_future(client.asarray(np.ones(4, dtype=np.float32),
                                                    dtype=torch.float64))
        await asyncio.sleep(0)  # the request leaves; the answer is awaited
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert (await client.asarray([7, 8])).tolist() == [7, 8]

        async def released():
            await client.flush()
            stats = await client.stats()
            # Both calls reached the server; what the cancelled one made is gone.
            return (stats.local_converts == before.local_converts + 2 and
                    stats.tensors == before.tensors)
        assert await _until(released)
        # The cancelled call's connection, its answer read, and the one the
        # next call opened meanwhile: both serve on.
        assert len(client._io.local._idle) == 2


@_async
async def test_close_ends_what_the_client_holds(server):
    with Client(server.address) as watcher:
        before = watcher.stats().tensors
        client = aio.Client(server.address)
        kept = [await client.asarray(np.ones(4, dtype=np.float32)) for _ in range(10)]
        shared = await client.share(np.arange(3))
        assert watcher.stats().tensors == before + 11
        await client.close()

        async def ended():
            return watcher.stats().tensors == before
        assert await _until(ended)
        assert torch.equal(kept[0], torch.ones(4))  # the mappings outlive the leases
        assert shared.tolist() == [0, 1, 2]


@_async
async def test_a_remote_client_streams_both_ways(tls_server, pki):
    async with _remote(tls_server, pki) as remote:
        assert remote.remote and not remote.local
        big = np.random.default_rng(1).random(1_000_000)  # 8 MB: a streamed upload
        got = await remote.asarray(big, dtype=torch.float32)
        assert torch.equal(got, torch.from_numpy(big).float())
        # Past the server's 8 MiB message: it comes back through ConvertToData.
        small = np.arange(1_500_000, dtype=np.int64).astype(np.uint8)
        wide = await remote.asarray(small, dtype=torch.float64)
        assert torch.equal(wide, torch.from_numpy(small).double())
        tree = await remote.asarray_tree({"x": np.arange(6).reshape(2, 3).T, "y": "text"})
        assert tree["x"].stride() == (1, 3) and tree["y"] == "text"
        assert await remote.list() == []


# --- conformance ---------------------------------------------------------------

class _Blocking:
    """An aio.Client whose coroutines run to their end on `loop` when
    called: what test_conformance's checks call."""

    def __init__(self, loop, client):
        self._loop, self._client = loop, client

    def __getattr__(self, name):
        attr = getattr(self._client, name)
        if not inspect.iscoroutinefunction(attr):
            return attr
        return lambda *args, **kwargs: self._loop.run_until_complete(attr(*args, **kwargs))


@pytest.fixture(scope="module")
def aio_clients(server, tls_server, pki):
    """Clients over the local transport, over gRPC and from a remote host,
    on one loop for the module."""
    loop = asyncio.new_event_loop()

    async def open_all():
        return {"local": aio.Client(server.address),
                "grpc": aio.Client(server.address, local=False), "remote": _remote(tls_server, pki)}
    clients = loop.run_until_complete(open_all())
    yield {way: _Blocking(loop, c) for way, c in clients.items()}
    for c in clients.values():
        loop.run_until_complete(c.close())
    loop.close()


@pytest.mark.parametrize("case,transport", conformance.RUNS,
                         ids=[f"{c['id']}-{t}" for c, t in conformance.RUNS])
def test_case_matches_live_torch(aio_clients, case, transport):
    way, _, over = transport.partition("/")
    client = aio_clients[over or "local"]
    assert client.local == (not over)
    conformance.check_case(client, case, way, remote=over == "remote")
