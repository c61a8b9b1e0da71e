"""Every kind of input torch.asarray takes, through the Python client and a
real server, compared with the live torch.asarray on the same inputs, for
copy=None, True and False, with and without a dtype: values, dtype, shape,
the error (copy=False refusals are ValueErrors in torch's words), and memory
shared with the input wherever torch shares it.

The installed torch is 1.13. Where PyTorch 2.x differs (numpy scalars, DLPack
capsules with a dtype or copy, objects with __dlpack__), the client follows
2.x: those cases build 2.x's result from steps both versions agree on, and
say so."""
import array
import gc
import time

import numpy as np
import pytest
import torch
import torch.utils.dlpack

from asarray_client import AsArrayError, AsArrayValueError

# torch warns about read-only buffers, lists of arrays, complex read as real and numpy
# bools read as integers, on both sides alike; none of it is under test.
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"),
              pytest.mark.filterwarnings("ignore::DeprecationWarning"),
              pytest.mark.filterwarnings("ignore::numpy.ComplexWarning")]

COPIES = [None, True, False]
DTYPES = [None, torch.float64]
ALL_DTYPES = [torch.bool, torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64,
              torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.complex64,
              torch.complex128]


def _outcome(fn):
    try:
        return fn(), None
    except Exception as e:  # compared with the other side's below
        return None, e


def _check(client, make, dtype, copy, base=None, expect=None):
    """client.asarray(make(), ...) against torch.asarray(make(), ...), or
    against expect(make(), ...) where 2.x differs from the installed torch.
    `base`: the array of this client's region that the input's memory lies
    in (the client can alias only that), None for heap memory."""
    kw = {"dtype": dtype, "copy": copy}
    want, want_error = _outcome(lambda: (expect or torch.asarray)(make(), **kw))
    got, got_error = _outcome(lambda: client.asarray(make(), **kw))
    if want_error is not None:
        assert got_error is not None, f"torch raised {want_error!r}, the client gave {got}"
        assert isinstance(got_error, type(want_error)), (got_error, want_error)
        if copy is False or not isinstance(got_error, AsArrayError):
            # copy=False refusals, and what the client refuses itself, in torch's words;
            # the server words its own (INVALID_ARGUMENT, naming the element).
            assert str(want_error) in str(got_error)
        return
    if base is None and copy is False:
        # torch aliases the caller's heap memory; bytes sent inline never can be.
        assert isinstance(got_error, AsArrayValueError), got_error
        assert got_error.code.name == "FAILED_PRECONDITION"
        return
    assert got_error is None, f"torch gave {want}, the client raised {got_error!r}"
    assert got.dtype == want.dtype and got.shape == want.shape
    assert torch.equal(got, want)
    if client.remote:  # a copy of the result's bytes, with no handle behind it
        with pytest.raises(KeyError):
            client.handle(got)
    elif base is None:
        assert not client.handle(got).shares_memory
    if base is None:
        return
    lo = base.__array_interface__["data"][0]
    assert client.handle(got).shares_memory == (lo <= want.data_ptr() < lo + base.nbytes)
    base += 1  # written through the input, it shows in both results or in neither
    assert torch.equal(got, want)


@pytest.fixture(params=["local", "grpc"])
def near(request):
    """A client on the server's host: over the local transport (regions are
    memfds), then over gRPC alone (regions named in /dev/shm)."""
    return request.getfixturevalue("client" if request.param == "local" else "grpc_client")


@pytest.fixture(params=["local", "grpc", "remote"])
def any_client(request):
    """A client of every transport, a remote one (mutual TLS on TCP) too."""
    names = {"local": "client", "grpc": "grpc_client", "remote": "remote"}
    return request.getfixturevalue(names[request.param])


@pytest.fixture
def region(near):
    """A float32 (2, 3) array in a region of the client's: memory it can alias."""
    arr = near.empty((2, 3), torch.float32, like="numpy")
    arr[...] = np.arange(6).reshape(2, 3)
    return arr


