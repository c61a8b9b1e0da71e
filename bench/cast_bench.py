#!/usr/bin/python3
"""Casts of the core against numpy, torch and memcpy, interleaved rep by rep
in one process, into fresh memory of each kind the server writes.

    /usr/bin/python3 bench/cast_bench.py [--build build] [--mib 512] [--reps 9]
                                         [--runs 5] [--cases a,b] [--json FILE]

The core runs from build/bench/libasarray_castbench.so (bench/cast_lib.cc)
inside this process, so every contender is timed and observed by the same
code. Each rep runs every contender once, in an order that rotates from rep
to rep; a first rep, not counted, warms up and checks that each of ours
gives the very bytes torch gives.

Contenders, each writing its output into memory it gets afresh:
  ours/anonymous  the core, into fresh anonymous memory with huge pages asked
                  (what numpy's allocator gives a large array, and the
                  server's memory for TCP callers);
  ours/segment    the core, into a result memfd made as the server makes one
                  when its segment pool has none of the size (reserved and
                  mapped: the server's cost, counted);
  ours/pooled     the core, into a memfd the segment pool prepared ahead (the
                  server's default, for a size it has seen);
  numpy           astype, or ascontiguousarray of the transpose;
  torch           .to(dtype), or .T.contiguous(), with one thread per core;
  memcpy          the output's bytes copied into fresh anonymous memory.
And the physical limits of writing the output into fresh memory (limit =
fault + write, segment limit = segment fault + write):
  fault           fresh anonymous memory populated for writing, no data;
  segment fault   a result memfd made and reserved as for ours/segment, no data;
  write           the output's bytes written (memset) into prefaulted memory;
  ours/prefaulted the core into prefaulted memory.

For each contender and rep it records the time, the minor page faults
(getrusage, all threads), the huge pages mapped for its output while it is
alive (/proc/self/smaps_rollup: AnonHugePages + ShmemPmdMapped, against
before) and its threads. speedup = the faster of numpy and torch (median
time) / ours (median time): above 1 means the core is faster.
"""
import argparse
import ctypes
import json
import os
import platform
import resource
import statistics
import sys
import time

import numpy as np
import torch

FRESH_ANONYMOUS, SEGMENT_COLD, SEGMENT_POOLED, PREFAULTED = 0, 1, 2, 3

# name: (source dtype, destination dtype, transposed)
CASES = {
    "float64->float32": ("float64", "float32", False),
    "float32->bfloat16": ("float32", "bfloat16", False),
    "int64->float32": ("int64", "float32", False),
    "uint8->float32": ("uint8", "float32", False),
    "float32 transposed copy": ("float32", "float32", True),
    "float32->float16": ("float32", "float16", False),
}
OURS = ("ours/anonymous", "ours/segment", "ours/pooled")
PEERS = ("numpy", "torch")


def load(build):
    lib = ctypes.CDLL(os.path.join(build, "bench", "libasarray_castbench.so"))
    lib.ab_alloc.restype = ctypes.c_void_p
    lib.ab_alloc.argtypes = [ctypes.c_int, ctypes.c_uint64]
    lib.ab_data.restype = ctypes.c_void_p
    lib.ab_data.argtypes = [ctypes.c_void_p]
    lib.ab_free.argtypes = [ctypes.c_void_p]
    lib.ab_pool_fill.argtypes = [ctypes.c_uint64]
    lib.ab_cast.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int64),
                            ctypes.POINTER(ctypes.c_int64), ctypes.c_int, ctypes.c_void_p,
                            ctypes.c_char_p]
    lib.ab_populate.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    return lib


def huge_kb():
    """Huge-page-mapped kB of this process: anonymous and shared memory."""
    kb = 0
    with open("/proc/self/smaps_rollup") as f:
        for line in f:
            if line.startswith(("AnonHugePages:", "ShmemPmdMapped:")):
                kb += int(line.split()[1])
    return kb


def minor_faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


class Memory:
    """One buffer from the library, freed exactly once."""

    def __init__(self, lib, kind, nbytes):
        self.lib = lib
        self.handle = lib.ab_alloc(kind, nbytes)
        if not self.handle:
            raise MemoryError(f"no memory of kind {kind} for {nbytes} bytes")
        self.data = lib.ab_data(self.handle) if nbytes else None

    def free(self):
        if self.handle:
            self.lib.ab_free(self.handle)
            self.handle = None


