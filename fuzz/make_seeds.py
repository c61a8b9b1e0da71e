#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets into fuzz/corpus/<target>/.

Run with the generated stubs on PYTHONPATH (build/python) and numpy:
    PYTHONPATH=build/python /usr/bin/python3 fuzz/make_seeds.py
Each seed is a small valid input of one kind, so that the fuzzers start
from every branch of the request, literal and .npy formats.
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


def main():
    for name, request in requests():
        write("request", name, b"\x00" + request.SerializeToString())
    for name, header in headers():
        write("request", name, b"\x01" + header.SerializeToString())

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
