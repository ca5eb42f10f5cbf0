#!/usr/bin/env bash
# Build the C engine with AddressSanitizer + UndefinedBehaviorSanitizer and -DMC_DEBUG (every
# workspace region checked against its plan) into a scratch folder and run, against that
# build, the kernel tests, the issue-10 regressions and a bounded differential fuzz
# (scripts/fuzz_engines.py, FUZZ_CASES cases, 1-4 threads), twice: with OpenMP (the threaded
# paths) and without (the serial paths every call under the parallel threshold takes, and what
# a compiler without OpenMP builds). Any out-of-bounds access, use of freed memory or undefined
# behaviour (overflow, misaligned access, bad shifts...) aborts the run.
#
#   scripts/run_sanitizers.sh            # from the repository root; a few minutes
#   scripts/run_sanitizers.sh -x -k dense   # extra arguments go to pytest
#   FUZZ_CASES=1000 scripts/run_sanitizers.sh   # a longer fuzz (default 150 cases)
#
# Needs gcc with libasan/libubsan, cffi, numpy, pytest and hypothesis. The installed (fast)
# extension is left alone: the tests import a copy of minicnn/ from the scratch folder whose
# _kernels module is the sanitized build, and the script checks that they really did.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
SCRATCH=$(mktemp -d "${TMPDIR:-/tmp}/minicnn-sanitize.XXXXXX")
trap 'rm -rf "$SCRATCH"' EXIT

cp -r minicnn tests csrc scripts "$SCRATCH"/
FUZZ_CASES=${FUZZ_CASES:-150}
LIBASAN=$(gcc -print-file-name=libasan.so)
LIBUBSAN=$(gcc -print-file-name=libubsan.so)

for OPENMP in 1 0; do
    rm -f "$SCRATCH"/minicnn/_kernels*
    "$PYTHON" - "$SCRATCH" "$OPENMP" <<'PY'
import os, shutil, sys
sys.path.insert(0, "csrc")
import build_kernels
scratch, openmp = sys.argv[1], sys.argv[2] == "1"
flags = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all",
         "-fno-omit-frame-pointer", "-g", "-DMC_DEBUG"]
ffi = build_kernels.make_ffibuilder(extra_compile_args=flags, openmp=None if openmp else False,
                                    absolute_paths=True)
built = ffi.compile(tmpdir=os.path.join(scratch, "build-openmp" if openmp else "build-serial"))
shutil.copy(built, os.path.join(scratch, "minicnn", os.path.basename(built)))
print("sanitized build:", os.path.basename(built), "OpenMP" if openmp else "no OpenMP")
PY
    (
        cd "$SCRATCH"
        # Python itself is not instrumented: preload the runtimes, and ignore CPython's
        # deliberate leaks at exit (leak checking would only report the interpreter).
        export LD_PRELOAD="$LIBASAN $LIBUBSAN"
        export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:strict_string_checks=1:detect_stack_use_after_return=1"
        export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
        export MINICNN_BACKEND=c
        export HYPOTHESIS_STORAGE_DIRECTORY="$SCRATCH/.hypothesis"
        "$PYTHON" -c "
import minicnn.kernels.c_engine as c, minicnn._kernels as k, os
assert k.__file__.startswith(os.getcwd()), 'not the sanitized build: ' + k.__file__
assert c.engine_info()['openmp'] == ($OPENMP == 1), c.engine_info()
print('running on', k.__file__, c.engine_info())
"
        "$PYTHON" -m pytest -q -p no:cacheprovider tests/test_c_engine.py tests/test_kernels.py \
            tests/test_gradients.py tests/test_engine_fuzz_regressions.py tests/test_c_engine_extra.py \
            tests/test_conv_maxpool_backward.py tests/test_predict_fast_path.py tests/test_conv_inference.py \
            tests/test_training_plan.py "$@"
        # the children inherit the preloaded sanitizers; the OpenMP build runs 2+ threads
        "$PYTHON" scripts/fuzz_engines.py --cases "$FUZZ_CASES" --seed "${FUZZ_SEED:-11}" \
            --threads 1,2,3,4 --timeout 1200
    )
done
echo "sanitizers: no reports"