class Case:
    def __init__(self, lib, name, mib):
        self.lib, self.name = lib, name
        src, dst, self.transposed = CASES[name]
        src_bytes = mib << 20
        n = src_bytes // np.dtype(src).itemsize
        if self.transposed:
            side = 1
            while (side * 2) ** 2 <= n:
                side *= 2
            base = (np.arange(side * side, dtype=np.int64) % 97).astype(src).reshape(side, side)
            self.a = base.T  # a transposed view, copied into row-major order
            shape, strides = (side, side), (1, side)
        else:
            self.a = (np.arange(n, dtype=np.int64) % 97).astype(src)
            shape, strides = (n,), (1,)
        self.t = torch.from_numpy(self.a)
        self.src, self.dst = src, dst
        self.numel = int(np.prod(shape))
        self.out_bytes = self.numel * torch.tensor([], dtype=getattr(torch, dst)).element_size()
        self.shape = (ctypes.c_int64 * len(shape))(*shape)
        self.strides = (ctypes.c_int64 * len(strides))(*strides)
        self.rank = len(shape)
        self.prefaulted = Memory(lib, PREFAULTED, self.out_bytes)

    def ours_into(self, data):
        rc = self.lib.ab_cast(self.a.ctypes.data, self.src.encode(), self.shape, self.strides,
                              self.rank, data, self.dst.encode())
        if rc != 0:
            raise RuntimeError(f"{self.name}: the core refused the cast")

    def reference(self):
        t = self.t.contiguous() if self.transposed else self.t.to(getattr(torch, self.dst))
        return as_bytes(t)

    def contenders(self):
        """name -> (threads, fn); fn returns what keeps its output alive."""
        lib, nbytes = self.lib, self.out_bytes

        def ours(kind):
            def run():
                m = Memory(lib, kind, nbytes)
                self.ours_into(m.data)
                return m
            return run

        def memcpy():
            m = Memory(lib, FRESH_ANONYMOUS, nbytes)
            ctypes.memmove(m.data, self.a.ctypes.data, min(nbytes, self.a.nbytes))
            return m

        def fault():
            m = Memory(lib, FRESH_ANONYMOUS, nbytes)
            err = lib.ab_populate(m.data, nbytes)
            if err:
                raise OSError(err, "MADV_POPULATE_WRITE")
            return m

        def segment_fault():
            return Memory(lib, SEGMENT_COLD, nbytes)  # made and reserved, no data

        def write():
            ctypes.memset(self.prefaulted.data, 1, nbytes)

        def ours_prefaulted():
            self.ours_into(self.prefaulted.data)

        threads = lib.ab_threads()
        out = {
            "ours/anonymous": (threads, ours(FRESH_ANONYMOUS)),
            "ours/segment": (threads, ours(SEGMENT_COLD)),
            "ours/pooled": (threads, ours(SEGMENT_POOLED)),
        }
        if self.dst != "bfloat16":  # numpy has no bfloat16
            if self.transposed:
                out["numpy"] = (1, lambda: np.ascontiguousarray(self.a))
            else:
                out["numpy"] = (1, lambda: self.a.astype(self.dst))
        target = getattr(torch, self.dst)
        if self.transposed:
            out["torch"] = (torch.get_num_threads(), lambda: self.t.contiguous())
        else:
            out["torch"] = (torch.get_num_threads(), lambda: self.t.to(target))
        out["memcpy"] = (1, memcpy)
        out["fault"] = (1, fault)
        out["segment fault"] = (threads, segment_fault)
        out["write"] = (1, write)
        out["ours/prefaulted"] = (threads, ours_prefaulted)
        return out


def as_bytes(t):
    """The bytes of a contiguous tensor, as a flat uint8 array (no copy)."""
    return t.contiguous().view(torch.uint8).numpy().reshape(-1)


def check_equal(case):
    """Each of ours gives the bytes torch gives."""
    want = case.reference()
    for kind, name in ((FRESH_ANONYMOUS, "ours/anonymous"), (SEGMENT_COLD, "ours/segment")):
        m = Memory(case.lib, kind, case.out_bytes)
        try:
            case.ours_into(m.data)
            got = np.ctypeslib.as_array((ctypes.c_uint8 * case.out_bytes).from_address(m.data))
            equal = np.array_equal(got, want)
            del got
        finally:
            m.free()
        if not equal:
            raise AssertionError(f"{case.name}: {name} differs from torch")


def release(kept):
    if isinstance(kept, Memory):
        kept.free()


