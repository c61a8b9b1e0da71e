#!/usr/bin/python3
"""Batches handed from process A to process B, like for like against
torch.multiprocessing: the time from A holding a batch until B holds a
readable view of every tensor in it, p50.

    PYTHONPATH=build/python /usr/bin/python3 bench/batch_bench.py \
        --asarrayd build/server/asarrayd [--rounds 5] [--json out.json]

Batches:
  dataloader  {images: (32, 3, 224, 224) uint8, labels: (32,) int64, and 14
              tensors (32,) float32}: 16 tensors, what a DataLoader collates;
  small       256 tensors of 1 KiB (float32 (256,)), in a list.

Ways, as in bench/handoff_vs_torch_mp.py:
  no copy   the batch is in shared memory before the clock starts. torch.mp:
            every tensor made with share_memory_() and filled; asarrayd: the
            batch made by client.share_tree() (one region).
  one copy  the batch is in A's heap when the clock starts. torch.mp:
            pickling moves each storage into shared memory; asarrayd:
            share_tree() copies the whole batch into one region.

Contenders:
  torch.mp file_descriptor, torch.mp file_system   A sends the batch.
  asarrayd batch      A sends client.ref(batch) (one ConvertBatch that holds
                      every tensor); B calls client.asarray_tree(ref,
                      copy=False) (one ConvertBatch that takes them all).
  asarrayd per tensor A sends client.ref(t) of each tensor (one Convert
                      each); B calls client.asarray(ref, copy=False) on each.
Every contender crosses the same channel, a multiprocessing Pipe (torch's
reductions pickle onto it as onto a Queue, which adds a feeder thread), to a
consumer that lives across runs; B reads an element of every tensor. The
contenders are interleaved: each round runs a batch of runs of each in turn,
in a rotating order. Reported: the median over rounds of each contender's
p50, and ratios as median (lowest-highest) and best over rounds.

B's asarray_tree() of a TreeRef takes the span the leaves of one region share
once and makes each leaf a view of it in this process. The server's own cost
per item is measured apart, from its Stats totals in the same rounds (request
received to answer ready, summed): one Convert of a view of the held span, a
ConvertBatch of 1 and a ConvertBatch of 16 such views (asarray_batch, an item
each), each repeated; each extra item's cost is (batch of 16 - batch of 1) /
15, against the single Convert.
"""
import argparse
import json
import os
import statistics
import sys
import time

import torch
import torch.multiprocessing as mp

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from handoff_vs_torch_mp import (  # noqa: E402
    Harness, STRATEGIES, ratio_summary, rotated, serve)

RUNS = {"dataloader": 30, "small": 15}


def make_batch(kind):
    """A fresh batch of `kind`, in A's heap, every element written."""
    if kind == "dataloader":
        batch = {"images": torch.randint(0, 255, (32, 3, 224, 224), dtype=torch.uint8),
                 "labels": torch.arange(32, dtype=torch.int64)}
        for i in range(14):
            batch[f"f{i}"] = torch.full((32,), float(i), dtype=torch.float32)
        return batch
    return [torch.full((256,), float(i), dtype=torch.float32) for i in range(256)]


def tensors_of(batch):
    return list(batch.values()) if isinstance(batch, dict) else list(batch)


def touch_all(batch):
    """B reads one element of every tensor."""
    return sum(float(t.reshape(-1)[-1]) for t in tensors_of(batch))


# --- consumers (process B) -------------------------------------------------------------

def _torch_consumer(conn):
    serve(conn, lambda batch: (touch_all(batch), batch))


def _asarray_consumer(address, conn):
    from asarray_client import Client

    def take(message):
        kind, ref = message
        if kind == "tree":
            batch = client.asarray_tree(ref, copy=False)
        elif isinstance(ref, dict):
            batch = {k: client.asarray(r, copy=False) for k, r in ref.items()}
        else:
            batch = [client.asarray(r, copy=False) for r in ref]
        touch_all(batch)
        return batch

    with Client(address) as client:
        serve(conn, take)


# --- contenders (process A) ------------------------------------------------------------

class TorchMp:
    def __init__(self, consumer, strategy, copy):
        self.consumer, self.strategy, self.copy = consumer, strategy, copy

    def run(self, kind):
        mp.set_sharing_strategy(self.strategy)
        batch = make_batch(kind)
        if not self.copy:
            for t in tensors_of(batch):
                t.share_memory_()
        start = time.perf_counter()
        return self.consumer.handoff(start, batch)[0]


class Asarrayd:
    def __init__(self, consumer, client, copy, per_tensor):
        self.consumer, self.client = consumer, client
        self.copy, self.per_tensor = copy, per_tensor

    def run(self, kind):
        batch = make_batch(kind)
        if not self.copy:
            batch = self.client.share_tree(batch)  # A produced it in shared memory
            start = time.perf_counter()
        else:
            start = time.perf_counter()
            batch = self.client.share_tree(batch)
        if self.per_tensor:
            if isinstance(batch, dict):
                ref = {k: self.client.ref(t) for k, t in batch.items()}
            else:
                ref = [self.client.ref(t) for t in batch]
            elapsed = self.consumer.handoff(start, ("each", ref))[0]
        else:
            ref = self.client.ref(batch)
            elapsed = self.consumer.handoff(start, ("tree", ref))[0]
            self.client.release(ref)  # outside the clock: B has let go
        return elapsed