class DLPackExporter:
    """An object with __dlpack__ (as CuPy's and JAX's arrays are), no other protocol."""

    def __init__(self, arr):
        self._arr = arr

    def __dlpack__(self, stream=None):
        return self._arr.__dlpack__()

    def __dlpack_device__(self):
        return self._arr.__dlpack_device__()


class ArrayInterface:
    """An object with __array_interface__ only, which numpy views."""

    def __init__(self, arr):
        self._arr = arr
        self.__array_interface__ = arr.__array_interface__


def _from_tensor_2x(obj, dtype=None, copy=None):
    """torch 2.x for a capsule: the tensor it holds, then the tensor rules
    (1.13 takes a capsule only without dtype and copy)."""
    return torch.asarray(torch.from_dlpack(obj), dtype=dtype, copy=copy)


def _later_protocol_2x(convert):
    """torch 2.x for an object it reaches past the buffer check: copy=False
    refused first, then `convert` (1.13 rejects __dlpack__ objects).
    copy=True copies, as documented (2.x passes copy=False on to .to() there,
    which would alias)."""
    def expect(obj, dtype=None, copy=None):
        if copy is False:
            raise ValueError("can't alias arbitrary sequence into a tensor.")
        return torch.asarray(convert(obj), dtype=dtype, copy=copy)
    return expect


REGION_KINDS = {
    "tensor": (lambda arr: torch.from_numpy(arr), None),
    "ndarray": (lambda arr: arr, None),
    "transposed ndarray": (lambda arr: arr.T, None),
    "numpy capsule": (lambda arr: arr.__dlpack__(), _from_tensor_2x),
    "torch capsule": (lambda arr: torch.utils.dlpack.to_dlpack(torch.from_numpy(arr)),
                      _from_tensor_2x),
    "__dlpack__": (lambda arr: DLPackExporter(arr), _later_protocol_2x(torch.from_dlpack)),
    # torch (1.13 and 2.x) does not read __array_interface__; the client
    # reads it as numpy does, in the place of torch's lookup the issue gives it.
    "__array_interface__": (lambda arr: ArrayInterface(arr), _later_protocol_2x(np.asarray)),
    "memoryview": (lambda arr: memoryview(arr), None),
    "read-only memoryview": (lambda arr: memoryview(arr).toreadonly(), None),
}


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", REGION_KINDS)
def test_memory_of_a_region_is_aliased_where_torch_aliases_it(near, region, kind, dtype, copy):
    make, expect = REGION_KINDS[kind]
    _check(near, lambda: make(region), dtype, copy, base=region, expect=expect)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", REGION_KINDS)
def test_heap_memory_matches_torch_and_is_never_aliased(any_client, kind, dtype, copy):
    heap = np.arange(6, dtype=np.float32).reshape(2, 3)
    make, expect = REGION_KINDS[kind]
    _check(any_client, lambda: make(heap), dtype, copy, expect=expect)


def test_a_capsule_without_options_matches_the_installed_torch(near, region):
    # The case where 1.13 and 2.x agree, against the live call.
    want = torch.asarray(region.__dlpack__())
    got = near.asarray(region.__dlpack__())
    assert torch.equal(got, want) and near.handle(got).shares_memory


def test_a_used_capsule_is_refused_as_torch_refuses_it(client):
    capsule = np.arange(3.0).__dlpack__()
    torch.from_dlpack(capsule)
    with pytest.raises(RuntimeError) as want:
        torch.asarray(capsule)
    assert "PyCapsule" in str(want.value)
    with pytest.raises(RuntimeError, match="PyCapsule"):
        client.asarray(capsule)


BUFFERS = {
    "bytes": lambda: b"\x00\x00\x80?\x00\x00\x00@\x00\x00@@\x00\x00\x80@",
    "bytearray": lambda: bytearray(range(16)),
    "array.array int32": lambda: array.array("i", [1, 2, 3, 400]),
    "array.array float64": lambda: array.array("d", [0.5, -1.5]),
    "memoryview of 2-D int16": lambda: memoryview(np.arange(8, dtype=np.int16).reshape(2, 4)),
}


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("dtype", [None, torch.float64, torch.uint8, torch.int32,
                                   torch.bfloat16, torch.complex128])
