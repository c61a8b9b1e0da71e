"""ConvertBatch through the Python client, over the local transport and over
gRPC: the conformance corpus in batches, all or nothing, one arena for the
copies; and the trees built on it (asarray_tree, share_tree, ref of a tree)."""
import base64
import collections
import gc
import json
import os
import pickle
import random
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest
import torch

from asarray.v1 import asarray_pb2 as pb
from asarray_client import (AsArrayError, AsArrayNotFoundError, Client, TensorRef, TreeRef)
from asarray_client.errors import from_rpc_error

import test_conformance as conformance
from conftest import Server

Pair = collections.namedtuple("Pair", "x y")
Sample = collections.namedtuple("Sample", "images labels")


@pytest.fixture(scope="module")
def server():
    """A server of this module's own: its tests count the server's tensors and
    segments, which the TTL leases of other modules' handles, ending on the
    session server at any moment, would move."""
    s = Server()
    yield s
    s.stop()


@pytest.fixture(params=["local", "grpc"])
def either(request):
    """The module server's client over the local transport, then over gRPC."""
    c = request.getfixturevalue("client" if request.param == "local" else "grpc_client")
    assert c.local == (request.param == "local")
    return c


def _ours(server):
    """Entries of /dev/shm this process or its server made."""
    mine = f"asarray-client-{os.getpid()}-"
    return sorted(n for n in os.listdir("/dev/shm")
                  if n.startswith(server.prefix) or n.startswith(mine))


def _wait(condition, timeout=10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return False


def _settled(client):
    """The server's Stats once the releases of collected views went out and
    its counts stopped moving (the connections of earlier tests' clients end
    on the server's threads, their descriptors with them)."""
    gc.collect()
    client.flush()
    seen = []

    def steady():
        s = client.stats()
        seen.append((s.tensors, s.segments, s.client_regions, s.fds))
        time.sleep(0.02)
        return len(seen) >= 5 and len(set(seen[-5:])) == 1
    assert _wait(steady), "the server's counts never settled"
    return client.stats()


def _held(stats, fds=True):
    """What a failed batch must leave as it found it."""
    fields = ("tensors", "segments", "bytes_in_use", "client_regions", "connection_leases")
    return {f: getattr(stats, f) for f in fields + (("fds",) if fds else ())}


_RPCS = {"convert_batch": "ConvertBatch", "release": "Release", "renew": "Renew"}


def _raw(client, method, request, fds=()):
    """A request of the proto as it is, over the client's transport: (the
    response, the descriptors that came with it); errors as the client's."""
    try:
        if client.local:
            answer = client._local.call(pb.LocalRequest(**{method: request}), fds)
            if answer is not None:
                return getattr(answer[0], method), answer[1]
        return getattr(client._stub, _RPCS[method])(request, timeout=60), []
    except grpc.RpcError as e:
        raise from_rpc_error(e) from None


def _literal(values):
    """A ConvertRequest of the literal list of integers `values`."""
    item = pb.ConvertRequest()
    nodes = item.source.literal.nodes
    nodes.add().list_length = len(values)
    for v in values:
        nodes.add().int_value = v
    return item


# --- the conformance corpus in batches ----------------------------------------

def _runs():
    return [(c, way) for c in conformance.CASES
            for way in (("shm", "inline") if c["input"]["kind"] == "array" else ("literal",))]


def _batches(seed=20240611):
    """The corpus, each array case in shared memory and inline, shuffled and cut
    into batches of 1 to 64."""
    rng = random.Random(seed)
    runs = _runs()
    rng.shuffle(runs)
    batches, i = [], 0
    while i < len(runs):
        n = rng.randint(1, 64)
        batches.append(runs[i:i + n])
        i += n
    return batches


BATCHES = _batches()


def _recorded(case, way):
    """What the case records for this way in: an error code, or None."""
    if way == "inline" and case["kwargs"].get("copy") is False:
        return "FAILED_PRECONDITION"  # inline bytes cannot be aliased
    return case["expect"].get("error")


def _recorded_tensor(expect):
    raw = base64.b64decode(expect["data"])
    dtype = conformance.DTYPES[expect["dtype"]]
    if not raw:
        flat = torch.empty(0, dtype=dtype)
    elif dtype == torch.bfloat16:
        flat = torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16)
    else:
        flat = torch.frombuffer(bytearray(raw), dtype=dtype)
    return flat.reshape(expect["shape"])


def _outcome(client, fn):
    """("ok", tensor, Handle) or ("error", exception)."""
    try:
        t = fn()
    except AsArrayError as e:
        return ("error", e)
    return ("ok", t, client.handle(t) if t.numel() else None)


def _same_result(got, want, what):
    assert got.dtype == want.dtype, what
    assert tuple(got.shape) == tuple(want.shape), what
    assert got.stride() == want.stride(), what
    assert got.requires_grad == want.requires_grad, what
    assert conformance._same_values(got, want), what