# --- the server's own cost ---------------------------------------------------------------

def server_cost(client, repeats=60):
    """Mean server work (ns) per call: one Convert of a held tensor, a batch
    of 1 and a batch of 16 such items."""
    batch = client.share_tree(make_batch("dataloader"))
    tree_ref = client.ref(batch)
    one = tree_ref.refs[0]

    def measure(call):
        before = client.stats()
        for _ in range(repeats):
            call()
        client.flush()
        after = client.stats()
        return before, after

    def per_convert(before, after):
        return ((after.local_convert_work_ns - before.local_convert_work_ns) /
                max(1, after.local_converts - before.local_converts))

    def per_batch(before, after):
        return ((after.local_batch_work_ns - before.local_batch_work_ns) /
                max(1, after.local_batches - before.local_batches))

    # asarray_batch sends an item per leaf (asarray_tree would take the
    # leaves' one span once): the server's cost per item.
    single = per_convert(*measure(lambda: client.asarray(one, copy=False)))
    batch_1 = per_batch(*measure(lambda: client.asarray_batch([one], copy=False)))
    batch_16 = per_batch(*measure(lambda: client.asarray_batch(tree_ref.refs, copy=False)))
    client.release(tree_ref)
    return {"single_convert_ns": single, "batch_of_1_ns": batch_1, "batch_of_16_ns": batch_16,
            "extra_item_ns": (batch_16 - batch_1) / 15}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--asarrayd", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", default="dataloader,small")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    kinds = args.batches.split(",")

    harness = Harness(args.asarrayd, _torch_consumer, _asarray_consumer)
    torch_b, asarray_b, client = harness.torch_b, harness.asarray_b, harness.client
    contenders = {}
    for copy, way in [(False, "no copy"), (True, "one copy")]:
        for strategy in STRATEGIES:
            contenders[(way, f"torch.mp {strategy}")] = TorchMp(torch_b, strategy, copy)
        contenders[(way, "asarrayd batch")] = Asarrayd(asarray_b, client, copy, False)
        contenders[(way, "asarrayd per tensor")] = Asarrayd(asarray_b, client, copy, True)
    names = list(contenders)
    p50s = {k: {c: [] for c in names} for k in kinds}
    costs = []
    try:
        for r in range(args.rounds):
            for kind in kinds:
                order = rotated(names, r)
                for name in order:
                    way = contenders[name]
                    way.run(kind)  # warm-up
                    p50s[kind][name].append(
                        statistics.median(way.run(kind) for _ in range(RUNS[kind])))
            costs.append(server_cost(client))
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        harness.close()

    results = {"rounds": args.rounds, "batches": {}, "server_cost": costs}
    columns = ["torch.mp file_descriptor", "torch.mp file_system", "asarrayd batch",
               "asarrayd per tensor"]
    print("| batch | way | " + " | ".join(columns) +
          " | batch vs best torch.mp | batch vs per tensor |")
    print("|---|---|" + "---|" * (len(columns) + 2))
    for kind in kinds:
        row = results["batches"][kind] = {}
        for way in ["no copy", "one copy"]:
            per = {c: p50s[kind][(way, c)] for c in columns}
            vs_torch = [min(fd, fs) / ours for fd, fs, ours in
                        zip(per[columns[0]], per[columns[1]], per["asarrayd batch"])]
            vs_each = [each / ours for each, ours in
                       zip(per["asarrayd per tensor"], per["asarrayd batch"])]
            row[way] = {"p50_ms": {c: [t * 1e3 for t in v] for c, v in per.items()},
                        "vs_torch": ratio_summary(vs_torch), "vs_per_tensor": ratio_summary(vs_each)}
            cells = " | ".join(f"{statistics.median(v) * 1e3:.3f} ms" for v in per.values())
            a, b = row[way]["vs_torch"], row[way]["vs_per_tensor"]
            print(f"| {kind} | {way} | {cells} | {a['median']:.2f}x ({a['low']:.2f}-"
                  f"{a['high']:.2f}) | {b['median']:.2f}x ({b['low']:.2f}-{b['high']:.2f}) |")
    print()
    shares = [c["extra_item_ns"] / c["single_convert_ns"] for c in costs]
    for c in costs:
        print(f"server work: single Convert {c['single_convert_ns'] / 1e3:.1f} us, batch of 1 "
              f"{c['batch_of_1_ns'] / 1e3:.1f} us, batch of 16 {c['batch_of_16_ns'] / 1e3:.1f} us, "
              f"each extra item {c['extra_item_ns'] / 1e3:.2f} us")
    print(f"each extra item / a single Convert, per round: "
          f"{', '.join(f'{s:.3f}' for s in shares)} (median {statistics.median(shares):.3f})")
    results["extra_item_over_single"] = shares
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
