"""numpy's side of npz_test: .npz files as numpy writes them, broken ones,
and np.load of the files WriteNpz wrote.

usage: npz_numpy.py write DIR           stored.npz (np.savez), deflated.npz
                                        (np.savez_compressed), manifest.json
       npz_numpy.py bad DIR             one broken archive per way of breaking
       npz_numpy.py check NPZ MANIFEST  np.load(NPZ) holds what MANIFEST says,
                                        every member stored
A manifest maps each key to its dtype (asarrayd's name), shape, whether
the file stores it in Fortran order, and its bytes in that order (hex).
"""
import io
import json
import struct
import sys
import warnings
import zipfile

import numpy as np

# asarrayd's dtypes as .npy stores them; bfloat16 is its raw bits, as <u2.
NUMPY = {
    "bool": "|b1", "uint8": "|u1", "int8": "|i1", "int16": "<i2", "int32": "<i4",
    "int64": "<i8", "float16": "<f2", "bfloat16": "<u2", "float32": "<f4",
    "float64": "<f8", "complex64": "<c8", "complex128": "<c16",
}
ASARRAY = {np.dtype(v): k for k, v in NUMPY.items()}


def arrays():
    rng = np.random.default_rng(7)
    cplx = rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))
    return {
        "f32": rng.standard_normal((3, 4)).astype("<f4"),
        "scalar": np.array(2.5),
        "empty": np.zeros((0, 3), "<i2"),
        "fortran": np.asfortranarray(np.arange(24, dtype="<i8").reshape(2, 3, 4) - 7),
        "flags": np.array([True, False, True, True]),
        "c64": cplx.astype("<c8"),
        "c128": np.asfortranarray(cplx),
        "u8": np.arange(250, 256, dtype="|u1"),
        "i8": np.arange(-3, 3, dtype="|i1").reshape(3, 2),
        "i32": np.array([[-(2**31), 2**31 - 1]], "<i4"),
        "f16": np.array([0.5, -65504, np.inf], "<f2"),
        "bits": np.array([0x3F80, 0xFFFF], "<u2"),
        "f64": np.array(-0.0),
        "dir/key": np.arange(3, dtype="<f8"),
    }


def describe(a):
    fortran = bool(a.flags.f_contiguous and not a.flags.c_contiguous)
    return {"dtype": ASARRAY[a.dtype], "shape": list(a.shape), "fortran": fortran,
            "hex": a.tobytes("F" if fortran else "C").hex()}


def write(out):
    a = arrays()
    np.savez(f"{out}/stored.npz", **a)
    np.savez_compressed(f"{out}/deflated.npz", **a)
    with open(f"{out}/manifest.json", "w") as f:
        json.dump({k: describe(v) for k, v in a.items()}, f)


def npy(a):
    f = io.BytesIO()
    np.save(f, a)
    return f.getvalue()


def archive(path, members, method=zipfile.ZIP_STORED):
    with zipfile.ZipFile(path, "w", method) as z:
        for name, data in members:
            z.writestr(name, data)


def patch(path, offset_of, pack):
    """Rewrites a field of the (only) member's local and central headers."""
    data = bytearray(open(path, "rb").read())
    local = 0
    central = data.rfind(b"PK\x01\x02")
    for header, kind in ((local, "local"), (central, "central")):
        at, fmt = offset_of[kind]
        old = struct.unpack_from(fmt, data, header + at)[0]
        struct.pack_into(fmt, data, header + at, pack(old))
    open(path, "wb").write(data)


SIZE = {"local": (22, "<I"), "central": (24, "<I")}
FLAGS = {"local": (6, "<H"), "central": (8, "<H")}


def bad(out):
    ok = npy(np.arange(4, dtype="<f4"))
    open(f"{out}/garbage.npz", "wb").write(b"this is not a zip archive at all")
    open(f"{out}/empty.npz", "wb").close()
    archive(f"{out}/notnpy.npz", [("ok.npy", ok), ("notes.txt", b"hello")])
    archive(f"{out}/noname.npz", [(".npy", ok)])
    archive(f"{out}/badheader.npz", [("ok.npy", ok), ("big.npy", npy(np.arange(3, dtype=">f4")))])
    archive(f"{out}/truncated.npz", [("short.npy", ok[:-4])])
    archive(f"{out}/trailing.npz", [("long.npy", ok + bytes(8))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate
        archive(f"{out}/duplicate.npz", [("a.npy", ok), ("b.npy", ok), ("a.npy", ok)])
    archive(f"{out}/bzip2.npz", [("b.npy", ok)], zipfile.ZIP_BZIP2)
    archive(f"{out}/encrypted.npz", [("e.npy", ok)])
    patch(f"{out}/encrypted.npz", FLAGS, lambda f: f | 1)
    zeros = npy(np.zeros(1 << 20, "|u1"))
    archive(f"{out}/bomb.npz", [("zeros.npy", zeros)], zipfile.ZIP_DEFLATED)
    archive(f"{out}/ratio.npz", [("huge.npy", zeros)], zipfile.ZIP_DEFLATED)
    patch(f"{out}/ratio.npz", SIZE, lambda s: 0xFFFFFFF0)
    archive(f"{out}/more.npz", [("more.npy", zeros)], zipfile.ZIP_DEFLATED)
    patch(f"{out}/more.npz", SIZE, lambda s: s - 16)
    archive(f"{out}/less.npz", [("less.npy", zeros)], zipfile.ZIP_DEFLATED)
    patch(f"{out}/less.npz", SIZE, lambda s: s + 16)
    archive(f"{out}/storedsize.npz", [("s.npy", ok)])
    patch(f"{out}/storedsize.npz", SIZE, lambda s: s + 1000)
    archive(f"{out}/crc.npz", [("crc.npy", ok)])
    data = bytearray(open(f"{out}/crc.npz", "rb").read())
    data[30 + len("crc.npy") + len(ok) - 1] ^= 0xFF  # the last data byte
    open(f"{out}/crc.npz", "wb").write(data)


def check(path, manifest_path):
    manifest = json.load(open(manifest_path))
    problems = [f"{i.filename} is not stored" for i in zipfile.ZipFile(path).infolist()
                if i.compress_type != zipfile.ZIP_STORED]
    with np.load(path) as z:
        if sorted(z.files) != sorted(manifest):
            problems.append(f"keys {sorted(z.files)}, want {sorted(manifest)}")
        for key, want in manifest.items():
            if key not in z.files:
                continue
            a = z[key]
            if a.dtype != np.dtype(NUMPY[want["dtype"]]) or list(a.shape) != want["shape"] \
                    or a.tobytes("F" if want["fortran"] else "C") != bytes.fromhex(want["hex"]):
                problems.append(f"{key}: {a.dtype} {a.shape} {a.tobytes().hex()}, want {want}")
    for p in problems:
        print(p, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("write", "bad"):
        sys.exit(write(sys.argv[2]) if sys.argv[1] == "write" else bad(sys.argv[2]))
    if len(sys.argv) == 4 and sys.argv[1] == "check":
        sys.exit(check(sys.argv[2], sys.argv[3]))
    print(__doc__, file=sys.stderr)
    sys.exit(2)