@pytest.mark.parametrize("kind", BUFFERS)
def test_buffers_are_read_with_torchs_dtype_rule(any_client, kind, dtype, copy):
    # Without a dtype the bytes are float32, torch's default; with one they
    # are read as it, not cast; one dimension, whatever the buffer's format.
    _check(any_client, BUFFERS[kind], dtype, copy)


@pytest.mark.parametrize("make", [lambda: b"", lambda: b"abc",
                                  lambda: memoryview(np.arange(6, dtype=np.int32))[::2]],
                         ids=["empty", "not whole elements", "not contiguous"])
def test_buffers_torch_cannot_read_fail_as_in_torch(client, make):
    for copy in COPIES:
        _check(client, make, None, copy)


NUMPY_SCALARS = [np.float64(2.5), np.float16(-0.75), np.int32(-7), np.uint8(200),
                 np.bool_(True), np.complex64(1 - 2j)]


def _numpy_scalar_2x(scalar, dtype=None, copy=None):
    """torch 2.x for a numpy scalar: a new 0-d tensor of its own dtype, then
    cast; copy=False is refused (by 2.x as a RuntimeError; the client's
    copy=False refusals are all ValueErrors). 1.13 reads the scalar's bytes
    as a float32 buffer instead."""
    if copy is False:
        raise ValueError("can't alias NumPy scalars. Either remove copy=False or transform it "
                         "in a ndarray. ")
    return torch.asarray(np.array(scalar), dtype=dtype)


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scalar", NUMPY_SCALARS, ids=lambda s: type(s).__name__)
def test_numpy_scalars_follow_torch_2x(any_client, scalar, dtype, copy):
    _check(any_client, lambda: scalar, dtype, copy, expect=_numpy_scalar_2x)


SEQUENCES = {
    "numpy float64 and int": lambda: [np.float64(1.5), 2],
    "numpy float16": lambda: [np.float16(0.5), np.float16(-2)],
    "numpy int32 and uint8": lambda: [np.int32(1), np.uint8(200)],
    "nested numpy int8 and uint8": lambda: [[np.int8(-1)], [np.uint8(3)]],
    "numpy bool tuple": lambda: (np.bool_(True), False),
    "0-d tensors": lambda: [torch.tensor(1, dtype=torch.int8), np.uint8(3)],
    "one-element bfloat16 tensor": lambda: [torch.tensor([2.5], dtype=torch.bfloat16), 1],
    "complex tensor and numpy float64": lambda: [torch.tensor(1 + 2j), np.float64(-1)],
    "numpy arrays": lambda: [np.arange(3, dtype=np.int16), np.arange(3, 6, dtype=np.int16)],
    "numpy arrays and numbers": lambda: [[1, 2.5], np.array([3, 4], dtype=np.float64)],
    "range": lambda: range(5),
    "plain numbers": lambda: [[1, 2.5], [3, 4]],
    "tensors of many elements": lambda: [torch.tensor([1, 2]), torch.tensor([3, 4])],
}


@pytest.mark.parametrize("copy", COPIES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("kind", SEQUENCES)
def test_sequences_match_torch(any_client, kind, dtype, copy):
    _check(any_client, SEQUENCES[kind], dtype, copy)


TYPED_LEAVES = [np.bool_(True), np.uint8(200), np.int32(-3), np.float16(1.5), np.float32(-2.5),
                np.float64(2.5), np.complex64(1 - 2j), np.complex128(3 + 4j),
                torch.tensor(True), torch.tensor(7), torch.tensor(1.5), torch.tensor(1 + 2j),
                torch.tensor([1.0, 2.0]), torch.tensor([[4]])]


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=str)
@pytest.mark.parametrize("leaf", TYPED_LEAVES, ids=repr)
def test_a_typed_number_in_a_sequence_is_read_into_a_dtype_as_torch_reads_it(client, leaf,
                                                                              dtype):
    # torch reads it by __index__ into bool and integers (np.float32 is then
    # a TypeError, np.float64 a Python float is not), __float__ into floating
    # dtypes (a complex tensor then fails), __complex__ into complex ones.
    _check(client, lambda: [leaf, 1], dtype, None)


