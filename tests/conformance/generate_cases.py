#!/usr/bin/env python3
"""Generate torch.asarray conformance cases (format: shared/conformance/README.md).

Every expectation is what torch.asarray returned or raised for the input, with
one rule from PyTorch 2.x: complex to bool is `real != 0 or imag != 0`, with no
warning.

    /usr/bin/python3 generate_cases.py --seed N --out FILE.jsonl [--reference cases.jsonl]

With --edges it writes, instead, one cast case per (source, target) dtype pair
holding the source dtype's special values (NaN, infinities, extremes, rounding
ties, out-of-range values), ids "edge-SRC-DST". Float to integer casts of
values out of the target's range are included: their expectation is what torch
computes on x86 (see core/element_convert.h).
"""
import argparse
import base64
import collections
import json
import math
import os
import sys
import warnings

import numpy as np
import torch

DTYPES = {
    "bool": torch.bool, "uint8": torch.uint8, "int8": torch.int8,
    "int16": torch.int16, "int32": torch.int32, "int64": torch.int64,
    "float16": torch.float16, "bfloat16": torch.bfloat16,
    "float32": torch.float32, "float64": torch.float64,
    "complex64": torch.complex64, "complex128": torch.complex128,
}
NAMES = {v: k for k, v in DTYPES.items()}
INTS = ("uint8", "int8", "int16", "int32", "int64")
FLOATS = ("float16", "bfloat16", "float32", "float64")
INF, NAN = float("inf"), float("nan")
ALIAS_ERROR = "FAILED_PRECONDITION"
OTHER_ERROR = "INVALID_ARGUMENT"


def int_bounds(dst):
    """Range for floats cast into integer dtype `dst`: every value fits."""
    return {"uint8": (0, 100), "int8": (-100, 100)}.get(dst, (-1000, 1000))


