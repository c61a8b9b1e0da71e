#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Run with the generated stubs on PYTHONPATH (build/python) and numpy:
    PYTHONPATH=build/python /usr/bin/python3 fuzz/make_seeds.py
Each seed is a small valid input of one kind, so that the fuzzers start
from every branch of the request, literal and .npy formats. It also writes
fuzz/request.dict, the request fuzzer's libFuzzer dictionary.
"""
import io
import json
import os
import struct

import numpy as np
from asarray.v1 import asarray_pb2 as pb

HERE = os.path.dirname(os.path.abspath(__file__))


def write(target, name, data):
    folder = os.path.join(HERE, "corpus", target)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, name), "wb") as f:
        f.write(data)


def layout(shape, strides, offset=0):
    return pb.Layout(shape=shape, strides=strides, offset=offset)


def literal_nodes(value, nodes):
    if isinstance(value, list):
        nodes.append(pb.LiteralNode(list_length=len(value)))
        for item in value:
            literal_nodes(item, nodes)
    elif isinstance(value, bool):
        nodes.append(pb.LiteralNode(bool_value=value))
    elif isinstance(value, int):
        nodes.append(pb.LiteralNode(int_value=value))
    elif isinstance(value, complex):
        nodes.append(pb.LiteralNode(complex_value=pb.Complex(real=value.real, imag=value.imag)))
    elif isinstance(value, float):
        nodes.append(pb.LiteralNode(float_value=value))
    else:
        nodes.append(pb.LiteralNode(not_a_number=repr(value)))
    return nodes


def wire_literal(value):
    return pb.Literal(nodes=literal_nodes(value, []))


def requests():
    opts = pb.Options
    yield "inline_f32", pb.ConvertRequest(source=pb.Source(inline_array=pb.InlineArray(
        dtype=pb.DTYPE_FLOAT32, layout=layout([2, 3], [3, 1]),
        storage=np.arange(6, dtype=np.float32).tobytes())))
    yield "inline_transposed_cast", pb.ConvertRequest(
        source=pb.Source(inline_array=pb.InlineArray(
            dtype=pb.DTYPE_INT16, layout=layout([3, 2], [1, 3]),
            storage=np.arange(6, dtype=np.int16).tobytes())),
        options=opts(dtype=pb.DTYPE_BFLOAT16, requires_grad=True))
    yield "inline_negative_stride", pb.ConvertRequest(source=pb.Source(inline_array=pb.InlineArray(
        dtype=pb.DTYPE_UINT8, layout=layout([4], [-1], 3), storage=bytes(range(4)))))
    yield "inline_broadcast_copy", pb.ConvertRequest(
        source=pb.Source(inline_array=pb.InlineArray(
            dtype=pb.DTYPE_COMPLEX64, layout=layout([3, 2], [0, 1]),
            storage=np.arange(2, dtype=np.complex64).tobytes())),
        options=opts(copy=True, dtype=pb.DTYPE_FLOAT64), return_data=True)
    yield "literal", pb.ConvertRequest(source=pb.Source(literal=wire_literal([[1, 2.5], [3, 4]])))
    yield "literal_int8", pb.ConvertRequest(source=pb.Source(literal=wire_literal([1, -2, True])),
                                            options=opts(dtype=pb.DTYPE_INT8))
    yield "shared_memory", pb.ConvertRequest(source=pb.Source(shared_memory=pb.SharedMemoryArray(
        name="/asarray-client-1-abc", offset=64, size=48, dtype=pb.DTYPE_FLOAT32,
        layout=layout([4, 3], [1, 4]))), options=opts(copy=False))
    yield "tensor_id", pb.ConvertRequest(source=pb.Source(tensor_id="0123456789abcdef"),
                                         options=opts(device="cpu"))
    yield "cuda_ipc", pb.ConvertRequest(source=pb.Source(cuda_ipc=pb.CudaIpcArray(
        ipc_handle=bytes(64), device=0, size=16, dtype=pb.DTYPE_FLOAT32,
        layout=layout([4], [1]))), options=opts(device="cuda:0"))


def headers():
    yield "upload", pb.ConvertUploadHeader(dtype=pb.DTYPE_FLOAT32, layout=layout([2, 2], [2, 1]),
                                           storage_size=16)
    yield "upload_cast", pb.ConvertUploadHeader(
        dtype=pb.DTYPE_INT64, layout=layout([3], [2], 1), storage_size=48,
        options=pb.Options(dtype=pb.DTYPE_FLOAT16))


# --- the request fuzzer's programs (fuzz/request_fuzzer.cc) -----------------

M64 = (1 << 64) - 1
OP = dict(convert=0, to_data=1, read=2, renew=3, release=4, fast=5, fast_raw=6, upload=7,
          stream=8, raw=9)
DT = dict(f32=0, f64=1, i64=2, u8=3, bool=4, i8=5, i16=6, i32=7, f16=8, bf16=9, c64=10,
          c128=11, unspecified=12, invalid=0xe0)


def num(v):
    """Reader::Int's encoding of v (a signed or unsigned 64-bit value)."""
    u = v & M64
    if u < 0x40:
        return bytes([u])
    if u & (u - 1) == 0:
        return bytes([0x40 + u.bit_length() - 1])
    if (u + 1) & u == 0 and u.bit_length() < 64:
        return bytes([0x80 + u.bit_length()])
    if (u - 1) & (u - 2) == 0:
        return bytes([0xc1, (u - 1).bit_length() - 1])
    if M64 - u < 64:  # -1 - k
        return bytes([0xc5, M64 - u])
    n = -u & M64
    if n & (n - 1) == 0:  # -2^k
        return bytes([0xc2, n.bit_length() - 1])
    return b"\xc0" + struct.pack("<Q", u)


