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
Timestamps come from CLOCK_MONOTONIC, which all processes share.
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


def bench_torch_mp(strategy, nbytes):
    ctx = mp.get_context("spawn")
    mp.set_sharing_strategy(strategy)
    queue, done = ctx.Queue(), ctx.Queue()
    consumer = ctx.Process(target=_mp_consumer, args=(queue, done))
    consumer.start()
    times = []
    for _ in range(runs_for(nbytes) + 1):
        tensor = torch.ones(nbytes // 4, dtype=torch.float32)  # A holds the data
        start = time.perf_counter()
        queue.put(tensor)
        times.append(done.get() - start)
        del tensor
    queue.put(None)
    consumer.join()
    return statistics.median(times[1:])


# --- asarrayd ---------------------------------------------------------------------

def _asarray_consumer(address, conn):
    from asarray_client import Client
    client = Client(address)
    while True:
        ref = conn.recv()
        if ref is None:
            return
        view = client.asarray(ref, copy=False)
        _ = float(view[-1])  # B can read it
        conn.send(time.perf_counter())
        del view


def bench_asarrayd(address, nbytes, mode):
    from asarray_client import Client
    ctx = mp.get_context("spawn")
    a_end, b_end = ctx.Pipe()
    consumer = ctx.Process(target=_asarray_consumer, args=(address, b_end))
    consumer.start()
    client = Client(address)
    times = []
    for _ in range(runs_for(nbytes) + 1):
        if mode == "share":
            heap = torch.ones(nbytes // 4, dtype=torch.float32)  # A holds the data
            start = time.perf_counter()
            shared = client.share(heap, like="torch")
        else:
            shared = client.empty((nbytes // 4,), torch.float32)
            shared.fill_(1.0)  # A produced the data where B will read it
            start = time.perf_counter()
        a_end.send(client.ref(shared))
        times.append(a_end.recv() - start)
        del shared
    a_end.send(None)
    consumer.join()
    client.close()
    return statistics.median(times[1:])


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
            row = {
                "torch.mp file_descriptor": bench_torch_mp("file_descriptor", nbytes),
                "torch.mp file_system": bench_torch_mp("file_system", nbytes),
                "asarrayd share (1 copy)": bench_asarrayd(address, nbytes, "share"),
                "asarrayd empty (no copy)": bench_asarrayd(address, nbytes, "empty"),
            }
            results[nbytes] = row
            print(json.dumps({"size": label(nbytes), **{k: v * 1e6 for k, v in row.items()}}),
                  flush=True)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait()
        shutil.rmtree(folder, ignore_errors=True)

    print("| size | torch.mp fd | torch.mp fs | asarrayd share | asarrayd empty | "
          "best torch.mp / asarrayd share | best torch.mp / asarrayd empty |")
    print("|---|---|---|---|---|---|---|")
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