@pytest.mark.parametrize("index", range(len(BATCHES)))
def test_corpus_in_batches_matches_single_calls_and_the_record(either, index):
    client, batch = either, BATCHES[index]
    # The shared-memory inputs of a batch all live in one region (one descriptor).
    storages = {j: conformance._storage(case["input"])
                for j, (case, way) in enumerate(batch) if way == "shm"}
    shared = client.share_tree(storages)
    assert all(isinstance(t, torch.Tensor) for t in shared.values())
    sources, kwargs, keys = [], [], []
    for j, (case, way) in enumerate(batch):
        inp = case["input"]
        if way == "literal":
            sources.append(conformance._decode(inp["value"]))
        else:
            storage = shared[j] if way == "shm" else conformance._storage(inp)
            sources.append(storage.as_strided(inp["shape"], inp["strides"], inp["offset"]))
        kwargs.append(conformance._kwargs(case))
        keys.append(f"{case['id']}/{way}")
    singles = [_outcome(client, lambda: client.asarray(src, **kw))
               for src, kw in zip(sources, kwargs)]
    for (case, way), single, key in zip(batch, singles, keys):
        assert (single[0] == "error") == (_recorded(case, way) is not None), key
        if single[0] == "error":
            assert single[1].code.name == _recorded(case, way), key
    before = client.stats()
    calls = items = 0
    remaining = list(range(len(batch)))
    while remaining:
        calls += 1
        items += len(remaining)
        try:
            got = client.asarray_batch(
                [sources[j] for j in remaining],
                dtype=[kwargs[j].get("dtype") for j in remaining],
                device=[kwargs[j].get("device") for j in remaining],
                copy=[kwargs[j].get("copy") for j in remaining],
                requires_grad=[kwargs[j].get("requires_grad", False) for j in remaining],
                keys=[keys[j] for j in remaining])
        except AsArrayError as e:
            # All or nothing: the first item that fails is the batch's error,
            # in the words of its single call, after its index and key.
            failing = [k for k, j in enumerate(remaining) if singles[j][0] == "error"]
            assert failing, f"no item fails alone, but the batch did: {e}"
            k = failing[0]
            j = remaining[k]
            single = singles[j][1]
            assert e.code == single.code, keys[j]
            assert type(e) is type(single), keys[j]
            assert e.details == f"item {k} ({keys[j]}): {single.details}"
            del remaining[k]
            continue
        assert len(got) == len(remaining)
        for t, j in zip(got, remaining):
            case, way = batch[j]
            assert singles[j][0] == "ok", f"{keys[j]} failed alone: {singles[j][1]}"
            _, want, want_handle = singles[j]
            _same_result(t, want, keys[j])
            expect = case["expect"]
            assert t.stride() == tuple(expect["strides"]), keys[j]
            assert t.requires_grad == expect["requires_grad"], keys[j]
            assert conformance._same_values(t.detach().contiguous(),
                                            _recorded_tensor(expect)), keys[j]
            if t.numel():
                shares = client.handle(t).shares_memory
                assert shares == want_handle.shares_memory, keys[j]
                recorded = case["expect"]["shares_memory"] if way == "shm" else False
                if recorded is not None:
                    assert shares == recorded, keys[j]
        break
    after = client.stats()
    if client.local:  # each call one ConvertBatch of the local transport
        assert after.local_batches - before.local_batches == calls
        assert after.local_batch_items - before.local_batch_items == items
    else:
        assert after.local_batches == before.local_batches


# --- all or nothing -------------------------------------------------------------

BAD_ITEMS = {
    "ragged literal": ([[1, 2], [3]], {}, "INVALID_ARGUMENT"),
    "unknown tensor": (TensorRef("0" * 32, "float32", (1,), (1,)), {}, "NOT_FOUND"),
    "copy=False of heap memory": (np.ones(4, dtype=np.float32), {"copy": False},
                                  "FAILED_PRECONDITION"),
    "requires_grad on integers": ([1, 2], {"requires_grad": True}, "INVALID_ARGUMENT"),
}


def _good_items(client):
    """Items of every kind: copies into the arena (a cast, inline bytes, a
    literal, heap bytes past a datagram), aliases of a region, a held tensor."""
    shared = client.share_tree({"w": np.arange(12, dtype=np.float32).reshape(3, 4),
                                "b": np.arange(5, dtype=np.int16)})
    held = client.upload(np.full(3, 7, dtype=np.int32), ttl_ms=600000)
    items = [
        ("cast", np.arange(6, dtype=np.int32), {"dtype": torch.float64}),
        ("alias", shared["w"].T, {"copy": False}),
        ("literal", [[1, 2.5], [3, 4]], {}),
        ("big", np.random.default_rng(3).standard_normal(20000), {}),  # 160 KB: staged
        ("held", held, {}),
        ("shared cast", shared["b"], {"dtype": torch.float32}),
    ]
    return items, (shared, held)


