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
def c_backend():
    """The C engine for one test, the previous engine after it (modules about the C engine's
    plans use it for every test and skip themselves when it is not built)."""
    previous = kernels.get_backend()
    minicnn.set_backend("c")
    try:
        yield
    finally:
        minicnn.set_backend(previous)


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(scope="module")
def server(model):
    """The demo page's server for the requesting module's `model`, on 127.0.0.1 and a free
    port, in a thread; shut down after the module (tests/test_serve.py, test_browser.py)."""
    import threading

    from minicnn.serve import make_server

    running = make_server(model, "127.0.0.1", 0, quiet=True)
    thread = threading.Thread(target=running.serve_forever, daemon=True)
    thread.start()
    yield running
    running.shutdown()
    running.server_close()
    thread.join(5)
