#!/usr/bin/python3
"""Same-host handoff of a float32 tensor from process A to process B, like
for like against torch.multiprocessing: the time from A holding the data
until B holds a readable view, p50, for both ways a pipeline hands a tensor
over.

    PYTHONPATH=build/python /usr/bin/python3 bench/handoff_vs_torch_mp.py \
        --asarrayd build/server/asarrayd [--rounds 5] [--plot docs/handoff.png]

No copy: the data is already in shared memory before the clock starts.
  torch.mp:  a tensor made with share_memory_() and filled (each strategy:
             file_descriptor, file_system); A sends it, B reads it.
  asarrayd:  a tensor from client.empty(), filled; A sends client.ref(t), B
             maps it with client.asarray(ref, copy=False) and reads it.
One copy: the data is in A's heap when the clock starts.
  torch.mp:  A sends the heap tensor; pickling moves its storage into shared
             memory (each strategy).
  asarrayd:  A copies it into a region with client.share() and sends its ref.

Every contender crosses the same channel, a multiprocessing Pipe (torch's
reductions pickle tensors onto it exactly as onto a Queue), to a consumer
process that lives across runs, as a pipeline's would. Each run's tensor is
new. B answers with its CLOCK_MONOTONIC time, which all processes share; A
also times the whole trip from A to B and back. The baseline of that round
trip is a bare SOCK_SEQPACKET round trip between two Python processes,
measured in the same run.

The contenders are interleaved: each round runs a batch of every one in turn
(in a rotating order), at every size. Reported per size: the median over
rounds of each contender's p50, and the ratio best-torch.mp / asarrayd (above
1 means asarrayd wins) as the median, the spread (lowest to highest) and the
best over rounds. The server's own time for a local Convert (received to
answered, and received to answer ready, its Stats) comes with the 1 KiB row.
"""
import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.multiprocessing as mp

SIZES = [1 << 10, 1 << 20, 64 << 20, 1 << 30]
STRATEGIES = ["file_descriptor", "file_system"]


def runs_for(nbytes):
    """Runs of each contender per round at `nbytes`."""
    return 100 if nbytes <= 1 << 20 else (6 if nbytes <= 64 << 20 else 2)


# --- consumers (process B) -----------------------------------------------------------

def serve(conn, take):
    """B's loop: for each payload until None, `take` it (make it readable and
    read it) and answer with B's clock."""
    while True:
        payload = conn.recv()
        if payload is None:
            return
        held = take(payload)
        conn.send(time.perf_counter())
        del held


def _read_last(tensor):
    _ = float(tensor[-1])  # B can read it
    return tensor


def _torch_consumer(conn):
    serve(conn, _read_last)


def _asarray_consumer(address, conn):
    from asarray_client import Client
    with Client(address) as client:
        serve(conn, lambda ref: _read_last(client.asarray(ref, copy=False)))


def _echo(sock):
    while True:
        data = sock.recv(64)
        if not data:
            return
        sock.send(data)


# --- contenders (process A) -----------------------------------------------------------

class Consumer:
    def __init__(self, target, *args):
        ctx = mp.get_context("spawn")
        self.conn, b_end = ctx.Pipe()
        self.process = ctx.Process(target=target, args=(*args, b_end))
        self.process.start()
        b_end.close()

    def handoff(self, start, payload):
        """(A to B readable, A to B and back) in seconds."""
        self.conn.send(payload)
        readable = self.conn.recv()
        back = time.perf_counter()
        return readable - start, back - start

    def close(self):
        self.conn.send(None)
        self.process.join()


