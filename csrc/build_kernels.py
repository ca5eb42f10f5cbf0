"""cffi builder for ``minicnn._kernels`` (out-of-line API mode), named by setup.py's cffi_modules.

The C sources are plain files in this folder: kernels.c (the one translation unit), its
templates tmpl_microkernel.h (with mk_instance.h) and tmpl_driver.h (which includes one
tmpl_*.h per operator and role), and the public header minicnn_kernels.h whose declarations
between the cdef markers are also the cffi declarations (one source of truth). Every .h here
is a dependency of the build.

Flags: -O3 and -ffp-contract=fast (fuse a*b+c into FMA; unlike -ffast-math it keeps NaN and
infinity semantics and the order of every sum), never -ffast-math and never -march=native: the
SIMD level (AVX-512, AVX2 or the baseline) is chosen at run time by a CPUID check in
kernels.c, so one binary runs on every x86-64. OpenMP is added only when a probe program
compiles and links with -fopenmp; kernels.c builds without it too.

Environment variables, read when the extension is built:
    MINICNN_EXTRA_CFLAGS   extra compile flags, also used to link (e.g. sanitizers)
    MINICNN_OPENMP         "0" to build without OpenMP, "1" to require it (skip the probe)

The sanitizer build (scripts/run_sanitizers.sh) calls make_ffibuilder() with its own flags.
"""
import glob
import os
import shlex
import tempfile

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
HEADER = os.path.join(HERE, "minicnn_kernels.h")
SOURCES = [os.path.join(HERE, "kernels.c")]
# every header: the public one, the microkernel and driver templates and their parts
DEPENDS = sorted(glob.glob(os.path.join(HERE, "*.h")))
BASE_FLAGS = ["-std=c99", "-O3", "-ffp-contract=fast"]

_OPENMP_PROBE = r"""
#include <omp.h>
int main(void)
{
    int threads = 0;
#pragma omp parallel reduction(+ : threads)
    threads += 1;
    return threads > 0 && omp_get_max_threads() > 0 ? 0 : 1;
}
"""


def cdef_from_header(path=HEADER):
    """The declarations between the cdef markers of the public header."""
    with open(path) as f:
        text = f.read()
    begin, end = text.index("/* cdef-begin */"), text.index("/* cdef-end */")
    return text[begin + len("/* cdef-begin */"):end]


def openmp_supported(extra_args=()):
    """True when the C compiler setuptools would use compiles and links an OpenMP program."""
    try:
        try:
            from setuptools._distutils.ccompiler import new_compiler
            from setuptools._distutils.sysconfig import customize_compiler
        except ImportError:  # pragma: no cover - very old setuptools
            from distutils.ccompiler import new_compiler
            from distutils.sysconfig import customize_compiler
        compiler = new_compiler()
        customize_compiler(compiler)
        with tempfile.TemporaryDirectory() as tmp:
            source = os.path.join(tmp, "openmp_probe.c")
            with open(source, "w") as f:
                f.write(_OPENMP_PROBE)
            flags = ["-fopenmp", *extra_args]
            objects = compiler.compile([source], output_dir=tmp, extra_postargs=flags)
            compiler.link_executable(objects, os.path.join(tmp, "openmp_probe"), extra_postargs=flags)
        return True
    except Exception:  # any compiler or linker failure means: build without OpenMP
        return False


def _path(path, absolute):
    """setuptools wants sources relative to setup.py; ffi.compile() (run elsewhere) absolute."""
    if absolute:
        return path
    relative = os.path.relpath(path)
    return path if relative.startswith("..") else relative


def make_ffibuilder(extra_compile_args=(), extra_link_args=(), openmp=None,
                    module_name="minicnn._kernels", absolute_paths=False):
    """An FFI builder for the C engine. openmp=None probes the compiler."""
    extra_compile_args = list(extra_compile_args)
    if openmp is None:
        openmp = openmp_supported(extra_compile_args)
    omp = ["-fopenmp"] if openmp else []
    compile_args = BASE_FLAGS + omp + extra_compile_args
    link_args = omp + extra_compile_args + list(extra_link_args)
    flags_text = " ".join(compile_args).replace("\\", "\\\\").replace('"', '\\"')

    ffi = FFI()
    ffi.cdef(cdef_from_header())
    ffi.set_source(
        module_name,
        '#include "minicnn_kernels.h"\n',
        sources=[_path(s, absolute_paths) for s in SOURCES],
        include_dirs=[_path(HERE, absolute_paths)],
        depends=[_path(d, absolute_paths) for d in DEPENDS],
        define_macros=[("MC_BUILD_FLAGS", f'"{flags_text}"')],
        extra_compile_args=compile_args,
        extra_link_args=link_args,
    )
    return ffi


def _openmp_from_environment():
    """None (probe), True or False; a value that is none of them stops the build naming it."""
    value = os.environ.get("MINICNN_OPENMP", "").strip().lower()
    if value == "":
        return None
    if value in ("1", "true", "yes", "on", "0", "false", "no", "off"):
        return value in ("1", "true", "yes", "on")
    raise ValueError(f"MINICNN_OPENMP={value!r}: expected 1/true/yes/on, 0/false/no/off, or unset to probe")


ffibuilder = make_ffibuilder(
    extra_compile_args=shlex.split(os.environ.get("MINICNN_EXTRA_CFLAGS", "")),
    openmp=_openmp_from_environment(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
