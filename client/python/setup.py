"""Build steps pyproject.toml cannot declare: the asarray.v1 stubs are
generated into the build from the repository's proto/ (../../proto), or from
the copy of it that an sdist carries (./proto)."""
import os
import shutil
import sys

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist
from setuptools.errors import ExecError, FileError

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import build_stubs  # noqa: E402  (beside this file, not installed)


def _proto_dir():
    for candidate in (os.path.join(HERE, "proto"), os.path.join(HERE, "..", "..", "proto")):
        if all(os.path.isfile(os.path.join(candidate, p)) for p in build_stubs.PROTOS):
            return os.path.normpath(candidate)
    raise FileError(f"{build_stubs.PROTOS[0]} is in neither {HERE}/proto nor "
                    f"{HERE}/../../proto: build from the asarrayd repository's "
                    "client/python, or from an sdist made there")


class BuildPy(build_py):
    """Copies the package, then generates the stubs beside it."""

    def run(self):
        # A module removed from the sources must not live on in the build.
        shutil.rmtree(os.path.join(self.build_lib, "asarray_client"), ignore_errors=True)
        super().run()
        try:
            build_stubs.generate(_proto_dir(), self.build_lib)
        except build_stubs.StubError as e:
            raise ExecError(str(e)) from None


class Sdist(sdist):
    """Carries the .proto files, which live outside this folder."""

    def make_release_tree(self, base_dir, files):
        super().make_release_tree(base_dir, files)
        source = _proto_dir()
        for proto in build_stubs.PROTOS:
            target = os.path.join(base_dir, "proto", proto)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(os.path.join(source, proto), target)


setup(cmdclass={"build_py": BuildPy, "sdist": Sdist})
