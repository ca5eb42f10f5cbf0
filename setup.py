"""Build script: everything static lives in pyproject.toml; this file only adds the C engine.

The cffi builder in csrc/ is compiled into ``minicnn._kernels``. A compile failure must not
break the install: minicnn then runs on its pure-NumPy engine (see minicnn/kernels/), and
says so with a RuntimeWarning when it is imported.
"""
import warnings

from setuptools import setup
from setuptools.command.build_ext import build_ext


class OptionalBuildExt(build_ext):
    """build_ext that turns a failed C build into a warning and a NumPy-only package."""

    def run(self):
        try:
            super().run()
        except Exception as error:  # compiler missing or failing, linker errors, bad flags
            self._give_up(error)

    def _give_up(self, error):
        message = (
            f"minicnn: the C engine (minicnn._kernels) could not be built ({error}); "
            "installing the pure-NumPy engine only. Install a C compiler and Python's headers "
            "(Debian/Ubuntu: apt-get install build-essential python3-dev) and reinstall to get "
            "the fast engine."
        )
        warnings.warn(message)
        print("WARNING: " + message)
        # Forget the extension so that install / editable steps do not look for its file.
        self.extensions = []
        self.distribution.ext_modules = []


setup(
    cmdclass={"build_ext": OptionalBuildExt},
    cffi_modules=["csrc/build_kernels.py:ffibuilder"],
)