class TorchMp:
    def __init__(self, consumer, strategy, copy):
        self.consumer, self.strategy, self.copy = consumer, strategy, copy

    def run(self, nbytes):
        mp.set_sharing_strategy(self.strategy)  # process-wide; read when pickled
        tensor = torch.empty(nbytes // 4, dtype=torch.float32)
        if not self.copy:
            tensor.share_memory_()
        tensor.fill_(1.0)  # A holds the data
        start = time.perf_counter()
        return self.consumer.handoff(start, tensor)


class Asarrayd:
    def __init__(self, consumer, client, copy):
        self.consumer, self.client, self.copy = consumer, client, copy

    def run(self, nbytes):
        if self.copy:
            heap = torch.empty(nbytes // 4, dtype=torch.float32)
            heap.fill_(1.0)  # A holds the data
            start = time.perf_counter()
            tensor = self.client.share(heap, like="torch")
        else:
            tensor = self.client.empty((nbytes // 4,), torch.float32)
            tensor.fill_(1.0)  # A produced the data where B will read it
            start = time.perf_counter()
        return self.consumer.handoff(start, self.client.ref(tensor))


def seqpacket_round_trip(samples=2000):
    """p50 seconds of a bare SOCK_SEQPACKET round trip between two Python
    processes (8 bytes each way)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    ctx = mp.get_context("spawn")
    echo = ctx.Process(target=_echo, args=(b,))
    echo.start()
    b.close()
    times = []
    for _ in range(samples + 50):
        start = time.perf_counter()
        a.send(b"12345678")
        a.recv(64)
        times.append(time.perf_counter() - start)
    a.close()
    echo.join()
    return statistics.median(times[50:])


# --- the run ---------------------------------------------------------------------------

def start_server(binary):
    folder = tempfile.mkdtemp(prefix="asarrayd-handoff-")
    address = f"unix:{folder}/s/asarrayd.sock"
    process = subprocess.Popen([binary, f"--listen={address}", "--shm_prefix=asarrayd-handoff"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from asarray_client import Client
    for _ in range(500):
        try:
            with Client(address) as c:
                c.stats()
            return process, address, folder
        except Exception:
            time.sleep(0.02)
    raise RuntimeError("asarrayd did not start")


class Harness:
    """What a run needs: a server, B's two consumers (torch.mp's and
    asarrayd's, processes that live across the run) and A's client."""

    def __init__(self, binary, torch_consumer, asarray_consumer):
        from asarray_client import Client
        self.process, address, self.folder = start_server(binary)
        self.torch_b = Consumer(torch_consumer)
        self.asarray_b = Consumer(asarray_consumer, address)
        self.client = Client(address)

    def close(self):
        self.client.close()
        self.torch_b.close()
        self.asarray_b.close()
        self.process.send_signal(signal.SIGTERM)
        self.process.wait()
        shutil.rmtree(self.folder, ignore_errors=True)


def rotated(names, r):
    """Round r's order: the contenders rotated by r."""
    return names[r % len(names):] + names[:r % len(names)]


def label(nbytes):
    return f"{nbytes >> 30} GiB" if nbytes >= 1 << 30 else (
        f"{nbytes >> 20} MiB" if nbytes >= 1 << 20 else f"{nbytes >> 10} KiB")


def ratio_summary(ratios):
    return {"median": statistics.median(ratios), "low": min(ratios), "high": max(ratios),
            "best": max(ratios)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--asarrayd", required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--sizes", default="", help="comma-separated byte counts")
    parser.add_argument("--plot", default="")
    parser.add_argument("--json", default="")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")] if args.sizes else SIZES

    harness = Harness(args.asarrayd, _torch_consumer, _asarray_consumer)
    torch_b, asarray_b, client = harness.torch_b, harness.asarray_b, harness.client
    contenders = {}
    for copy, way in [(False, "no copy"), (True, "one copy")]:
        for strategy in STRATEGIES:
            contenders[(way, f"torch.mp {strategy}")] = TorchMp(torch_b, strategy, copy)
        contenders[(way, "asarrayd")] = Asarrayd(asarray_b, client, copy)
    names = list(contenders)
    # p50s[size][contender] = [one per round], for readable and round trip.
    p50s = {n: {c: {"readable": [], "round_trip": []} for c in names} for n in sizes}
    rtt = []
    server_p50_ns, server_work_p50_ns = [], []
    try:
        for r in range(args.rounds):
            rtt.append(seqpacket_round_trip())
            for nbytes in sizes:
                order = rotated(names, r)
                for name in order:
                    way = contenders[name]
                    way.run(nbytes)  # warm-up
                    times = [way.run(nbytes) for _ in range(runs_for(nbytes))]
                    p50s[nbytes][name]["readable"].append(
                        statistics.median(t[0] for t in times))
                    p50s[nbytes][name]["round_trip"].append(
                        statistics.median(t[1] for t in times))
                if nbytes == sizes[0]:
                    stats = client.stats()
                    server_p50_ns.append(stats.local_convert_p50_ns)
                    server_work_p50_ns.append(stats.local_convert_work_p50_ns)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        harness.close()

    results = {"rounds": args.rounds, "seqpacket_round_trip_us": [t * 1e6 for t in rtt],
               "server_local_convert_p50_us": [t / 1e3 for t in server_p50_ns],
               "server_local_convert_work_p50_us": [t / 1e3 for t in server_work_p50_ns],
               "sizes": {}}
    print(f"bare SOCK_SEQPACKET round trip, p50 per round: "
          f"{', '.join(f'{t * 1e6:.1f}' for t in rtt)} us")
    print(f"asarrayd's own time for a local Convert (Stats, p50 so far, per round): "
          f"{', '.join(f'{t / 1e3:.1f}' for t in server_p50_ns)} us; without the send: "
          f"{', '.join(f'{t / 1e3:.1f}' for t in server_work_p50_ns)} us")
    print()
    print("| size | way | torch.mp fd | torch.mp fs | asarrayd | ratio (median) | "
          "ratio spread | ratio best |")
    print("|---|---|---|---|---|---|---|---|")
    for nbytes in sizes:
        row = results["sizes"][label(nbytes)] = {}
        for way in ["no copy", "one copy"]:
            per = {name: p50s[nbytes][(way, name)]["readable"]
                   for name in ["torch.mp file_descriptor", "torch.mp file_system", "asarrayd"]}
            ratios = [min(fd, fs) / ours for fd, fs, ours in
                      zip(per["torch.mp file_descriptor"], per["torch.mp file_system"],
                          per["asarrayd"])]
            summary = ratio_summary(ratios)
            row[way] = {"p50_us": {k: [t * 1e6 for t in v] for k, v in per.items()},
                        "ratio": summary, "ratios": ratios,
                        "asarrayd_round_trip_us": [
                            t * 1e6 for t in p50s[nbytes][(way, "asarrayd")]["round_trip"]]}
            cells = " | ".join(f"{statistics.median(v) * 1e3:.3f} ms" for v in per.values())
            print(f"| {label(nbytes)} | {way} | {cells} | {summary['median']:.2f}x | "
                  f"{summary['low']:.2f}-{summary['high']:.2f}x | {summary['best']:.2f}x |")
    small = sizes[0]
    trips = p50s[small][("no copy", "asarrayd")]["round_trip"]
    over = [t / b for t, b in zip(trips, rtt)]
    print()
    print(f"{label(small)} no-copy handoff A to B and back: "
          f"{statistics.median(trips) * 1e6:.1f} us p50, "
          f"{statistics.median(over):.2f}x the bare round trip "
          f"(per round {', '.join(f'{x:.2f}' for x in over)})")
    results["round_trip_over_bare"] = over
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    if args.plot:
        plot(sizes, p50s, args.plot)


def plot(sizes, p50s, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
    for ax, way in zip(axes, ["no copy", "one copy"]):
        for name in ["torch.mp file_descriptor", "torch.mp file_system", "asarrayd"]:
            ax.plot(sizes, [statistics.median(p50s[n][(way, name)]["readable"]) * 1e3
                            for n in sizes], marker="o", label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xticks(sizes, [label(n) for n in sizes])
        ax.set_xlabel("tensor size (float32)")
        ax.set_title(f"{way}: A to B readable")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_ylabel("p50 latency (ms), median over rounds")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