def _batch_of(client, items):
    return client.asarray_batch(
        [obj for _, obj, _ in items], dtype=[kw.get("dtype") for _, _, kw in items],
        copy=[kw.get("copy") for _, _, kw in items],
        requires_grad=[kw.get("requires_grad", False) for _, _, kw in items],
        keys=[key for key, _, _ in items])


@pytest.fixture(params=["local", "grpc"])
def alone(request):
    """(a server of this test's own, its client over the local transport, then
    over gRPC): no other test's connections end on it meanwhile, so that its
    count of descriptors moves only with what the test does."""
    s = Server()
    try:
        with Client(s.address, local=request.param == "local") as c:
            assert c.local == (request.param == "local")
            yield s, c
    finally:
        s.stop()


def test_a_batch_that_fails_anywhere_keeps_nothing(alone):
    server, client = alone
    good, keep = _good_items(client)
    warm = _batch_of(client, good)  # every kind works, and warms what the client keeps
    assert [float(t.double().sum()) for t in warm[:3]] == [15.0, 66.0, 10.5]
    del warm
    baseline = _settled(client)
    names = _ours(server)
    for what, (obj, kw, code) in BAD_ITEMS.items():
        for k in range(len(good) + 1):
            items = good[:k] + [(f"bad: {what}", obj, kw)] + good[k:]
            with pytest.raises(AsArrayError) as error:
                _batch_of(client, items)
            assert error.value.code.name == code, (what, k)
            assert error.value.details.startswith(f"item {k} (bad: {what}): "), error.value
            # (The descriptors it received may close just after it answers.)
            assert _held(client.stats(), fds=False) == _held(baseline, fds=False), (what, k)
    assert _held(_settled(client)) == _held(baseline)
    assert _ours(server) == names
    del keep


def test_a_failing_batch_still_does_its_releases_and_names_the_key(either):
    client = either
    held = client.upload(np.ones(4, dtype=np.float32), ttl_ms=600000)
    # A tensor the same batch's release_ids release is NOT_FOUND: every
    # source is resolved after the releases.
    request = pb.ConvertBatchRequest(items=[_literal([1, 2]), pb.ConvertRequest()],
                                     release_ids=[held.id], keys=["first", "second"])
    request.items[1].source.tensor_id = held.id
    with pytest.raises(AsArrayNotFoundError) as error:
        _raw(client, "convert_batch", request)
    assert error.value.details.startswith("item 1 (second): ")
    with pytest.raises(AsArrayNotFoundError):
        client.renew(held)  # released all the same


# --- bad requests, with their codes -------------------------------------------

def test_an_empty_batch_is_invalid(either):
    with pytest.raises(AsArrayError) as error:
        _raw(either, "convert_batch", pb.ConvertBatchRequest())
    assert error.value.code.name == "INVALID_ARGUMENT"
    assert either.asarray_batch([]) == []  # the client asks nothing for nothing
    assert either.asarray_tree({"a": "text", "b": [None]}) == {"a": "text", "b": [None]}


@pytest.mark.parametrize("field", ["return_data", "ttl_ms", "named_memory", "release_ids"])
def test_item_fields_that_belong_to_the_batch_are_invalid(either, field):
    item = _literal([1])
    if field == "release_ids":
        item.release_ids.append("0" * 32)
    else:
        setattr(item, field, True if field != "ttl_ms" else 1000)
    before = _held(_settled(either), fds=False)
    with pytest.raises(AsArrayError) as error:
        _raw(either, "convert_batch", pb.ConvertBatchRequest(items=[_literal([2]), item]))
    assert error.value.code.name == "INVALID_ARGUMENT"
    assert error.value.details.startswith("item 1: ")
    assert _held(_settled(either), fds=False) == before


def test_keys_are_one_per_item_or_none(either):
    with pytest.raises(AsArrayError) as error:
        _raw(either, "convert_batch",
             pb.ConvertBatchRequest(items=[_literal([1]), _literal([2])], keys=["only one"]))
    assert error.value.code.name == "INVALID_ARGUMENT"


def test_a_local_batch_names_every_descriptor_it_attaches(client):
    shared = client.share_tree([np.ones(4, dtype=np.float32)])
    region = client._regions[shared[0].ctypes.data]
    before = _held(_settled(client), fds=False)
    unnamed = pb.ConvertBatchRequest(items=[_literal([1])])
    past = pb.ConvertBatchRequest(items=[_literal([1]), pb.ConvertRequest()])
    past.items[1].source.fd.fd_index, past.items[1].source.fd.size = 1, 16
    past.items[1].source.fd.dtype = pb.DTYPE_FLOAT32
    past.items[1].source.fd.layout.shape.append(4)
    past.items[1].source.fd.layout.strides.append(1)
    for request in (unnamed, past):
        with pytest.raises(AsArrayError) as error:
            _raw(client, "convert_batch", request, [region.fd])
        assert error.value.code.name == "INVALID_ARGUMENT", request
    assert _held(_settled(client), fds=False) == before