def prog_layout(shape, strides=None, offset=0, flags=0):
    """FuzzLayout: rank, flags (1: contiguous strides), dims, strides, offset."""
    rank = len(shape)
    out = bytes([rank if rank < 6 else 0x80 | rank])
    if strides is None:
        out += bytes([flags | 1]) + b"".join(num(d) for d in shape)
    else:
        out += bytes([flags]) + b"".join(num(d) for d in shape + strides)
    return out + num(offset)


def prog_inline(dtype, shape, strides=None, offset=0, pattern=b"", storage=0):
    """An inline source: kind 0, dtype, layout, storage mode (0: exact), pattern."""
    return (b"\x00" + bytes([DT[dtype]]) + prog_layout(shape, strides, offset) +
            bytes([storage, len(pattern)]) + pattern)


def prog_request(source, return_data=False, options=None, releases=b""):
    """FuzzRequest: flags (return_data, release count, options), then the source."""
    count = 0 if not releases else len(releases)
    flags = int(return_data) | (count << 1) | (8 if options is not None else 0)
    return bytes([flags]) + bytes(releases) + (options or b"") + source


def prog_options(dtype=None, copy=None, requires_grad=False, device=0):
    f = (1 if dtype is not None else 0) | {None: 0, True: 2, False: 4}[copy] | \
        (8 if requires_grad else 0) | (device << 4)
    return bytes([f]) + (bytes([DT[dtype]]) if dtype is not None else b"")


def held(i):
    """FuzzId: the i-th id this input made."""
    return bytes([i])


