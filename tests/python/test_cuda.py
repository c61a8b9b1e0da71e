"""CUDA handles through the Python client: they open into torch CUDA tensors
that view the server's device memory. Skips where torch sees no GPU."""
import gc
import time

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="torch sees no CUDA device here")


def wait_for(predicate, seconds=10):
    deadline = time.monotonic() + seconds
    while not predicate() and time.monotonic() < deadline:
        time.sleep(0.05)
    return predicate()


@pytest.mark.parametrize("dtype", [None, torch.bfloat16, torch.float16, torch.int32,
                                   torch.complex64, torch.bool])
def test_cuda_results_are_torch_cuda_tensors_equal_to_torch(client, dtype):
    x = (np.arange(-24, 24, dtype=np.float32).reshape(6, 8) / 3)[:, ::2]  # strided
    got = client.asarray(x, device="cuda", dtype=dtype)
    want = torch.asarray(x, device="cuda", dtype=dtype)
    assert got.is_cuda and got.device == want.device
    assert got.dtype == want.dtype and got.shape == want.shape
    bits = {torch.bfloat16: torch.int16, torch.float16: torch.int16}.get(want.dtype)
    if bits is not None:
        assert torch.equal(got.view(bits), want.view(bits))
    else:
        assert torch.equal(got, want)
    assert client.handle(got).device == "cuda:0"


def test_literal_and_requires_grad_on_the_device(client):
    t = client.asarray([[1, 2.5], [3, 4]], device="cuda:0", requires_grad=True)
    assert t.is_cuda and t.requires_grad and t.dtype == torch.float32
    assert t.detach().cpu().tolist() == [[1, 2.5], [3, 4]]


def test_writes_through_the_tensor_reach_the_servers_memory(client):
    t = client.asarray(np.zeros(16, dtype=np.float32), device="cuda")
    t.fill_(7)
    torch.cuda.synchronize()
    back = client.read(t)  # the server reads its own allocation
    assert (back == 7).all()


def test_dropping_the_tensor_frees_the_device_memory(client):
    t = client.asarray(np.ones(1 << 20, dtype=np.float32), device="cuda")
    assert client.stats().cuda_allocations >= 1
    del t
    gc.collect()
    client.flush()
    assert wait_for(lambda: client.stats().cuda_allocations == 0)