def test_a_batch_holds_at_most_4096_items(server, grpc_client):
    before = _held(_settled(grpc_client), fds=False)
    with pytest.raises(AsArrayError) as error:
        grpc_client.asarray_batch([[i] for i in range(100_000)])
    assert error.value.code.name == "INVALID_ARGUMENT"
    with pytest.raises(AsArrayError) as error:
        grpc_client.asarray_batch([[i] for i in range(4097)])
    assert error.value.code.name == "INVALID_ARGUMENT"
    assert _held(_settled(grpc_client), fds=False) == before
    names = _ours(server)
    most = grpc_client.asarray_batch([[i] for i in range(4096)])
    assert [int(t[0]) for t in most[::1000]] == [0, 1000, 2000, 3000, 4000]
    # One arena: a single segment of the server's holds every result.
    arenas = {grpc_client.handle(t).proto.shared_memory.name for t in most}
    assert len(arenas) == 1
    assert len(set(_ours(server)) - set(names)) == 1
    del most
    assert _held(_settled(grpc_client), fds=False) == before


def test_a_batch_past_the_message_limit_is_resource_exhausted():
    small = Server(args=["--max_message_bytes=1048576"])
    try:
        with Client(small.address, local=False) as c:
            before = _held(_settled(c), fds=False)
            parts = [np.full(200_000, i, dtype=np.float32) for i in range(2)]  # 1.6 MB in all
            with pytest.raises(AsArrayError) as error:
                c.asarray_batch(parts)
            assert error.value.code.name == "RESOURCE_EXHAUSTED"
            assert _held(_settled(c), fds=False) == before
            assert [float(t[0]) for t in c.asarray_batch(parts[:1])] == [0.0]  # one fits
    finally:
        small.stop()


def test_a_local_answer_past_a_datagram_is_resource_exhausted(client):
    before = _held(_settled(client), fds=False)
    # Two thousand small results: their handles take more than 64 KiB.
    with pytest.raises(AsArrayError) as error:
        client.asarray_batch([[i] for i in range(2000)])
    assert error.value.code.name == "RESOURCE_EXHAUSTED"
    assert _held(_settled(client), fds=False) == before
    assert len(client.asarray_batch([[i] for i in range(200)])) == 200


def test_past_16_descriptors_is_resource_exhausted(client):
    regions = [client.empty((4,), torch.float32) for _ in range(17)]
    refs = [client.ref(r) for r in regions]
    before = _held(_settled(client), fds=False)
    # The request would attach 17 memfds: the client refuses to send it.
    with pytest.raises(AsArrayError) as error:
        client.asarray_batch(regions, copy=False)
    assert error.value.code.name == "RESOURCE_EXHAUSTED"
    # The answer would attach 17: the server refuses to keep any.
    with pytest.raises(AsArrayError) as error:
        client.asarray_batch(refs, copy=False)
    assert error.value.code.name == "RESOURCE_EXHAUSTED"
    assert _held(_settled(client), fds=False) == before
    assert len(client.asarray_batch(refs[:16], copy=False)) == 16


def test_release_and_renew_refuse_a_repeated_id_and_do_nothing(either):
    a = either.upload(np.ones(2, dtype=np.float32), ttl_ms=600000)
    b = either.upload(np.zeros(2, dtype=np.float32), ttl_ms=600000)
    for method, request in [
            ("release", pb.ReleaseRequest(id=a.id, more_ids=[b.id, a.id])),
            ("release", pb.ReleaseRequest(id=b.id, more_ids=[b.id])),
            ("renew", pb.RenewRequest(id=a.id, ttl_ms=1000, more_ids=[a.id])),
            ("renew", pb.RenewRequest(id=a.id, ttl_ms=1000, more_ids=[b.id, b.id]))]:
        with pytest.raises(AsArrayError) as error:
            _raw(either, method, request)
        assert error.value.code.name == "INVALID_ARGUMENT", (method, request)
    # Nothing was done: both live, with the leases they had.
    ends = either.renew([a, b], ttl_ms=600000)
    assert len(ends) == 2 and all(e > time.time() * 1000 + 500_000 for e in ends)
    # The client sends each id once, and many in one call.
    ends = either.renew([a, b, a], ttl_ms=600000)
    assert len(ends) == 3 and ends[0] == ends[2]
    either.release([a, b, a])
    for ref in (a, b):
        with pytest.raises(AsArrayNotFoundError):
            either.renew(ref)


def test_renew_and_release_many_in_one_call(either):
    refs = [either.upload(np.full(2, i, dtype=np.int64), ttl_ms=60000) for i in range(5)]
    response, _ = _raw(either, "renew", pb.RenewRequest(
        id=refs[0].id, ttl_ms=600000, more_ids=[r.id for r in refs[1:]]))
    assert len(response.more_lease_expires_unix_ms) == 4
    assert all(e > time.time() * 1000 + 500_000 for e in response.more_lease_expires_unix_ms)
    with pytest.raises(AsArrayNotFoundError):  # an unknown one, after the others are done
        either.release(refs[:2] + ["f" * 32] + refs[2:])
    for ref in refs:
        with pytest.raises(AsArrayNotFoundError):
            either.renew(ref)


