"""Build pyshim: one Cython extension (shim._native) and message code from proto/.

`pip install .` runs protoc (Debian's protobuf-compiler) on proto/ and
generates two things into the build:
  * shim/pb/_gen/*.py  - the lean codec the serving shim imports;
  * shim/pb2/...       - google.protobuf classes, used only by tests/bench
                         to cross-check the lean codec byte for byte.
"""
import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


class BuildPyWithProto(build_py):
    def run(self):
        super().run()
        from tools import protogen
        protogen.generate(os.path.join(HERE, "proto"), self.build_lib)


def extensions():
    from Cython.Build import cythonize
    # One extension module for all native code: every extra module costs
    # ~0.4 MB of private memory in every shim process.
    ext = Extension(
        "shim._native",
        sources=["_native/native.pyx"],
        extra_compile_args=["-O2", "-Wno-unused-function"],
    )
    return cythonize([ext], language_level=3, compiler_directives={"embedsignature": False})


setup(
    packages=["shim", "shim.pb"],
    ext_modules=extensions(),
    cmdclass={"build_py": BuildPyWithProto},
    # A hand-written launcher (not a console_scripts wrapper): it runs the
    # interpreter with -I -S, which saves ~4 MB of private memory per shim.
    scripts=["tools/containerd-shim-pyshim-v1"],
)