def test_a_sequence_of_two_dtypes_promotes_as_torch_does(client):
    for a in ALL_DTYPES:
        for b in ALL_DTYPES:
            make = lambda: [torch.ones((), dtype=a), torch.zeros((), dtype=b)]  # noqa: E731
            _check(client, make, None, None)


def test_a_batch_takes_every_kind(near, region):
    objs = [b"\x00\x00\x80?", region.__dlpack__(), [np.float64(0.25), 1], np.int16(3),
            ArrayInterface(region), memoryview(region)]
    got = near.asarray_batch(objs)
    want = [torch.asarray(b"\x00\x00\x80?"), torch.from_numpy(region),
            torch.asarray([np.float64(0.25), 1]), torch.asarray(np.array(np.int16(3))),
            torch.from_numpy(region), torch.asarray(memoryview(region))]
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and torch.equal(g, w)
    assert [near.handle(g).shares_memory for g in got] == [False, True, False, False, True, True]


class CudaArrayInterface:
    """An object with __cuda_array_interface__ (as Numba's device arrays are)."""

    def __init__(self, interface):
        self.__cuda_array_interface__ = interface


FAKE_CUDA = {"shape": (2,), "typestr": "<f4", "data": (0, False), "version": 2}


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CUDA tests below take real memory")
def test_cuda_array_interface_without_a_device_fails_as_torch(client):
    # torch views the memory through torch.as_tensor, which needs a device;
    # the client does the same, and so raises what torch raises.
    for copy in (None, True, False):
        _check(client, lambda: CudaArrayInterface(FAKE_CUDA), None, copy)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="torch sees no CUDA device here")


def _cuda_inputs(t):
    """The kinds of CUDA input torch.asarray takes, each viewing `t`."""
    return {"tensor": lambda: t, "capsule": lambda: torch.utils.dlpack.to_dlpack(t),
            "interface": lambda: CudaArrayInterface(t.__cuda_array_interface__)}


@CUDA
@pytest.mark.parametrize("kind", ["tensor", "capsule", "interface"])
@pytest.mark.parametrize("dtype", [None, torch.float16])
@pytest.mark.parametrize("copy", [None, True, False])
def test_cuda_sources_as_torch_takes_them(client, kind, dtype, copy):
    t = torch.arange(24.0, device="cuda").reshape(4, 6)[1:, ::2]  # inside a larger allocation
    make = _cuda_inputs(t)[kind]
    kw = {"dtype": dtype, "copy": copy}
    want, want_error = _outcome(lambda: torch.asarray(make(), **kw))
    got, got_error = _outcome(lambda: client.asarray(make(), **kw))
    if want_error is not None:
        assert isinstance(got_error, type(want_error)), (got_error, want_error)
        assert str(want_error) in str(got_error)
        return
    assert got_error is None, got_error
    assert got.device == want.device and got.dtype == want.dtype and torch.equal(got, want)
    aliased = want.data_ptr() == t.data_ptr()
    # An alias is this process's own memory, viewed where it is; a copy is the server's.
    assert (got.data_ptr() == t.data_ptr()) == aliased
    assert client.handle(got).shares_memory == aliased
    if aliased:
        t += 1
        torch.cuda.synchronize()
        assert torch.equal(got, t)


@CUDA
def test_cuda_results_go_back_by_id_and_own_aliases_are_released(client):
    before = client.stats()
    t = torch.arange(8.0, device="cuda")
    alias = client.asarray(t)
    assert client.handle(alias).shares_memory and alias.data_ptr() == t.data_ptr()
    copy = client.asarray(t, copy=True)
    again = client.asarray(copy, dtype=torch.float64)  # the server's own tensor, by id
    assert torch.equal(again, t.double())
    with pytest.raises(ValueError, match="other than the result itself"):
        client.asarray(copy[1:])
    del alias, copy, again
    gc.collect()
    client.flush()
    deadline = time.monotonic() + 10
    while client.stats().tensors != before.tensors and time.monotonic() < deadline:
        time.sleep(0.05)
    after = client.stats()
    assert after.tensors == before.tensors and after.cuda_ipc_opened == before.cuda_ipc_opened