def run_case(case, reps):
    contenders = case.contenders()
    names = list(contenders)
    samples = {n: [] for n in names}
    check_equal(case)
    for rep in range(reps + 1):  # rep 0 warms up and is not counted
        shift = rep % len(names)
        for name in names[shift:] + names[:shift]:
            threads, fn = contenders[name]
            if name == "ours/pooled" and case.lib.ab_pool_fill(case.out_bytes) != 0:
                raise RuntimeError("the segment pool prepared no segment within 60 s")
            huge0, faults0 = huge_kb(), minor_faults()
            start = time.perf_counter()
            kept = fn()
            seconds = time.perf_counter() - start
            faults, huge = minor_faults() - faults0, huge_kb() - huge0
            release(kept)
            del kept
            if rep > 0:
                samples[name].append({"s": seconds, "minflt": faults, "huge_kb": huge,
                                      "threads": threads})
    return samples


def summarize(case, samples):
    row = {"case": case.name, "out_mib": case.out_bytes / 2**20}
    for name, s in samples.items():
        times = [x["s"] for x in s]
        row[name] = {
            "median_ms": statistics.median(times) * 1e3,
            "low_ms": min(times) * 1e3,
            "high_ms": max(times) * 1e3,
            "minflt": statistics.median(x["minflt"] for x in s),
            "huge_mib": statistics.median(x["huge_kb"] for x in s) / 1024,
            "threads": s[0]["threads"],
        }
    peers = [row[p]["median_ms"] for p in PEERS if p in row]
    best_peer = min(peers)
    for name in OURS + ("ours/prefaulted",):
        row[name]["speedup"] = best_peer / row[name]["median_ms"]
    # Per rep: the faster peer of that rep over ours in that rep.
    for name in OURS:
        per_rep = []
        for i in range(len(samples[name])):
            peer = min(samples[p][i]["s"] for p in PEERS if p in samples)
            per_rep.append(peer / samples[name][i]["s"])
        row[name]["speedup_low"], row[name]["speedup_high"] = min(per_rep), max(per_rep)
    row["limit_ms"] = row["fault"]["median_ms"] + row["write"]["median_ms"]
    row["segment_limit_ms"] = row["segment fault"]["median_ms"] + row["write"]["median_ms"]
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build", default="build")
    parser.add_argument("--mib", type=int, default=512, help="source size of each case")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--json", help="also write every row here, one per line")
    args = parser.parse_args()
    torch.set_num_threads(os.cpu_count())  # as many threads as the core uses
    lib = load(args.build)
    names = [c.strip() for c in args.cases.split(",") if c.strip()]
    for name in names:
        if name not in CASES:
            parser.error(f"unknown case {name!r}; the cases: {', '.join(CASES)}")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; ours {lib.ab_threads()} "
          f"threads, torch {torch.get_num_threads()}; numpy {np.__version__}, torch "
          f"{torch.__version__}; transparent huge pages: "
          f"{open('/sys/kernel/mm/transparent_hugepage/enabled').read().strip()}; source "
          f"{args.mib} MiB; median (low-high) of {args.reps} interleaved reps", flush=True)
    rows = []
    for run in range(args.runs):
        for name in names:
            case = Case(lib, name, args.mib)
            row = summarize(case, run_case(case, args.reps))
            case.prefaulted.free()
            row["run"] = run + 1
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
    if args.json:
        with open(args.json, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    print("| run | cast | ours/anonymous ms | ours/segment ms | ours/pooled ms | numpy ms "
          "| torch ms | memcpy ms | limit ms (fault + write) | segment limit ms | speedup anonymous "
          "| speedup segment | speedup pooled |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for row in rows:
        def ms(name):
            if name not in row:
                return "n/a"
            r = row[name]
            return f"{r['median_ms']:.0f} ({r['low_ms']:.0f}-{r['high_ms']:.0f})"

        def sp(name):
            r = row[name]
            return f"{r['speedup']:.2f}x ({r['speedup_low']:.2f}-{r['speedup_high']:.2f})"

        print(f"| {row['run']} | {row['case']} | {ms('ours/anonymous')} | {ms('ours/segment')} "
              f"| {ms('ours/pooled')} | {ms('numpy')} | {ms('torch')} | {ms('memcpy')} "
              f"| {row['limit_ms']:.0f} ({row['fault']['median_ms']:.0f} + "
              f"{row['write']['median_ms']:.0f}) | {row['segment_limit_ms']:.0f} "
              f"| {sp('ours/anonymous')} "
              f"| {sp('ours/segment')} | {sp('ours/pooled')} |")
    print("\nconditions (median per rep): minor faults / huge-page MiB mapped / threads")
    for row in rows:
        cond = ", ".join(
            f"{n} {row[n]['minflt']:.0f}/{row[n]['huge_mib']:.0f}/{row[n]['threads']}"
            for n in ("ours/anonymous", "ours/segment", "ours/pooled", "numpy", "torch",
                      "memcpy", "fault", "segment fault") if n in row)
        print(f"run {row['run']} {row['case']}: {cond}")


if __name__ == "__main__":
    main()
