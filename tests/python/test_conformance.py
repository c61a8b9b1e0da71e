"""Every conformance case through the Python client, for both transports,
compared with the live torch.asarray of the installed PyTorch on the same
inputs. Where torch 1.13 and 2.x differ (complex to bool), 2.x is expected."""
import base64
import json
import math
import os

import numpy as np
import pytest
import torch

from asarray_client import AsArrayError

DTYPES = {n: getattr(torch, n) for n in ("bool", "uint8", "int8", "int16", "int32", "int64",
                                         "float16", "bfloat16", "float32", "float64",
                                         "complex64", "complex128")}


def _load():
    path = os.environ.get("ASARRAY_CONFORMANCE_CASES") or os.path.join(
        os.environ["ASARRAY_CONFORMANCE_DIR"], "cases.jsonl")
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


CASES = _load()
# Arrays go both ways; nested literals always travel inline, as themselves.
# Each way once over the local transport (the client's default: regions are
# memfds sent as descriptors) and once over gRPC (regions named in /dev/shm).
# Then each case once more from a remote client, over mutual TLS on TCP: its
# bytes go inline and the result's bytes come back.
RUNS = [(c, t + way) for c in CASES
        for t in (("shm", "inline") if c["input"]["kind"] == "array" else ("literal",))
        for way in ("", "/grpc")]
RUNS += [(c, ("inline" if c["input"]["kind"] == "array" else "literal") + "/remote")
         for c in CASES]


def _decode(value):
    if isinstance(value, list):
        return [_decode(v) for v in value]
    if isinstance(value, dict) and set(value) == {"re", "im"}:
        return complex(value["re"], value["im"])
    if value in ("nan", "inf", "-inf"):
        return float(value)
    return value


def _storage(inp):
    raw = base64.b64decode(inp["storage"])
    dtype = DTYPES[inp["dtype"]]
    if dtype == torch.bfloat16:
        return torch.frombuffer(bytearray(raw), dtype=torch.int16).view(torch.bfloat16)
    if not raw:
        return torch.empty(0, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype)


def _kwargs(case):
    kw = dict(case["kwargs"])
    if "dtype" in kw:
        kw["dtype"] = DTYPES[kw["dtype"]]
    return kw


def _same_values(got, want):
    if got.dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64,
                     torch.complex64, torch.complex128):
        if got.is_complex():
            return _same_values(torch.view_as_real(got), torch.view_as_real(want))
        g, w = got.detach().contiguous(), want.detach().contiguous()
        both_nan = torch.isnan(g) & torch.isnan(w)
        bits = torch.int16 if g.element_size() == 2 else (
            torch.int32 if g.element_size() == 4 else torch.int64)
        return bool(((g.view(bits) == w.view(bits)) | both_nan).all())
    return torch.equal(got.detach(), want.detach())


def _torch_reference(case, src):
    kw = _kwargs(case)
    try:
        result = torch.asarray(src, **kw)
    except Exception as e:
        return None, e
    inp = case["input"]
    if (inp["kind"] == "array" and kw.get("dtype") == torch.bool
            and DTYPES[inp["dtype"]].is_complex and result.numel()):
        fixed = (src.real != 0) | (src.imag != 0)  # torch 2.x rule
        result = fixed.clone() if result.data_ptr() != src.data_ptr() else result
    return result, None


@pytest.mark.parametrize("case,transport", RUNS, ids=[f"{c['id']}-{t}" for c, t in RUNS])
def test_case_matches_live_torch(request, client, grpc_client, case, transport):
    if transport.endswith("/grpc"):
        client, transport = grpc_client, transport[:-len("/grpc")]
    remote = transport.endswith("/remote")
    if remote:
        client, transport = request.getfixturevalue("remote"), transport[:-len("/remote")]
    check_case(client, case, transport, remote)


def check_case(client, case, transport, remote=False):
    """Converts `case` through `client` ("shm": from one of its regions,
    "inline" or "literal": as it is; `remote`: a remote client's) and
    compares the result, or the error, with live torch's."""
    inp = case["input"]
    if inp["kind"] == "array":
        storage = _storage(inp)
        src = storage.as_strided(inp["shape"], inp["strides"], inp["offset"])
        if transport == "shm":
            region = client.share(storage, like="torch")
            ours_src = region.as_strided(inp["shape"], inp["strides"], inp["offset"])
        else:
            ours_src = src
        torch_storage = (storage.data_ptr(), storage.data_ptr() + storage.numel() * storage.element_size())
    else:
        src = ours_src = _decode(inp["value"])
    want, torch_error = _torch_reference(case, src)

    alias_refused = (transport == "inline" and inp["kind"] == "array"
                     and case["kwargs"].get("copy") is False)
    try:
        got = client.asarray(ours_src, **_kwargs(case))
        ours_error = None
    except AsArrayError as e:
        got, ours_error = None, e

    if torch_error is not None or alias_refused:
        assert ours_error is not None, f"torch raised {torch_error!r}, we returned {got}"
        expected_code = "FAILED_PRECONDITION" if (
            alias_refused or "alias" in str(torch_error)) else "INVALID_ARGUMENT"
        assert ours_error.code.name == expected_code, ours_error
        return
    assert ours_error is None, f"torch returned {want}, we raised {ours_error!r}"
    assert got.dtype == want.dtype
    assert tuple(got.shape) == tuple(want.shape)
    assert got.stride() == want.stride()
    assert got.requires_grad == want.requires_grad
    assert _same_values(got, want)
    if remote:  # a copy of the result's bytes, with no handle behind it
        with pytest.raises(KeyError):
            client.handle(got)
    elif inp["kind"] == "array" and want.numel() > 0:
        torch_aliased = torch_storage[0] <= want.data_ptr() < torch_storage[1]
        assert client.handle(got).shares_memory == (torch_aliased and transport == "shm")