def test_heap_bytes_past_a_datagram_go_in_one_staging_memfd(client):
    arrays = [np.arange(5000, dtype=np.float64) + i for i in range(3)]  # 40 KB each
    got = client.asarray_batch(arrays + [[1, 2]])
    for t, a in zip(got, arrays):
        assert torch.equal(t, torch.from_numpy(a))
        assert not client.handle(t).shares_memory  # a copy of the caller's array
    # The first goes inline; the two that would take the datagram past 64
    # KiB share one memfd of the client's, which their results alias.
    handles = [client.handle(t).proto.fd for t in got[:3]]
    assert not handles[0].request_fd
    assert handles[1].request_fd and handles[2].request_fd
    assert handles[1].fd_index == handles[2].fd_index
    assert handles[1].offset % 64 == 0 and handles[2].offset % 64 == 0
    assert handles[1].offset != handles[2].offset


def test_a_request_past_a_datagram_goes_over_grpc_unless_it_names_a_region(client):
    big_literal = list(range(20_000))  # some 60 KB of literal nodes
    heap = np.ones(100_000, dtype=np.float32)  # would be staged
    got = client.asarray_batch([heap, big_literal])
    assert torch.equal(got[0], torch.ones(100_000)) and got[1].tolist() == big_literal
    # Every item went inline over gRPC, which names its results in /dev/shm.
    assert all(client.handle(t).proto.HasField("shared_memory") for t in got)
    shared = client.share_tree([np.ones(4, dtype=np.float32)])
    before = _held(_settled(client), fds=False)
    with pytest.raises(AsArrayError) as error:
        client.asarray_batch([shared[0], big_literal])
    assert error.value.code.name == "RESOURCE_EXHAUSTED"
    assert _held(_settled(client), fds=False) == before


# --- one arena -------------------------------------------------------------------

def test_copies_share_one_memfd_in_the_answer(client):
    shared = client.share_tree([np.arange(8, dtype=np.float32)])
    region = client._regions[shared[0].ctypes.data]
    request = pb.ConvertBatchRequest()
    for n in (1, 5, 17, 100):
        item = request.items.add()
        inline = item.source.inline_array
        inline.dtype, inline.storage = pb.DTYPE_INT32, np.arange(n, dtype=np.int32).tobytes()
        inline.layout.shape.append(n)
        inline.layout.strides.append(1)
        item.options.dtype = pb.DTYPE_FLOAT64
    alias = request.items.add()
    alias.source.fd.fd_index, alias.source.fd.size = 0, 32
    alias.source.fd.dtype = pb.DTYPE_FLOAT32
    alias.source.fd.layout.shape.append(8)
    alias.source.fd.layout.strides.append(1)
    alias.options.copy = False
    before = _settled(client)
    response, received = _raw(client, "convert_batch", request, [region.fd])
    try:
        assert len(received) == 1  # one arena, one descriptor, for every copy
        copies, aliased = response.handles[:4], response.handles[4]
        assert all(h.fd.fd_index == 0 and not h.fd.request_fd for h in copies)
        offsets = [h.fd.offset for h in copies]
        assert all(o % 64 == 0 for o in offsets) and len(set(offsets)) == 4
        assert [h.fd.size for h in copies] == [8, 40, 136, 800]
        assert aliased.fd.request_fd and aliased.shares_memory and aliased.fd.fd_index == 0
        assert len({h.id for h in response.handles}) == 5
        assert client.stats().segments == before.segments + 1
    finally:
        for fd in received:
            os.close(fd)
        ids = [h.id for h in response.handles]
        _raw(client, "release", pb.ReleaseRequest(id=ids[0], more_ids=ids[1:]))
    assert _settled(client).segments == before.segments


def test_the_arena_goes_with_its_last_handle(server, either):
    client = either
    shared = client.share_tree({"a": np.arange(10, dtype=np.float32),
                                "b": np.ones((3, 4), dtype=np.int16)})
    before = _settled(client)
    names = _ours(server)
    tree = {"copies": [np.arange(n, dtype=np.int64) * 2 for n in (3, 300, 3000)],
            "literal": [[1, 2], [3, 4]], "alias": shared["a"], "again": (shared["b"],)}
    out = client.asarray_tree(tree)
    after = client.stats()
    assert after.tensors == before.tensors + 6
    assert after.segments == before.segments + 1  # every copy in one arena
    copies = out["copies"] + [out["literal"]]
    handles = [client.handle(t) for t in copies]
    if client.local:
        assert all(h.proto.HasField("fd") and not h.proto.fd.request_fd for h in handles)
        locations = [h.proto.fd for h in handles]
    else:
        assert len({h.proto.shared_memory.name for h in handles}) == 1
        assert len(set(_ours(server)) - set(names)) == 1
        locations = [h.proto.shared_memory for h in handles]
    assert len({where.offset for where in locations}) == 4
    # Mapped once: every copy views the one mapping, at its own offset.
    assert len({t.data_ptr() - where.offset for t, where in zip(copies, locations)}) == 1
    for alias in (out["alias"], out["again"][0]):
        handle = client.handle(alias)
        assert handle.shares_memory and not handle.warnings
        if client.local:
            assert handle.proto.fd.request_fd
    out["alias"][0] = -1  # the very same memory
    assert shared["a"][0] == -1
    assert torch.equal(out["copies"][2], torch.arange(3000) * 2)
    last = out["copies"][1]
    del out, copies, handles, alias, handle
    held = _settled(client)
    assert held.tensors == before.tensors + 1 and held.segments == before.segments + 1
    assert int(last[299]) == 598
    del last
    gone = _settled(client)
    assert gone.tensors == before.tensors and gone.segments == before.segments
    assert gone.bytes_in_use == before.bytes_in_use
    assert _ours(server) == names


