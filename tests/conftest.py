"""Shared test fixtures: run engine-dependent tests once per engine.

The 'c' parameter is skipped with a visible reason only when the extension is not built; CI
additionally runs the whole suite with MINICNN_BACKEND=c, where a missing build fails the
import of minicnn itself instead of skipping.
"""
import numpy as np
import pytest

import minicnn
from minicnn import kernels


@pytest.fixture(params=["numpy", "c"])
def backend(request):
    """Select an engine for the duration of one test; yields its name."""
    name = request.param
    if name not in kernels.available_backends():
        pytest.skip(f"C engine not built here: {kernels.backend_info().get('c_engine_error')}")
    previous = kernels.get_backend()
    minicnn.set_backend(name)
    try:
        yield name
    finally:
        minicnn.set_backend(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
