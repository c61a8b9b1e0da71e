"""The package as a caller gets it: the copy under test is the one meant
(installed in a venv by scripts/test.sh, build/python under ctest), it
carries its type information (py.typed), it type-checks, and a caller's code
is checked against its annotations with mypy: good calls pass, wrong ones
are reported at their lines.

Environment: ASARRAY_CLIENT_UNDER, the folder the copy under test must be
imported from.
"""
import os
import site
import subprocess
import sys
import textwrap

import pytest

import asarray_client
from asarray.v1 import asarray_pb2

PACKAGE = os.path.dirname(os.path.abspath(asarray_client.__file__))
CONFIG = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "client", "python",
                      "pyproject.toml")


def test_the_copy_under_test_is_imported():
    under = os.path.realpath(os.environ["ASARRAY_CLIENT_UNDER"])
    for module in (asarray_client, asarray_pb2):
        path = os.path.realpath(module.__file__)
        assert os.path.commonpath([path, under]) == under, f"{module.__name__} from {path}"


def test_the_package_and_its_stubs_are_marked_typed():
    assert os.path.isfile(os.path.join(PACKAGE, "py.typed"))
    stubs = os.path.dirname(os.path.abspath(asarray_pb2.__file__))
    assert os.path.isfile(os.path.join(stubs, "py.typed"))
    assert os.path.isfile(os.path.join(stubs, "asarray_pb2.pyi"))


@pytest.fixture(scope="module")
def mypy(tmp_path_factory):
    """Runs mypy with the package's configuration on paths; (status, output)."""
    cache = tmp_path_factory.mktemp("mypy-cache")
    env = dict(os.environ)
    env.pop("MYPYPATH", None)
    # mypy finds an installed package itself (by its py.typed, as a caller's
    # mypy does), and any other copy through MYPYPATH.
    parent = os.path.dirname(PACKAGE)
    if parent not in {os.path.abspath(p) for p in site.getsitepackages()}:
        env["MYPYPATH"] = parent

    def run(*paths):
        done = subprocess.run([sys.executable, "-m", "mypy", "--config-file", CONFIG,
                               "--cache-dir", str(cache), "--no-error-summary", *paths],
                              env=env, capture_output=True, text=True, timeout=600)
        return done.returncode, done.stdout + done.stderr

    return run


def test_the_package_type_checks(mypy):
    status, output = mypy(PACKAGE)
    assert status == 0, output


GOOD = """
import numpy as np
from asarray_client import (AsArrayError, AsArrayNotFoundError, Client, Handle,
                            SharedArrayRef, TensorRef, TreeRef)


def use(address: str) -> int:
    with Client(address, timeout=5.0, root_certificates=None) as client:
        t = client.asarray(np.zeros(3), dtype="float32", copy=False)
        batch = client.asarray_batch([t, [1, 2]], dtype=["float64", None], like="numpy")
        handle: Handle = client.handle(t)
        shape: tuple[int, ...] = handle.shape
        ref: TensorRef = client.upload([1.5, 2.5], ttl_ms=1000)
        end: int | list[int] = client.renew(ref)
        tree = client.ref({"w": client.empty((2, 3), "float32")})
        if isinstance(tree, (TreeRef, SharedArrayRef)):
            client.release(tree)
        held: list[Handle] = client.list()
        try:
            client.release("no-such-id")
        except AsArrayNotFoundError as e:
            print(e.code, e.details)
        except AsArrayError:
            raise
        return client.stats().local_batches + len(batch) + len(held) + len(shape)
"""

# Each wrong line ends with "# wrong".
BAD = """
import numpy as np
from asarray_client import Client, Handle, TensorRef

client = Client("unix:/run/asarrayd.sock")
client.asarray(np.zeros(3), like="jax")  # wrong
Client(timeout="soon")  # wrong
client.asarray(np.zeros(3), copy="no")  # wrong
client.release()  # wrong
client.ref(np.zeros(3), ttl_ms="1s")  # wrong
handle: Handle = client.handle(np.zeros(3))
name: int = handle.id  # wrong
count: str = client.stats().local_batches  # wrong
client.empty((2, 3), "float32", like="numpy").nbytes
"""


def test_a_caller_is_checked_against_the_annotations(mypy, tmp_path):
    good = tmp_path / "good_caller.py"
    good.write_text(textwrap.dedent(GOOD))
    status, output = mypy(str(good))
    assert status == 0, output

    bad = tmp_path / "bad_caller.py"
    bad.write_text(textwrap.dedent(BAD))
    status, output = mypy(str(bad))
    wrong = {n for n, line in enumerate(BAD.splitlines(), 1) if line.endswith("# wrong")}
    reported = {int(line.split(":")[1]) for line in output.splitlines()
                if line.startswith(str(bad)) and ": error:" in line}
    assert status == 1 and reported == wrong, output
