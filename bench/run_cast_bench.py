#!/usr/bin/python3
"""Runs bench/cast_bench and the same casts in numpy and torch, in one run on
one machine, and prints a Markdown table of ratios.

    /usr/bin/python3 bench/run_cast_bench.py [--build build] [--mib 512] [--reps 5]

speedup = (faster of numpy astype and torch .to()) / ours; above 1 means the
core is faster. Every contender allocates its output afresh each repetition.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import time

import numpy as np
import torch


def median_seconds(reps, fn):
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def baselines(case, mib, reps):
    """(numpy seconds or None, torch seconds) for one case of cast_bench."""
    src_bytes = mib << 20
    if case.startswith("float32 transposed"):
        side = 1
        while (side * 2) ** 2 <= src_bytes // 4:
            side *= 2
        a = (np.arange(side * side, dtype=np.float32) % 97).reshape(side, side)
        t = torch.from_numpy(a)
        return (median_seconds(reps, lambda: np.ascontiguousarray(a.T)),
                median_seconds(reps, lambda: t.T.contiguous()))
    src, dst = case.split("->")
    n = src_bytes // np.dtype(src).itemsize
    a = (np.arange(n, dtype=np.int64) % 97).astype(src)
    t = torch.from_numpy(a)
    numpy_s = None
    if dst != "bfloat16":  # numpy has no bfloat16
        numpy_s = median_seconds(reps, lambda: a.astype(dst))
    torch_s = median_seconds(reps, lambda: t.to(getattr(torch, dst)))
    return numpy_s, torch_s


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--build", default="build")
    parser.add_argument("--mib", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())  # as many threads as the core uses

    out = subprocess.run([f"{args.build}/bench/cast_bench", "--mib", str(args.mib),
                          "--reps", str(args.reps)], check=True, capture_output=True, text=True)
    rows = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, "
          f"numpy {np.__version__}, torch {torch.__version__}, source {args.mib} MiB, "
          f"median of {args.reps}")
    print("| cast | ours ms | memcpy ms | numpy ms | torch ms | speedup vs faster of numpy/torch "
          "| ours / memcpy time |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        numpy_s, torch_s = baselines(row["case"], args.mib, args.reps)
        best = min(s for s in (numpy_s, torch_s) if s is not None)
        numpy_ms = f"{numpy_s * 1e3:.0f}" if numpy_s is not None else "n/a"
        print(f"| {row['case']} | {row['ours_s'] * 1e3:.0f} | {row['memcpy_s'] * 1e3:.0f} "
              f"| {numpy_ms} | {torch_s * 1e3:.0f} | {best / row['ours_s']:.2f}x "
              f"| {row['ours_s'] / row['memcpy_s']:.2f} |")


if __name__ == "__main__":
    main()
