"""examples/dataloader.py on small data: the shared loader yields exactly
the stock DataLoader's batches, each tensor mapped from a worker's region
(not a copy), and nothing stays held once the batches are gone."""
import gc
import os
import sys
import time

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import dataloader  # noqa: E402
from asarray_client import Client  # noqa: E402
from conftest import Server  # noqa: E402


@pytest.fixture(scope="module")
def own_server():
    """A server of this module's alone, so that its counts are this test's."""
    s = Server()
    yield s
    s.stop()


def held(client, want=0, seconds=10):
    """The tensors the server holds, once they are `want` or time is up
    (workers that shut down end their connections' leases as they go)."""
    deadline = time.monotonic() + seconds
    while True:
        client.flush()
        count = client.stats().tensors
        if count == want or time.monotonic() > deadline:
            return count
        time.sleep(0.02)


@pytest.mark.parametrize("workers", [0, 2])
def test_shared_batches_equal_the_stock_loaders(own_server, workers):
    server = own_server
    dataset = dataloader.SyntheticImages(22, image_shape=(3, 8, 8), features=3)
    with Client(server.address) as client:
        assert held(client) == 0
        stock, shared = dataloader.loaders(dataset, server.address, client, batch_size=4,
                                           workers=workers)
        got = list(shared)
        want = list(stock)
        assert len(got) == len(want) == 6  # the last batch holds 2
        for g, w in zip(got, want):
            assert g.keys() == w.keys()
            for key in w:
                assert g[key].dtype == w[key].dtype, key
                assert g[key].shape == w[key].shape, key
                assert torch.equal(g[key], w[key]), key
        # Every field of a batch is a view of one region of the worker's,
        # 64-byte aligned, which this process mapped: one mapping a batch.
        for g in got:
            pointers = sorted(t.data_ptr() for t in g.values())
            assert all(p % dataloader.ALIGNMENT == 0 for p in pointers)
            span = max(t.data_ptr() + t.numel() * t.element_size() for t in g.values())
            assert span - pointers[0] < 4 << 20
            handle = client.handle(g["images"])
            assert handle.shares_memory
        del got, g, stock, shared
        gc.collect()
        assert held(client) == 0


def test_the_script_reports_both_loaders(server, capsys, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["dataloader.py", "--server", server.address,
                                      "--batches", "4", "--batch-size", "4", "--rounds", "2"])
    assert dataloader.main() == 0
    out = capsys.readouterr().out
    assert "stock" in out and "asarrayd / stock" in out
