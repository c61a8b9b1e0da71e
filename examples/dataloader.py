#!/usr/bin/python3
"""A torch.utils.data.DataLoader whose workers collate each batch straight
into shared memory, and whose main process receives it through asarrayd with
no copy.

    PYTHONPATH=build/python /usr/bin/python3 examples/dataloader.py \
        [--server unix:/path/asarrayd.sock] [--batches 100] [--rounds 3]

Two pieces:
- SharedCollate, the DataLoader's collate_fn. In each worker it stacks the
  samples of a batch into one region of the worker's asarrayd client (every
  field at a 64-byte aligned offset, written once, where the main process
  will read it) and returns client.ref(batch): a TreeRef of a few hundred
  bytes, which the DataLoader's own queue carries to the main process in
  place of the batch's tensors.
- SharedLoader, a wrapper around that DataLoader. For each TreeRef it calls
  client.asarray_tree(ref, copy=False) (one call that maps every tensor of
  the worker's region) and releases the worker's hold: the batch's memory
  then lives exactly as long as the main process's tensors.

The stock DataLoader with the same workers collates into the worker's heap,
and its queue moves every tensor's storage into shared memory on the way.
Run as a script, this compares the two on the same synthetic dataset, in
interleaved rounds, and prints batches per second for each.
"""
import argparse
import statistics
import sys
import time

import torch
from torch.utils.data import DataLoader, Dataset

from asarray_client import Client

ALIGNMENT = 64


class SyntheticImages(Dataset):
    """Deterministic samples, cheap to make, so that what a loader costs is
    its handoff: a dict of an `image_shape` uint8 image, an int64 label and
    `features` float32 scalars."""

    def __init__(self, length, image_shape=(3, 224, 224), features=14):
        self.length, self.image_shape, self.features = length, image_shape, features

    def __len__(self):
        return self.length

    def __getitem__(self, i):
        sample = {"images": torch.full(self.image_shape, i % 251, dtype=torch.uint8),
                  "labels": torch.tensor(i, dtype=torch.int64)}
        for f in range(self.features):
            sample[f"f{f}"] = torch.tensor(i + f / 16, dtype=torch.float32)
        return sample


class SharedCollate:
    """collate_fn for a DataLoader: a batch of samples (dicts of tensors of
    equal shapes) stacked into one region of this process's asarrayd client;
    returns its TreeRef. Each worker makes its own client on first use."""

    def __init__(self, address=None):
        self.address = address
        self._client = None

    def __getstate__(self):
        return {"address": self.address, "_client": None}  # a client per process

    def client(self):
        if self._client is None:
            self._client = Client(self.address)
        return self._client

    def __call__(self, samples):
        client = self.client()
        fields, total = [], 0
        for key, first in samples[0].items():
            shape = (len(samples), *first.shape)
            nbytes = first.element_size() * first.numel() * len(samples)
            offset = -(-total // ALIGNMENT) * ALIGNMENT
            fields.append((key, shape, first.dtype, offset, nbytes))
            total = offset + nbytes
        block = client.empty((max(total, 1),), torch.uint8)
        batch = {}
        for key, shape, dtype, offset, nbytes in fields:
            out = block[offset:offset + nbytes].view(dtype).view(shape)
            torch.stack([s[key] for s in samples], out=out)
            batch[key] = out
        return client.ref(batch)


class SharedLoader:
    """Iterates a DataLoader made with SharedCollate: each batch as tensors
    mapped from the worker's region, with no copy."""

    def __init__(self, loader, client):
        self.loader, self.client = loader, client

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for ref in self.loader:
            batch = self.client.asarray_tree(ref, copy=False)
            self.client.release(ref)  # the worker's hold; ours keeps the memory
            yield batch


def loaders(dataset, address, client, batch_size=32, workers=2):
    """The stock DataLoader and the shared one, alike but for collation."""
    # Workers are spawned, not forked: a process that has gRPC channels (the
    # main process's client) must not fork.
    context = "spawn" if workers > 0 else None
    stock = DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                       persistent_workers=workers > 0, multiprocessing_context=context)
    shared = SharedLoader(DataLoader(dataset, batch_size=batch_size, num_workers=workers,
                                     collate_fn=SharedCollate(address),
                                     persistent_workers=workers > 0,
                                     multiprocessing_context=context), client)
    return stock, shared


def consume(batch):
    """What a training step would read first: an element of every tensor."""
    return sum(float(t.reshape(-1)[-1]) for t in batch.values())


def batches_per_second(loader):
    start = time.perf_counter()
    count = 0
    for batch in loader:
        consume(batch)
        count += 1
    return count / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", default=None, help="asarrayd's address (its default socket)")
    parser.add_argument("--batches", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dataset = SyntheticImages(args.batches * args.batch_size)
    client = Client(args.server)
    stock, shared = loaders(dataset, args.server, client, args.batch_size, args.workers)
    # One epoch each first: the workers start, the client's regions warm up.
    batches_per_second(stock)
    batches_per_second(shared)
    rates = {"stock": [], "asarrayd": []}
    for r in range(args.rounds):
        pair = [("stock", stock), ("asarrayd", shared)]
        for name, loader in pair if r % 2 == 0 else pair[::-1]:
            rates[name].append(batches_per_second(loader))
    ratios = [a / s for a, s in zip(rates["asarrayd"], rates["stock"])]
    print(f"{args.batches} batches of {args.batch_size}, {args.workers} workers, "
          f"{args.rounds} interleaved rounds")
    for name, values in rates.items():
        print(f"  {name:9s} {statistics.median(values):8.1f} batches/s "
              f"(per round: {', '.join(f'{v:.1f}' for v in values)})")
    print(f"  asarrayd / stock: {statistics.median(ratios):.2f}x "
          f"({min(ratios):.2f}-{max(ratios):.2f})")
    client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