def programs():
    f32_2x3 = prog_inline("f32", [2, 3], pattern=b"\x00\x00\x80\x3f")
    yield "prog_convert_read_renew_release", (
        bytes([OP["convert"]]) + prog_request(f32_2x3) +
        bytes([OP["read"]]) + held(0) + num(0) +
        bytes([OP["read"]]) + held(0) + num(M64) +
        bytes([OP["stream"]]) + held(0) + num(4 << 20) +
        bytes([OP["renew"]]) + held(0) + num(M64) +
        bytes([OP["renew"]]) + held(0) + num(1) +
        bytes([OP["release"]]) + held(0) + b"\x01" + held(0))
    yield "prog_return_data_broadcast", (
        bytes([OP["convert"]]) +
        prog_request(prog_inline("c64", [3, 2], [0, 1], pattern=b"\x01\x02"), return_data=True,
                     options=prog_options(dtype="f64", copy=True)))
    # The overflow this fuzzer must find: 2^61 broadcast float32 elements as
    # data (numel * item size is 2^63 bytes); now RESOURCE_EXHAUSTED.
    yield "regress_broadcast_nbytes", (
        bytes([OP["convert"]]) +
        prog_request(prog_inline("f32", [1 << 61], [0]), return_data=True))
    yield "regress_broadcast_nbytes_wrap0", (
        bytes([OP["convert"]]) +
        prog_request(prog_inline("f32", [1 << 62], [0]), return_data=True))
    yield "prog_chain", (
        bytes([OP["convert"]]) + prog_request(prog_inline("i16", [3, 2], [1, 3], pattern=b"\x07")) +
        bytes([OP["convert"]]) + prog_request(b"\x0a" + held(0),
                                              options=prog_options(dtype="f64", copy=True)) +
        bytes([OP["convert"]]) + prog_request(b"\x0b" + held(1), return_data=True) +
        bytes([OP["to_data"]]) + prog_request(b"\x0c" + held(0)) +
        bytes([OP["fast"], 0]) + prog_request(b"\x0a" + held(1), releases=held(0)) +
        bytes([OP["fast"], 0xe0]) + held(2) + b"\x01" + held(1))
    yield "prog_negative_stride_end", (
        bytes([OP["convert"]]) +
        prog_request(prog_inline("u8", [4], [-1], offset=3, pattern=b"\x01\x02\x03\x04")) +
        bytes([OP["to_data"]]) + prog_request(b"\x0a" + held(0),
                                              options=prog_options(dtype="bf16")))
    yield "prog_literal", (
        bytes([OP["convert"]]) + prog_request(
            b"\x08" + bytes([7]) + bytes([4, 2]) + bytes([4, 2]) + bytes([1]) + num(1) +
            bytes([0, 4]) + bytes([4, 2]) + bytes([1]) + num(-1) + bytes([0, 21])))
    yield "prog_shared_memory_absent", (
        bytes([OP["convert"]]) + prog_request(
            b"\x0d" + bytes([DT["f32"]]) + prog_layout([4, 3], [1, 4]) + b"\x00" +
            bytes([2 << 3]) + b"ab" + num(64) + b"\x00",
            options=prog_options(copy=False)))
    yield "prog_shared_memory_no_uid", (
        bytes([OP["convert"]]) + prog_request(
            b"\x0d" + bytes([DT["f32"]]) + prog_layout([4]) + b"\x01" + bytes([12]) +
            b"/../../etc/x" + num(M64) + b"\x00"))
    yield "prog_upload", (
        bytes([OP["upload"], DT["i64"]]) + prog_layout([3], [2], 1) + b"\x00\x01" +
        prog_options(dtype="f16") + b"\x02\x05\x06" +
        bytes([OP["read"]]) + held(0) + num(8))
    yield "prog_fast_raw", (
        bytes([OP["fast_raw"]]) + struct.pack("<H", 3) + b"\x02\x0a\x00" +
        bytes([OP["fast_raw"]]) + struct.pack("<H", 1) + b"\x07")
    raw = pb.ConvertRequest(source=pb.Source(inline_array=pb.InlineArray(
        dtype=pb.DTYPE_INT32, layout=layout([2], [1]), storage=bytes(8))))
    raw = raw.SerializeToString()
    yield "prog_raw", bytes([OP["raw"]]) + struct.pack("<H", len(raw)) + raw
    yield "prog_rank64", (
        bytes([OP["convert"]]) + prog_request(prog_inline("f64", [1] * 64)) +
        bytes([OP["stream"]]) + held(0) + num(M64))


def boundaries():
    """The boundary integers of the request fuzzer, as unsigned 64-bit values."""
    values = {0, 1, 2, M64, 1 << 63, (1 << 63) - 1, (1 << 63) - 2, 4 << 20, (4 << 20) - 1,
              (4 << 20) + 1, 1 << 20, 8 << 20}
    for k in range(64):
        values |= {1 << k, (1 << k) - 1, (1 << k) + 1, -(1 << k) & M64}
    return sorted(values)