# --- trees -----------------------------------------------------------------------

def _torch_tree(tree, **kw):
    """torch.asarray at the leaves the client converts, for reference."""
    if isinstance(tree, dict):
        return {k: _torch_tree(v, **kw) for k, v in tree.items()}
    if isinstance(tree, tuple) and hasattr(tree, "_fields"):
        return type(tree)(*[_torch_tree(v, **kw) for v in tree])
    if isinstance(tree, list) and not all(isinstance(v, (int, float, list)) for v in tree):
        return [_torch_tree(v, **kw) for v in tree]
    if isinstance(tree, tuple):
        return tuple(_torch_tree(v, **kw) for v in tree)
    if isinstance(tree, (np.ndarray, np.number, torch.Tensor, int, float, complex, list)):
        return torch.asarray(tree, **kw)
    return tree


def _key(path):
    """A key path as the server's error messages give it: as it reads, with a
    backslash doubled (and bytes that are not printable ASCII as \\xNN)."""
    return path.replace("\\", "\\\\")


def _assert_same_tree(got, want):
    assert type(got) is type(want), (got, want)
    if isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _assert_same_tree(got[k], want[k])
    elif isinstance(want, (list, tuple)):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            _assert_same_tree(g, w)
    elif isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape, (got, want)
        assert got.requires_grad == want.requires_grad
        assert torch.equal(got.detach(), want.detach())
    else:
        assert got is want


def _tree():
    return {
        "images": [np.arange(24, dtype=np.uint8).reshape(2, 3, 4), torch.ones(2, 2)],
        "labels": [1, 2, 3],
        "boxes": [[0.5, 1.5], [2.5, 3.5]],
        "pair": Pair(x=2.5, y=(torch.arange(6).reshape(2, 3).T, "left")),
        "meta": {"name": "sample-7", "nothing": None, "scale": 0.25, "flag": True},
        "mixed": [np.zeros(3, dtype=np.int16), 7, "seven"],
        "samples": [Sample(images=np.ones((1, 2), dtype=np.float64), labels=[[1], [2]])],
    }


def test_trees_come_back_in_their_structure(either):
    tree = _tree()
    got = either.asarray_tree(tree)
    _assert_same_tree(got, _torch_tree(tree))
    assert got["pair"].y[0].stride() == (1, 3)  # torch keeps the transpose's strides
    assert got["meta"]["name"] is tree["meta"]["name"]
    as_float = either.asarray_tree(tree["samples"], dtype=torch.float32, requires_grad=True)
    _assert_same_tree(as_float, _torch_tree(tree["samples"], dtype=torch.float32,
                                            requires_grad=True))
    # A numpy scalar is a 0-d array, as numpy.asarray makes it (torch 1.13
    # makes a 1-d tensor of its buffer).
    scalars = either.asarray_tree((np.float32(2.5), np.int16(-3), np.bool_(True)))
    assert [(t.dtype, t.shape, t.item()) for t in scalars] == [
        (torch.float32, (), 2.5), (torch.int16, (), -3), (torch.bool, (), True)]
    leaves = either.asarray_tree([[], [(1, 2), (3, 4)], ["a", 1.5]])
    assert leaves[0].shape == (0,) and leaves[0].dtype == torch.float32  # as torch.asarray([])
    assert leaves[1].tolist() == [[1, 2], [3, 4]]
    assert leaves[2][0] == "a" and leaves[2][1].dtype == torch.float32


def test_like_numpy_gives_numpy_leaves(either):
    got = either.asarray_tree({"a": [1, 2], "b": (np.arange(3, dtype=np.int16), None),
                               "c": torch.tensor([1.5], dtype=torch.bfloat16)}, like="numpy")
    assert isinstance(got["a"], np.ndarray) and got["a"].dtype == np.int64
    assert isinstance(got["b"], tuple) and got["b"][1] is None
    assert got["b"][0].dtype == np.int16 and got["b"][0].tolist() == [0, 1, 2]
    assert got["c"].dtype == np.uint16  # bfloat16 as its bits
    assert torch.equal(torch.from_numpy(got["c"].view(np.int16)).view(torch.bfloat16),
                       torch.tensor([1.5], dtype=torch.bfloat16))