def encode(t):
    """base64 of t's logical values, row-major, little-endian."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.dtype == torch.bfloat16:
        flat = flat.view(torch.int16)
    a = flat.numpy()
    return base64.b64encode(a.astype(a.dtype.newbyteorder("<")).tobytes()).decode()


def to_json(v):
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return v if math.isfinite(v) else ("inf" if v > 0 else "-inf")
    if isinstance(v, complex):
        return {"re": to_json(v.real), "im": to_json(v.imag)}
    if isinstance(v, list):
        return [to_json(x) for x in v]
    if isinstance(v, dict):
        return {k: to_json(x) for k, x in v.items()}
    return v


def from_json(v):
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
        return float(v)
    if isinstance(v, dict) and set(v) == {"re", "im"}:
        return complex(from_json(v["re"]), from_json(v["im"]))
    if isinstance(v, list):
        return [from_json(x) for x in v]
    return v


def call_asarray(obj, kwargs):
    """(result, exception, warnings) of torch.asarray(obj, **kwargs)."""
    kw = {k: DTYPES[v] if k == "dtype" else v for k, v in kwargs.items()}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            result = torch.asarray(obj, **kw)
        except Exception as e:  # every torch failure is an expected outcome
            return None, e, []
    return result, None, [str(w.message).split(" (Triggered internally")[0] for w in caught]


def error_expect(e):
    msg = str(e).strip()
    code = ALIAS_ERROR if isinstance(e, ValueError) and msg.startswith("can't alias") else OTHER_ERROR
    return {"error": code, "torch": f"{type(e).__name__}: {msg}"}


def tensor_expect(result, data, shares, warns):
    out = {"dtype": NAMES[result.dtype], "shape": list(result.shape),
           "strides": list(result.stride()), "requires_grad": result.requires_grad,
           "data": encode(data), "shares_memory": shares}
    if warns:
        out["warnings"] = warns
    return out


def overlaps(storage, result):
    """Whether result's bytes overlap storage's bytes."""
    if result.numel() == 0:
        return False
    lo = result.data_ptr()
    hi = lo + (1 + sum((n - 1) * s for n, s in zip(result.shape, result.stride()))) * result.element_size()
    base = storage.data_ptr()
    return lo < base + storage.numel() * storage.element_size() and base < hi


def cast_is_defined(view, dst):
    """False where a float to integer conversion would leave the target range (undefined in C++)."""
    if dst not in INTS or not (view.is_floating_point() or view.is_complex()):
        return True
    v = (view.real if view.is_complex() else view).double()
    info = torch.iinfo(DTYPES[dst])
    return bool(((v >= info.min) & (v < float(info.max) + 1)).all())


def edge_floats(name):
    """Special float64 values that stay finite (unless already not) when converted into float dtype `name`."""
    info = torch.finfo(DTYPES[name])
    sub = info.tiny * info.eps
    vals = [0.0, -0.0, sub, -sub, info.max, -info.max, INF, -INF, NAN, 0.5, -0.5, 1.5, 2.5, -2.5,
            300.7, -300.7, -5.0, 255.0, 256.0, 65504.0, 65519.0, 65520.0, 3e9, -3e9,
            4294967297.0, -2147483649.0, 3000000001.0, 1e20, -1e20]
    if name in ("float32", "float64"):
        ties = [1 + 2.0 ** -11, 1 + 3 * 2.0 ** -11, 1 + 2.0 ** -8, 1 + 3 * 2.0 ** -8]
        vals += ties + ([t + d for t in ties for d in (2.0 ** -40, -2.0 ** -40)] if name == "float64" else [])
    t = torch.tensor(vals, dtype=torch.float64)
    return t[torch.isfinite(t.to(DTYPES[name])) | ~torch.isfinite(t)].tolist()


def edge_values(name):
    """A 1-D tensor of dtype `name` holding its special values."""
    dt = DTYPES[name]
    if name == "bool":
        return torch.tensor([False, True])
    if name in INTS:
        info = torch.iinfo(dt)
        vals = [0, 1, -1, info.min, info.max, info.min + 1, info.max - 1, 127, 128, 255, 256, -129,
                65535, 65536, 2 ** 24 + 1, 2 ** 31 - 1, -2 ** 31, 2 ** 53 + 1, 2 ** 63 - 1]
        return torch.tensor([v for v in vals if info.min <= v <= info.max], dtype=dt)
    if name in FLOATS:
        return torch.tensor(edge_floats(name), dtype=torch.float64).to(dt)
    pairs = [(re, im) for re in edge_floats("float32" if name == "complex64" else "float64")
             for im in (0.0, 1.0, -0.0, NAN, INF)] + [(0.0, 1.0), (0.0, NAN)]
    re, im = (torch.tensor(part, dtype=torch.float64) for part in zip(*pairs))
    return torch.complex(re, im).to(dt)


class Generator:
    def __init__(self, seed):
        self.seed = seed
        self.prefix = "" if seed is None else f"s{seed}-"
        self.rng = np.random.default_rng(seed)
        self.cases = []

    # random values -------------------------------------------------------

    def pick(self, seq):
        return seq[int(self.rng.integers(len(seq)))]

    def floats(self, n, bounds=None):
        """n float64 values: within bounds (some integral, some halves), else of any magnitude."""
        r = self.rng
        out = []
        for _ in range(n):
            if bounds:
                lo, hi = bounds
                x = float(r.uniform(lo, hi))
                out.append(self.pick([x, float(round(x)), min(max(math.floor(x) + 0.5, lo), hi)]))
            elif r.random() < 0.3:
                out.append(self.pick([0.0, -0.0, 1.0, -1.0, 0.5, -2.5, INF, -INF, NAN, 65504.0,
                                      65520.0, 3e38, 1e-40, 6e-8, 1e300]))
            else:
                out.append(float((-1) ** r.integers(2) * 10 ** r.uniform(-6, 6)))
        return out

    def ints(self, name, n):
        info = torch.iinfo(DTYPES[name])
        out = []
        for _ in range(n):
            if name in ("uint8", "int8", "int16") or self.rng.random() < 0.2:
                out.append(int(self.rng.integers(info.min, info.max, endpoint=True)))
            elif self.rng.random() < 0.15:
                out.append(self.pick([info.min, info.max, 0, -1, 2 ** 24 + 1, -(2 ** 31)]
                                     + ([2 ** 53 + 1, 2 ** 62 + 2 ** 38 + 1] if name == "int64" else [])))
            else:
                out.append(int(self.rng.integers(-10 ** 6, 10 ** 6)))
        return out

    def tensor(self, name, n, bounds=None, zeros=False):
        """A 1-D tensor of n random values of dtype `name`."""
        dt = DTYPES[name]
        if name == "bool":
            return torch.tensor(self.rng.integers(0, 2, n).tolist(), dtype=dt)
        if name in INTS:
            return torch.tensor(self.ints(name, n), dtype=dt)
        if name in FLOATS:
            return torch.tensor(self.floats(n, bounds), dtype=torch.float64).to(dt)
        re = torch.tensor(self.floats(n, bounds), dtype=torch.float64)
        im = torch.tensor(self.floats(n, (-50, 50) if bounds else None), dtype=torch.float64)
        if zeros:
            mask = torch.tensor(self.rng.integers(0, 4, n).tolist())
            re[mask == 1] = 0.0
            im[mask >= 2] = 0.0
        return torch.complex(re, im).to(dt)

    def cast_source(self, src, dst, n):
        bounds = int_bounds(dst) if dst in INTS else None
        return self.tensor(src, n, bounds=bounds, zeros=dst == "bool")

    def literal(self, kind):
        r = self.rng
        if kind == "bool":
            return bool(r.integers(2))
        if kind == "int":
            return int(r.integers(-1000, 1000))
        if kind == "float":
            if r.random() < 0.25:
                return self.pick([INF, -INF, NAN, -0.0, 0.5, 3.0, 1e20, -7.0])
            return float(r.uniform(-1000, 1000))
        im = 0.0 if r.random() < 0.15 else float(r.uniform(-10, 10))
        return complex(float(r.uniform(-10, 10)), im)

    def nested(self, kinds, shape):
        n = int(np.prod(shape))
        flat = list(kinds) + [self.pick(kinds) for _ in range(max(0, n - len(kinds)))]
        flat = [self.literal(flat[i]) for i in self.rng.permutation(len(flat))[:n]]

        def build(dims, items):
            if len(dims) == 1:
                return items
            step = len(items) // dims[0]
            return [build(dims[1:], items[i * step:(i + 1) * step]) for i in range(dims[0])]
        return build(list(shape), flat)

    # case recording ------------------------------------------------------

    def add(self, name, tags, inp, kwargs, expect):
        self.cases.append({"id": self.prefix + name, "tags": tags, "input": inp,
                           "kwargs": kwargs, "expect": expect})

    def array_case(self, name, tags, storage, shape, strides, offset, kwargs):
        view = torch.as_strided(storage, shape, strides, offset)
        inp = {"kind": "array", "dtype": NAMES[storage.dtype], "shape": list(shape),
               "strides": list(strides), "offset": offset, "storage": encode(storage),
               "storage_numel": storage.numel()}
        result, err, warns = call_asarray(view, kwargs)
        if err is not None:
            expect = error_expect(err)
        else:
            assert "edge" in tags or cast_is_defined(view, NAMES[result.dtype]), name
            data = result
            if view.is_complex() and result.dtype == torch.bool:
                data, warns = (view.real != 0) | (view.imag != 0), []
            shares = overlaps(storage, result) if view.numel() else None
            expect = tensor_expect(result, data, shares, warns)
        self.add(name, tags, inp, kwargs, expect)

    def flat_case(self, name, tags, storage, kwargs):
        self.array_case(name, tags, storage, [storage.numel()], [1], 0, kwargs)

    def nested_case(self, name, tags, value, kwargs):
        result, err, warns = call_asarray(value, kwargs)
        expect = error_expect(err) if err is not None else tensor_expect(result, result, False, warns)
        self.add(name, tags, {"kind": "nested", "value": to_json(value)}, kwargs, expect)

    # case families -------------------------------------------------------

    def casts(self):
        for src in DTYPES:
            for dst in DTYPES:
                n = int(self.rng.integers(1, 25))
                self.flat_case(f"cast-{src}-{dst}", ["cast"], self.cast_source(src, dst, n), {"dtype": dst})

    def copies(self):
        for name in DTYPES:
            storage = self.tensor(name, 8)
            for copy in (None, True, False):
                self.flat_case(f"copy-{name}-{copy}", ["copy"], storage,
                               {} if copy is None else {"copy": copy})
            other = self.pick([d for d in DTYPES if d != name])
            self.flat_case(f"copyfalse-cast-{name}-{other}", ["copy", "error"], storage,
                           {"dtype": other, "copy": False})
            self.flat_case(f"copytrue-same-{name}", ["copy"], storage, {"dtype": name, "copy": True})

    def layout_views(self):
        """(variant, shape, strides, offset) views into a 60-element storage."""
        r = self.rng
        dims = self.pick([(3, 4, 5), (2, 5, 6), (2, 3, 10), (5, 3, 4)])
        contiguous = [dims[1] * dims[2], dims[2], 1]
        perm = self.pick([(0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0)])
        yield "transpose", [dims[i] for i in perm], [contiguous[i] for i in perm], 0
        shape, strides, offset = [3, 4, 5], [20, 5, 1], 0
        for d, step in ((1, int(r.integers(2, 4))), (2, int(r.integers(1, 3)))):
            start = int(r.integers(0, step))
            shape[d] = -(-(shape[d] - start) // step)
            offset += start * strides[d]
            strides[d] *= step
        yield "slice-step", shape, strides, offset
        yield "offset", [2, 5], [20, 1], int(r.integers(1, 36))
        yield "scalar", [], [], int(r.integers(0, 60))
        empty = [3, 4, 5]
        empty[int(r.integers(3))] = 0
        yield "empty", empty, [20, 5, 1], int(r.integers(0, 10))
        yield "row", [4, 5], [5, 1], int(r.integers(1, 41))

    def layouts(self):
        for name in DTYPES:
            storage = self.tensor(name, 60, bounds=(-100, 100), zeros=True)
            for variant, shape, strides, offset in self.layout_views():
                view = torch.as_strided(storage, shape, strides, offset)
                target = self.pick([d for d in DTYPES if cast_is_defined(view, d)])
                for kwargs in ({}, {"copy": True}, {"copy": False}, {"dtype": target}):
                    self.array_case(f"layout-{name}-{variant}-{len(self.cases)}", ["layout"],
                                    storage, shape, strides, offset, kwargs)
        name = self.pick(list(DTYPES))
        storage = self.tensor(name, int(self.rng.integers(2, 6)), bounds=(-100, 100))
        shape, strides = [int(self.rng.integers(2, 5)), storage.numel()], [0, 1]
        view = torch.as_strided(storage, shape, strides, 0)
        target = self.pick([d for d in DTYPES if d != name and cast_is_defined(view, d)])
        for suffix, kwargs in (("", {}), ("-copy", {"copy": True}), ("-copyfalse", {"copy": False}),
                               ("-cast", {"dtype": target})):
            self.array_case(f"layout-broadcast{suffix}", ["layout"], storage, shape, strides, 0, kwargs)

    def grads(self):
        for name in DTYPES:
            self.flat_case(f"grad-{name}", ["requires_grad"], self.tensor(name, 5), {"requires_grad": True})
        self.flat_case("grad-cast-int32-float32", ["requires_grad", "cast"], self.tensor("int32", 4),
                       {"dtype": "float32", "requires_grad": True})
        ints = [self.literal("int") for _ in range(3)]
        for dt in ("float32", "int64"):
            self.nested_case(f"grad-list-{dt}", ["requires_grad", "nested"], ints,
                             {"dtype": dt, "requires_grad": True})
        self.nested_case("grad-list-float", ["requires_grad", "nested"],
                         [self.literal("float") for _ in range(3)], {"requires_grad": True})

    def nesteds(self):
        mixtures = [("bool",), ("int",), ("float",), ("complex",), ("bool", "int"), ("int", "float"),
                    ("bool", "float"), ("float", "complex"), ("int", "complex"),
                    ("bool", "int", "float", "complex")]
        values = []
        for kinds in mixtures:
            for shape in ((4,), (2, 3), (2, 2, 2), (1, 1, 5)):
                values.append(("-".join(kinds) + "-" + "x".join(map(str, shape)), self.nested(kinds, shape)))
        big = 2 ** 63
        values += [("empty", []), ("empty2", [[], []]),
                   ("scalar-int", self.literal("int")), ("scalar-float", self.literal("float")),
                   ("scalar-bool", self.literal("bool")), ("scalar-complex", self.literal("complex")),
                   ("big-int", [big - 1, -big, int(self.rng.integers(-2 ** 62, 2 ** 62))]),
                   ("deep", [[[[[self.literal("float")]]]]])]
        for name, value in values:
            self.nested_case(f"nested-{name}", ["nested"], value, {})
            target = self.pick(list(DTYPES))
            self.nested_case(f"nested-{name}-as-{target}", ["nested", "cast"], value, {"dtype": target})
            self.nested_case(f"nested-{name}-copyfalse", ["nested", "copy", "error"], value, {"copy": False})

    def bad(self):
        r = self.rng
        k = [self.literal("int") for _ in range(8)]
        n = int(r.integers(2, 5))
        big = 2 ** 63
        small = self.pick(["uint8", "int8", "int16", "int32"])
        info = torch.iinfo(DTYPES[small])
        fits = int(r.integers(0, 100))
        cases = [
            ("ragged", [k[:n], k[n:2 * n - 1]], {}),
            ("ragged-deep", [[k[0:1], k[1:2]], [k[2:3], k[3:5]]], {}),
            ("mixed-depth", [k[0], [k[1]]], {}),
            ("mixed-depth2", [[k[0]], k[1]], {}),
            ("overflow", [big + int(r.integers(0, 2 ** 62))], {}),
            ("overflow-neg", [-big - 1 - int(r.integers(0, 2 ** 62))], {}),
            ("string", ["a"], {}),
            ("string-mixed", [k[0], "a"], {}),
            ("null", [None], {}),
            ("dict", [{"x": k[0]}], {}),
            ("complex-into-real", [self.literal("complex")], {"dtype": self.pick(FLOATS)}),
            ("complex-into-int", [k[0], self.literal("complex")], {"dtype": self.pick(INTS)}),
            (f"int-overflow-{small}", [fits, info.max + int(r.integers(1, 1000))], {"dtype": small}),
            (f"int-underflow-{small}", [info.min - int(r.integers(1, 1000)), fits], {"dtype": small}),
            (f"float-overflow-{small}", [float(fits), float(info.max) + float(r.uniform(1, 1000))],
             {"dtype": small}),
        ]
        for name, value, kwargs in cases:
            self.nested_case(f"bad-{name}", ["nested", "error"], value, kwargs)

    def rounding_values(self):
        """float64 values at and next to rounding ties of float16, bfloat16 and float32.

        A tie nudged by 2**-35 (relative) is exact in float64 and rounds to the tie in
        float32, so float64 -> float32 -> float16/bfloat16 (as torch converts) ends on
        the even neighbour where a direct rounding would not.
        """
        r = self.rng
        vals = []
        for bits, emin, emax in ((11, -24, 5), (8, -133, 120)):
            for _ in range(2):
                m = int(r.integers(2 ** (bits - 1), 2 ** bits - 1))
                tie = (2 * m + 1) * 2.0 ** (int(r.integers(emin, emax)) - 1)
                nudges = (1, 1 + 2.0 ** -35, 1 - 2.0 ** -35)
                vals += [s * tie * f for s, f in zip(r.choice([-1.0, 1.0], 3), nudges)]
        vals += [(2 * int(r.integers(0, 1023)) + 1) * 2.0 ** -25,
                 float(r.uniform(65504, 65520)), 65520.0, 3.3895313892515355e+38,
                 (2 * int(r.integers(2 ** 23, 2 ** 24)) + 1) * 2.0 ** int(r.integers(-30, 30)),
                 float(r.integers(1, 8)) * 1e-45, float(r.uniform(-1, 1))]
        return [float(vals[i]) for i in r.permutation(len(vals))]

    def roundings(self):
        vals = self.rounding_values()
        for src in ("float64", "float32"):
            storage = torch.tensor(vals, dtype=torch.float64).to(DTYPES[src])
            for dst in ("float16", "bfloat16", "float32"):
                self.flat_case(f"round-{src}-{dst}", ["cast", "rounding"], storage, {"dtype": dst})
                self.nested_case(f"round-nested-{src}-{dst}", ["nested", "rounding"],
                                 storage.double().tolist(), {"dtype": dst})

    def devices(self):
        storage = self.tensor(self.pick(list(DTYPES)), 6)
        self.flat_case("device-cpu", ["device"], storage, {"device": "cpu"})
        self.flat_case("device-cpu-copyfalse", ["device", "copy"], storage, {"device": "cpu", "copy": False})

    def edges(self):
        for src in DTYPES:
            storage = edge_values(src)
            for dst in DTYPES:
                self.flat_case(f"edge-{src}-{dst}", ["cast", "edge"], storage, {"dtype": dst})
        return self.cases

    def generate(self):
        for family in (self.casts, self.copies, self.layouts, self.grads, self.nesteds,
                       self.bad, self.roundings, self.devices):
            family()
        return self.cases


ITEMSIZE = {name: torch.empty(0, dtype=dt).element_size() for name, dt in DTYPES.items()}


def check_case(c):
    """Structural checks of one case; nested inputs are decoded and rerun through torch."""
    assert isinstance(c["id"], str) and isinstance(c["tags"], list) and isinstance(c["kwargs"], dict)
    inp, exp = c["input"], c["expect"]
    if inp["kind"] == "array":
        assert len(inp["shape"]) == len(inp["strides"]) and inp["offset"] >= 0
        assert len(base64.b64decode(inp["storage"])) == inp["storage_numel"] * ITEMSIZE[inp["dtype"]]
        numel = math.prod(inp["shape"])
    else:
        assert inp["kind"] == "nested" and "value" in inp
        result, err, _ = call_asarray(from_json(inp["value"]), c["kwargs"])
        again = error_expect(err) if err is not None else tensor_expect(result, result, False, [])
        assert {k: v for k, v in exp.items() if k != "warnings"} == again, c["id"]
        numel = None
    if "error" in exp:
        assert exp["error"] in (ALIAS_ERROR, OTHER_ERROR) and isinstance(exp["torch"], str)
        return
    assert set(exp) - {"warnings"} == {"dtype", "shape", "strides", "requires_grad", "data", "shares_memory"}
    assert all(isinstance(w, str) for w in exp.get("warnings", [""])) and exp.get("warnings") != []
    assert len(base64.b64decode(exp["data"])) == math.prod(exp["shape"]) * ITEMSIZE[exp["dtype"]]
    assert (exp["shares_memory"] is None) == (numel == 0), c["id"]


def tag_counts(path):
    """Per-tag case counts of a case file, with the total under "cases"."""
    counts = collections.Counter()
    with open(path) as f:
        for line in f:
            counts.update(json.loads(line)["tags"] + ["cases"])
    return counts


def validate(path, reference):
    ids = set()
    with open(path) as f:
        for line in f:
            c = json.loads(line)
            check_case(c)
            assert c["id"] not in ids, c["id"]
            ids.add(c["id"])
    mine = tag_counts(path)
    ref = tag_counts(reference) if reference and os.path.exists(reference) else collections.Counter()
    print(f"{'tag':<16}{os.path.basename(path):>14}{'reference':>12}")
    for tag in sorted(set(mine) | set(ref), key=lambda t: (t == "cases", t)):
        print(f"{tag:<16}{mine[tag]:>14}{ref[tag]:>12}")
    if ref and set(mine) != set(ref):
        print("tag sets differ:", sorted(set(mine) ^ set(ref)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, help="required, except with --edges (which ignores it)")
    parser.add_argument("--edges", action="store_true",
                        help="write the special-value cast cases for every dtype pair instead")
    parser.add_argument("--out", required=True)
    parser.add_argument("--reference", default=os.path.join(os.path.dirname(__file__), "cases.jsonl"),
                        help="case file whose per-tag counts are printed beside the new ones")
    args = parser.parse_args()
    if args.seed is None and not args.edges:
        parser.error("--seed is required")
    torch.set_warn_always(True)
    cases = Generator(None).edges() if args.edges else Generator(args.seed).generate()
    with open(args.out, "w") as f:
        for c in cases:
            f.write(json.dumps(c, allow_nan=False) + "\n")
    validate(args.out, args.reference)
    print(f"wrote {len(cases)} cases to {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