def varint(u):
    out = bytearray()
    while True:
        b = u & 0x7f
        u >>= 7
        if u:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def write_dict():
    def escaped(data):
        return "".join("\\x%02x" % b for b in data)
    lines = ["# libFuzzer dictionary of the request fuzzer (written by fuzz/make_seeds.py).",
             "# Boundary integers as 8 little-endian bytes (Reader::Int after selector",
             "# 0xc0), as protobuf varints (the raw modes), then method and op bytes."]
    for u in boundaries():
        lines.append('le_%016x="%s"' % (u, escaped(struct.pack("<Q", u))))
    for u in boundaries():
        lines.append('varint_%016x="%s"' % (u, escaped(varint(u))))
    for u in [(1 << 61), (1 << 62), (1 << 62) + 1, (1 << 63) - 1, 1 << 60, 1 << 59]:
        lines.append('raw_%016x="%s"' % (u, escaped(b"\xc0" + struct.pack("<Q", u))))
    lines.append('fast_convert="\\x01"')
    lines.append('fast_release="\\x02"')
    for name, op in OP.items():
        lines.append('op_%s="%s"' % (name, escaped(bytes([op]))))
    with open(os.path.join(HERE, "request.dict"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    for name, request in requests():
        write("request", name, b"\x00" + request.SerializeToString())
    for name, header in headers():
        write("request", name, b"\x01" + header.SerializeToString())
    # Programs start with any byte past 1.
    for name, program in programs():
        write("request", name, b"\x02" + program)
    write_dict()

    # Upload stream messages, split into pieces of 1 + (first byte % 17) bytes
    # (0: whole).
    unknown = b"\x18\x05" + b"\x21" + bytes(8) + b"\x2d" + bytes(4)
    for i, (name, message) in enumerate([
            ("header", pb.ConvertUploadRequest(header=next(headers())[1])),
            ("data", pb.ConvertUploadRequest(data=bytes(range(200)))),
            ("empty_data", pb.ConvertUploadRequest(data=b"")),
            ("empty", pb.ConvertUploadRequest())]):
        write("upload_message", name, bytes([i * 5]) + message.SerializeToString())
    write("upload_message", "unknown_then_data", b"\x03" + unknown +
          pb.ConvertUploadRequest(data=b"xyz").SerializeToString())

    texts = {
        "nested": "[[1, 2.5], [3, 4]]",
        "bools": "[true, false, true]",
        "complex": '[{"re": 1.0, "im": -2.0}, 3]',
        "nonfinite": '["nan", "inf", "-inf", 0.5]',
        "empty": "[[], []]",
        "scalar": "7",
        "ragged": "[[1], [2, 3]]",
        "invalid": '[null, "x", {"a": 1}, 99999999999999999999]',
    }
    for i, (name, text) in enumerate(texts.items()):
        write("literal", "json_" + name, bytes([0, i % 13, i % 8]) + text.encode())
    for i, value in enumerate([[[1, 2.5], [3, 4]], [True, 2], [1j, 2.0], [], 5, [[1], [2, 3]]]):
        write("literal", "wire_%d" % i, bytes([1, (i * 5) % 13, i % 8]) +
              wire_literal(value).SerializeToString())

    arrays = {
        "f32_c": np.arange(6, dtype=np.float32).reshape(2, 3),
        "f64_fortran": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(3, 2)),
        "u8_scalar": np.array(7, dtype=np.uint8),
        "bool_empty": np.zeros((0, 3), dtype=bool),
        "c64": np.arange(3, dtype=np.complex64),
        "u2_bfloat16": np.arange(4, dtype="<u2"),
        "i16_native": np.arange(4, dtype="=i2"),
    }
    for name, array in arrays.items():
        buf = io.BytesIO()
        np.save(buf, array)
        write("npy", name, buf.getvalue())
    for version in [(2, 0), (3, 0)]:
        buf = io.BytesIO()
        np.lib.format.write_array(buf, np.arange(4, dtype=np.int32), version=version)
        write("npy", "version_%d" % version[0], buf.getvalue())

    # FuzzedDataProvider inputs: dtype bytes, then rank, dims and offset.
    for name, seed in {
        "dense": bytes([9, 10, 2, 1, 3, 1, 4, 1]),
        "negative": bytes([2, 6, 1, 0, 1, 0xff, 1, 3]),
        "broadcast": bytes([11, 0, 3, 1, 2, 1, 0, 1, 5, 1, 7]),
        "huge": bytes([6, 6, 2, 0]) + struct.pack("<qq", 2**62, -2**61),
    }.items():
        write("layout", name, seed)


if __name__ == "__main__":
    main()