def test_errors_name_the_leaf_by_its_key_path(either):
    with pytest.raises(ValueError) as error:
        either.asarray_tree({"images": [np.ones(2), [[1, 2], [3]]]})
    assert error.value.details.startswith("item 1 (" + _key("['images'][1]") + "): ")
    with pytest.raises(RuntimeError) as error:
        either.asarray_tree([Sample(images=np.ones(2), labels=[1, 2])], requires_grad=True)
    assert error.value.details.startswith("item 1 ([0].labels): ")
    with pytest.raises(TypeError) as error:  # refused by the client itself, named the same
        either.asarray_tree({"x": [1], "big-endian": np.ones(2, dtype=">f4")})
    assert str(error.value).startswith("item 1 (['big-endian']): ")


def test_share_tree_puts_every_array_in_one_region_that_batches_alias(either):
    tree = {"w": np.arange(12, dtype=np.float32).reshape(3, 4),
            "bias": torch.arange(3, dtype=torch.bfloat16),
            "steps": (np.arange(5, dtype=np.int64)[::2], np.ones(0, dtype=np.int8)),
            "name": "layer"}
    shared = either.share_tree(tree)
    assert isinstance(shared["w"], np.ndarray) and isinstance(shared["bias"], torch.Tensor)
    assert shared["name"] is tree["name"]
    kept = either.share_tree({"lr": 0.5, "sizes": [1, 2], "w": tree["w"]}, like="torch")
    assert kept["lr"] == 0.5 and kept["sizes"] == [1, 2]  # literals stay literals
    assert isinstance(kept["w"], torch.Tensor)
    assert torch.equal(kept["w"], torch.from_numpy(tree["w"]))
    assert torch.equal(shared["bias"], tree["bias"])
    assert np.array_equal(shared["steps"][0], [0, 2, 4]) and shared["steps"][0].flags.c_contiguous
    arrays = [shared["w"], shared["bias"].view(torch.int16).numpy(), shared["steps"][0]]
    starts = [a.ctypes.data for a in arrays]
    assert all(s % 64 == 0 for s in starts)
    assert max(starts) - min(starts) < 4096  # one region
    out = either.asarray_tree(shared, copy=False)
    for key in ("w", "bias"):
        handle = either.handle(out[key])
        assert handle.shares_memory
        if either.local:
            assert handle.proto.fd.request_fd and handle.proto.fd.fd_index == 0
    assert either.handle(out["steps"][0]).shares_memory
    if not either.local:
        names = {either.handle(out[k]).proto.shared_memory.name for k in ("w", "bias")}
        assert len(names) == 1
    out["w"][1, 1] = 100  # writes go both ways: the same memory
    assert shared["w"][1, 1] == 100
    shared["bias"][2] = -4
    assert float(out["bias"][2]) == -4
    assert out["name"] == "layer"


CONSUMER = """
import json, pickle, sys, torch
from asarray_client import Client
c = Client(sys.argv[1])
ref = pickle.loads(bytes.fromhex(sys.stdin.readline()))
before = c.stats()
tree = c.asarray_tree(ref, copy=False)
after = c.stats()
answer = json.dumps({
    "calls": [after.local_batches - before.local_batches,
              after.local_converts - before.local_converts],
    "types": [type(tree).__name__, type(tree["pair"]).__name__, tree["meta"]],
    "shares": [c.handle(t).shares_memory for t in
               (tree["heap"], tree["shared"], tree["literal"], tree["pair"].x)],
    "values": [tree["heap"].tolist(), tree["shared"].tolist(), tree["literal"].tolist(),
               tree["pair"].x.tolist(), tree["pair"].y],
    "dtypes": [str(tree["heap"].dtype), str(tree["literal"].dtype)],
})
tree["shared"][0, 0] = -9                  # the producer's memory
print(answer, flush=True)
sys.stdin.readline()
"""


