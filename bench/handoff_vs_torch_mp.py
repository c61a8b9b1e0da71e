#!/usr/bin/python3
"""Same-host handoff of a float32 tensor from process A to process B: the
time from A holding the data until B holds a readable view, p50 over many
runs, for asarrayd and for torch.multiprocessing's Queue (both sharing
strategies). Plots latency against size.

    PYTHONPATH=build/python /usr/bin/python3 bench/handoff_vs_torch_mp.py \
        --asarrayd build/server/asarrayd [--plot docs/handoff.png]

Ways measured:
  torch.mp file_descriptor / file_system: A puts a heap tensor on a Queue
      (torch moves its storage into shared memory), B gets it.
  asarrayd share: A copies its heap array into a client region (one copy) and
      sends a reference; B converts it with copy=False and maps the handle.
  asarrayd empty: A produced the data straight into a region from
      client.empty (no copy); B converts with copy=False and maps.
  asarrayd empty over gRPC: the same with Client(local=False), so that B's
      Convert goes over gRPC instead of the local transport.
Both processes keep their clients across runs, as a pipeline would: A's small
regions come back from its pool, and B's mappings of them stay.
Timestamps come from CLOCK_MONOTONIC, which all processes share. Each way runs
alone (running them in turns made every one slower: more processes awake).
"""
import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

SIZES = [1 << 10, 1 << 20, 64 << 20, 1 << 30]


def runs_for(nbytes):
    return 200 if nbytes <= 1 << 20 else (15 if nbytes <= 64 << 20 else 5)


# --- torch.multiprocessing ------------------------------------------------------

def _mp_consumer(queue, done):
    while True:
        item = queue.get()
        if item is None:
            return
        tensor = item
        _ = float(tensor[-1])  # B can read it
        done.put(time.perf_counter())
        del tensor, item


class TorchMp:
    """A hands B a heap tensor through a torch.multiprocessing Queue."""

    def __init__(self, strategy):
        self.strategy = strategy
        ctx = mp.get_context("spawn")
        self.queue, self.done = ctx.Queue(), ctx.Queue()
        self.consumer = ctx.Process(target=_mp_consumer, args=(self.queue, self.done))
        self.consumer.start()

    def run(self, nbytes):
        # Per put: the strategy is process-wide, and the feeder thread has
        # pickled the tensor by the time B answers.
        mp.set_sharing_strategy(self.strategy)
        tensor = torch.ones(nbytes // 4, dtype=torch.float32)  # A holds the data
        start = time.perf_counter()
        self.queue.put(tensor)
        return self.done.get() - start

    def close(self):
        self.queue.put(None)
        self.consumer.join()


# --- asarrayd ---------------------------------------------------------------------

def _asarray_consumer(address, conn, local):
    from asarray_client import Client
    client = Client(address, local=local)
    while True:
        ref = conn.recv()
        if ref is None:
            return
        view = client.asarray(ref, copy=False)
        _ = float(view[-1])  # B can read it
        conn.send(time.perf_counter())
        del view


class Asarrayd:
    """A hands B a reference to a region of A's client; B converts it with
    copy=False and maps the handle."""

    def __init__(self, address, mode, local=True):
        from asarray_client import Client
        self.mode = mode
        ctx = mp.get_context("spawn")
        self.a_end, b_end = ctx.Pipe()
        self.consumer = ctx.Process(target=_asarray_consumer, args=(address, b_end, local))
        self.consumer.start()
        self.client = Client(address)

    def run(self, nbytes):
        if self.mode == "share":
            heap = torch.ones(nbytes // 4, dtype=torch.float32)  # A holds the data
            start = time.perf_counter()
            shared = self.client.share(heap, like="torch")
        else:
            shared = self.client.empty((nbytes // 4,), torch.float32)
            shared.fill_(1.0)  # A produced the data where B will read it
            start = time.perf_counter()
        self.a_end.send(self.client.ref(shared))
        return self.a_end.recv() - start

    def close(self):
        self.a_end.send(None)
        self.consumer.join()
        self.client.close()


def bench_size(address, nbytes):
    """p50 seconds of every way at `nbytes`, in steady state: each way runs
    alone, its first run a warm-up."""
    ways = {
        "torch.mp file_descriptor": lambda: TorchMp("file_descriptor"),
        "torch.mp file_system": lambda: TorchMp("file_system"),
        "asarrayd share (1 copy)": lambda: Asarrayd(address, "share"),
        "asarrayd empty (no copy)": lambda: Asarrayd(address, "empty"),
        "asarrayd empty over gRPC": lambda: Asarrayd(address, "empty", local=False),
    }
    row = {}
    for name, make in ways.items():
        way = make()
        try:
            times = [way.run(nbytes) for _ in range(runs_for(nbytes) + 1)]
        finally:
            way.close()
        row[name] = statistics.median(times[1:])
    return row


def start_server(binary):
    folder = tempfile.mkdtemp(prefix="asarrayd-handoff-")
    address = f"unix:{folder}/s/asarrayd.sock"
    process = subprocess.Popen([binary, f"--listen={address}", "--shm_prefix=asarrayd-handoff"],
                               stderr=subprocess.DEVNULL)
    from asarray_client import Client
    for _ in range(500):
        try:
            with Client(address) as c:
                c.stats()
            return process, address, folder
        except Exception:
            time.sleep(0.02)
    raise RuntimeError("asarrayd did not start")


def label(nbytes):
    return f"{nbytes >> 30} GiB" if nbytes >= 1 << 30 else (
        f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--asarrayd", required=True)
    parser.add_argument("--plot", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args()

    process, address, folder = start_server(args.asarrayd)
    results = {}
    try:
        for nbytes in SIZES:
            row = bench_size(address, nbytes)
            results[nbytes] = row
            print(json.dumps({"size": label(nbytes), **{k: v * 1e6 for k, v in row.items()}}),
                  flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)

    print("| size | torch.mp fd | torch.mp fs | asarrayd share | asarrayd empty | "
          "asarrayd empty over gRPC | best torch.mp / asarrayd share | "
          "best torch.mp / asarrayd empty |")
    print("|---|---|---|---|---|---|---|---|")
    for nbytes, row in results.items():
        best = min(row["torch.mp file_descriptor"], row["torch.mp file_system"])
        cells = " | ".join(f"{v * 1e3:.3f} ms" for v in row.values())
        print(f"| {label(nbytes)} | {cells} | {best / row['asarrayd share (1 copy)']:.2f}x "
              f"| {best / row['asarrayd empty (no copy)']:.2f}x |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(k): v for k, v in results.items()}, f, indent=1)
    if args.plot:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name in next(iter(results.values())):
            ax.plot(SIZES, [results[n][name] * 1e3 for n in SIZES], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(SIZES, [label(n) for n in SIZES])
        ax.set_xlabel("tensor size (float32)")
        ax.set_ylabel("p50 latency until B can read (ms)")
        ax.set_title("Same-host handoff, process A to process B")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.tight_layout()
        os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
        fig.savefig(args.plot, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