def test_a_tree_ref_is_taken_whole_by_another_process(server):
    producer = Client(server.address)
    baseline = _settled(producer)
    shared = producer.share_tree({"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    tree = {"heap": np.arange(4, dtype=np.int16), "shared": shared["w"], "literal": [1.5, 2.5],
            "pair": Pair(x=torch.ones(2), y="right"), "meta": "epoch-3"}
    before = producer.stats()
    ref = producer.ref(tree, ttl_ms=600000)
    assert producer.stats().local_batches == before.local_batches + 1  # one call
    assert isinstance(ref, TreeRef) and len(ref.refs) == 4
    assert isinstance(ref.tree["pair"], Pair) and ref.tree["meta"] == "epoch-3"
    payload = pickle.dumps(ref).hex()
    producer.close()  # TTL leases: the tensors outlive the producer's connection
    child = subprocess.Popen([sys.executable, "-c", CONSUMER, server.address],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ))
    try:
        child.stdin.write(payload + "\n")
        child.stdin.flush()
        answer = json.loads(child.stdout.readline())
        assert answer["calls"] == [1, 0]  # one batch, no single conversion
        assert answer["types"] == ["dict", "Pair", "epoch-3"]
        assert answer["shares"] == [True, True, True, True]
        assert answer["values"] == [[0, 1, 2, 3], [[0, 1, 2], [3, 4, 5]], [1.5, 2.5],
                                    [1.0, 1.0], "right"]
        assert answer["dtypes"] == ["torch.int16", "torch.float32"]
        assert shared["w"][0, 0] == -9  # the child wrote into this process's region
    finally:
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(timeout=30)
    with Client(server.address) as other:
        assert other.renew(ref, ttl_ms=600000) and len(other.renew(ref, 600000)) == 4
        other.release(ref)  # all four in one call
        with pytest.raises(AsArrayNotFoundError) as error:
            other.asarray_tree(ref)
        assert error.value.details.startswith("item 0 (" + _key("['heap']") + "): ")
        assert _held(_settled(other), fds=False)["tensors"] == baseline.tensors


def test_ref_of_a_tree_over_grpc_and_an_array_as_before(server, grpc_client, client):
    ref = grpc_client.ref({"a": np.arange(3), "b": [1, 2]}, ttl_ms=60000)
    got = client.asarray_tree(ref)  # another client takes it
    assert got["a"].tolist() == [0, 1, 2] and got["b"].tolist() == [1, 2]
    client.release(ref)
    array = client.empty((4,), torch.float32)
    assert isinstance(client.ref(array), TensorRef)
    with pytest.raises(TypeError):
        client.ref(array, ttl_ms=1000)
    with pytest.raises(TypeError):
        client.asarray(ref)


def test_a_remote_client_gets_trees_as_bytes(remote):
    tree = {"x": np.arange(6, dtype=np.float32).reshape(2, 3).T, "y": [1, 2], "z": "text"}
    got = remote.asarray_tree(tree, dtype=torch.float64)
    want = _torch_tree(tree, dtype=torch.float64)
    _assert_same_tree(got, want)
    assert got["x"].stride() == want["x"].stride()
    assert remote.list() == []  # read back, then released
    with pytest.raises(AsArrayError) as error:
        remote.asarray_tree({"ok": [1], "bad": [[1], [2, 3]]})
    assert error.value.details.startswith("item 1 (" + _key("['bad']") + "): ")
    assert remote.list() == []


def test_the_leaves_of_a_region_travel_as_views_of_one_span(server):
    """ref(tree) holds the span the leaves of one region cover once; the
    consumer takes it in one call of one item and makes each leaf a view of
    it, the very memory of the producer's region; with a cast each leaf is
    taken as a view on the server instead."""
    from asarray_client import ViewRef
    with Client(server.address) as producer, Client(server.address) as consumer:
        shared = producer.share_tree({
            "images": torch.arange(2 * 3 * 4 * 5, dtype=torch.uint8).reshape(2, 3, 4, 5),
            "labels": torch.tensor([7, 9], dtype=torch.int64),
            "half": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
            "t": np.arange(12, dtype=np.float32).reshape(3, 4)[:, ::2]})
        tree = dict(shared, strided=shared["images"][:, ::2, 1:])  # a view within the region
        ref = producer.ref(tree, ttl_ms=60000)
        assert all(isinstance(r, ViewRef) for r in ref.refs)
        assert len(set(ref.ids)) == 1  # one span held for the five
        before = consumer.stats()
        got = consumer.asarray_tree(ref, copy=False)
        after = consumer.stats()
        assert after.local_batches == before.local_batches + 1
        assert after.local_batch_items == before.local_batch_items + 1
        assert after.tensors == before.tensors + 1
        for key in ("images", "labels", "half"):
            assert torch.equal(got[key], shared[key]), key
            assert got[key].dtype == shared[key].dtype
        assert torch.equal(got["t"], torch.from_numpy(shared["t"]))
        assert torch.equal(got["strided"], tree["strided"])
        assert got["strided"].stride() == tree["strided"].stride() == (60, 40, 5, 1)
        got["labels"][1] = -1  # the producer's memory
        assert int(shared["labels"][1]) == -1
        cast = consumer.asarray_tree(ref, dtype=torch.float64)
        assert cast["labels"].tolist() == [7.0, -1.0] and cast["images"].dtype == torch.float64
        # The consumer's lease on the span ends with the last view of it.
        span = consumer.handle(got["images"]).id
        assert consumer.handle(got["labels"]).id == span  # one handle for every leaf
        images = got["images"]
        del got, cast
        gc.collect()
        consumer.flush()
        assert span in {h.id for h in consumer.list()}  # `images` still views it
        assert int(images[1, 2, 3, 4]) == (2 * 3 * 4 * 5 - 1) % 256
        del images
        gc.collect()
        consumer.flush()
        assert span not in {h.id for h in consumer.list()}
        producer.release(ref)
        assert not set(ref.ids) & {h.id for h in consumer.list()}
