"""minicnn's layers against PyTorch: an independent reference (see DESIGN.md, "Numerics").

The numbers come from tests/reference/*.npz, computed by PyTorch in float64 for seeded inputs
by tests/reference/make_fixtures.py and committed, so these tests need no torch. Each test
builds the minicnn layer in float64 with the case's hyperparameters and weights, runs forward
and backward with the stored upstream gradient dy, and checks, in this order:

    shapes     build()'s output shape, y, dx and every gradient
    values     y
    gradients  dx, then grads["kernel"], grads["bias"]

Tolerance: |actual - expected| <= 1e-10 + 1e-10 * |expected| element-wise. Float64 summation
in another order differs by ~1e-15, so anything above 1e-10 is a real error, not round-off.

Regenerate the fixtures with ``.venv-torch/bin/python tests/reference/make_fixtures.py``;
``test_fixtures_match_live_torch`` (runs where torch is importable) recomputes every case and
fails on stale files.
"""
import numpy as np
import pytest

from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, ReLU, Softmax
from reference import fixtures

RTOL = ATOL = 1e-10
LIVE_TOLERANCE = 1e-12
DTYPE = "float64"


def cases(*kinds):
    return [pytest.param(kind, case, id="%s-%s" % (kind, case["name"]))
            for kind in kinds for case in fixtures.load_cases(kind)]


def assert_shape(actual, expected, what):
    assert isinstance(actual, np.ndarray), "%s: expected an ndarray, got %r" % (what, type(actual))
    assert actual.shape == expected.shape, "%s: shape %s, torch's %s" % (
        what, actual.shape, expected.shape)
    assert actual.dtype == np.float64, "%s: dtype %s, expected float64" % (what, actual.dtype)


def assert_close(actual, expected, what):
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=ATOL, err_msg=what)


def run_and_compare(layer, case, weight_names=()):
    """Build, load weights, forward, backward with the case's dy; compare with the fixture.

    ``weight_names`` are the layer's parameters present in the case ("kernel", "bias"); the
    fixture holds them as arrays of the same names and their gradients as "d" + name.
    """
    a = case["arrays"]
    out_shape = layer.build(a["x"].shape[1:])
    assert tuple(out_shape) == a["y"].shape[1:], \
        "build() returned %s, torch's output is %s per sample" % (tuple(out_shape), a["y"].shape[1:])
    if weight_names:
        assert sorted(layer.params) == sorted(weight_names)
        layer.set_weights([a[name] for name in weight_names])

    x, dy = a["x"].copy(), a["dy"].copy()
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)

    assert_shape(y, a["y"], "y")
    assert_shape(dx, a["dx"], "dx")
    for name in weight_names:
        assert_shape(layer.grads[name], a["d" + name], "grads[%r]" % name)
    assert np.array_equal(dy, a["dy"]), "backward modified its upstream gradient dy"
    assert np.array_equal(x, a["x"]), "forward or backward modified its input x"

    assert_close(y, a["y"], "y")
    assert_close(dx, a["dx"], "dx")
    for name in weight_names:
        assert_close(layer.grads[name], a["d" + name], "grads[%r]" % name)


@pytest.mark.parametrize("kind, case", cases("conv2d"))
def test_conv2d_matches_torch(backend, kind, case):
    p = case["params"]
    layer = Conv2D(p["filters"], kernel_size=tuple(p["kernel_size"]), strides=tuple(p["strides"]),
                   padding=p["padding"], use_bias=p["use_bias"], dtype=DTYPE)
    run_and_compare(layer, case, ("kernel", "bias") if p["use_bias"] else ("kernel",))


@pytest.mark.parametrize("kind, case", cases("maxpool2d", "maxpool2d_ties"))
def test_maxpool2d_matches_torch(backend, kind, case):
    """Tie-free inputs, plus the "_ties" file where the first maximum in row-major window order
    must take the gradient (PyTorch's rule, documented in MaxPooling2D)."""
    p = case["params"]
    layer = MaxPooling2D(pool_size=tuple(p["pool_size"]), strides=tuple(p["strides"]),
                         padding=p["padding"], dtype=DTYPE)
    run_and_compare(layer, case)


@pytest.mark.parametrize("kind, case", cases("dense"))
def test_dense_matches_torch(backend, kind, case):
    p = case["params"]
    layer = Dense(p["units"], use_bias=p["use_bias"], dtype=DTYPE)
    run_and_compare(layer, case, ("kernel", "bias") if p["use_bias"] else ("kernel",))


@pytest.mark.parametrize("kind, case", cases("softmax"))
def test_softmax_matches_torch(kind, case):
    """Output and the Jacobian-vector product dx = J^T dy, with logits near +-1000 too."""
    run_and_compare(Softmax(dtype=DTYPE), case)


@pytest.mark.parametrize("kind, case", cases("softmax_crossentropy"))
def test_softmax_layer_backward_of_crossentropy_matches_torch(kind, case):
    """The unfused path: Softmax layer, then the gradient of mean -log p[label] w.r.t. the
    probabilities, -1 / (N p[label]), sent back through Softmax.backward, gives torch's dlogits."""
    a = case["arrays"]
    logits, labels = a["logits"], a["labels"]
    n = logits.shape[0]
    layer = Softmax(dtype=DTYPE)
    layer.build(logits.shape[1:])
    probs = layer.forward(logits.copy(), training=True)
    assert_shape(probs, a["probs"], "probs")
    assert_close(probs, a["probs"], "probs")
    dprobs = np.zeros_like(probs)
    dprobs[np.arange(n), labels] = -1.0 / (n * probs[np.arange(n), labels])
    dlogits = layer.backward(dprobs)
    assert_shape(dlogits, a["dlogits"], "dlogits")
    assert_close(dlogits, a["dlogits"], "dlogits")


def test_softmax_crossentropy_loss_matches_torch():
    """minicnn's SparseCategoricalCrossentropy(from_logits=True) against torch's cross_entropy:
    the loss (mean over the batch) and its fused gradient w.r.t. the logits, every case.

    Left for the owner of minicnn/training/losses.py to wire to its API: ``loss_and_gradient``
    below is the one place that assumes how the loss is called. It fails (never skips) while
    the module is missing.
    """
    from minicnn.training.losses import SparseCategoricalCrossentropy

    def loss_and_gradient(labels, logits):
        loss = SparseCategoricalCrossentropy(from_logits=True)
        value = loss(labels, logits)
        return np.asarray(value), loss.gradient(labels, logits)

    for case in fixtures.load_cases("softmax_crossentropy"):
        a = case["arrays"]
        value, dlogits = loss_and_gradient(a["labels"].copy(), a["logits"].copy())
        what = case["name"]
        assert np.shape(value) == (), "%s: the loss must be a scalar, got shape %s" % (
            what, np.shape(value))
        assert_shape(dlogits, a["dlogits"], what + ": dlogits")
        assert_close(value, a["loss"], what + ": loss")
        assert_close(dlogits, a["dlogits"], what + ": dlogits")


def _model_layers(p, fused_activation):
    """The miniature seed model of the "model" fixture, with ReLU fused or as its own layers."""
    relu = "relu" if fused_activation else None

    def act():
        return [] if fused_activation else [ReLU(dtype=DTYPE)]

    return (
        [Conv2D(p["conv1_filters"], (3, 3), padding="same", activation=relu, dtype=DTYPE)] + act()
        + [MaxPooling2D((2, 2), strides=2, dtype=DTYPE)]
        + [Conv2D(p["conv2_filters"], (3, 3), padding="same", activation=relu, dtype=DTYPE)]
        + act()
        + [MaxPooling2D((2, 2), strides=2, dtype=DTYPE), Flatten(dtype=DTYPE)]
        + [Dense(p["dense1_units"], activation=relu, dtype=DTYPE)] + act()
        + [Dense(p["classes"], dtype=DTYPE)]
    )


@pytest.mark.parametrize("fused_activation", [True, False], ids=["activation_arg", "relu_layers"])
@pytest.mark.parametrize("kind, case", cases("model"))
def test_small_model_matches_torch(backend, kind, case, fused_activation):
    """conv-relu-pool x2, flatten, dense-relu, dense: logits, then every gradient from torch's
    d(cross-entropy)/d(logits). Non-square images with C > 1 at Flatten pin its (H, W, C) order."""
    a = case["arrays"]
    layers = _model_layers(case["params"], fused_activation)
    shape = a["x"].shape[1:]
    for layer in layers:
        shape = layer.build(shape)
    assert tuple(shape) == a["logits"].shape[1:]
    with_weights = [layer for layer in layers if layer.params]
    for layer, prefix in zip(with_weights, ["conv1", "conv2", "dense1", "dense2"]):
        layer.set_weights([a[prefix + ".kernel"], a[prefix + ".bias"]])

    h = a["x"].copy()
    for layer in layers:
        h = layer.forward(h, training=True)
    logits = h
    g = a["dlogits"].copy()
    for layer in reversed(layers):
        g = layer.backward(g)

    assert_shape(logits, a["logits"], "logits")
    assert_shape(g, a["dx"], "dx")
    for layer, prefix in zip(with_weights, ["conv1", "conv2", "dense1", "dense2"]):
        for name in ("kernel", "bias"):
            assert_shape(layer.grads[name], a["%s.d%s" % (prefix, name)], prefix + " d" + name)
    assert_close(logits, a["logits"], "logits")
    assert_close(g, a["dx"], "dx")
    for layer, prefix in zip(with_weights, ["conv1", "conv2", "dense1", "dense2"]):
        for name in ("kernel", "bias"):
            assert_close(layer.grads[name], a["%s.d%s" % (prefix, name)], prefix + " d" + name)


def test_fixtures_cover_the_awkward_geometries():
    """Square-only, stride-1-only or batch>1-only fixtures hide index bugs: keep the grid wide."""
    conv = [c["params"] for c in fixtures.load_cases("conv2d")]
    pool = [c["params"] for c in fixtures.load_cases("maxpool2d")]
    for name, grid, window in (("conv2d", conv, "kernel_size"), ("maxpool2d", pool, "pool_size")):
        kernels = {tuple(p[window]) for p in grid}
        strides = {tuple(p["strides"]) for p in grid}
        assert any(kh != kw for kh, kw in kernels), name + ": no non-square window"
        assert {(1, 1), (2, 2)} <= strides and any(sh != sw for sh, sw in strides), name
        assert {p["padding"] for p in grid} == {"valid", "same"}, name
        assert {1} < {p["batch"] for p in grid}, name + ": needs batch 1 and batch > 1"
        assert any(h % 2 and h != w for h, w, _ in (p["input_shape"] for p in grid)), name
    assert (1, 1) in {tuple(p["kernel_size"]) for p in conv}
    assert any(tuple(p["kernel_size"]) == tuple(p["input_shape"][:2]) and p["padding"] == "valid"
               for p in conv), "no kernel as large as its input"
    assert {1, 3, 4} <= {p["input_shape"][2] for p in conv} and {1, 5} <= {p["filters"] for p in conv}
    assert not all(p["use_bias"] for p in conv)
    total = sum((fixtures.FIXTURE_DIR / name).stat().st_size for name in fixtures.FILES.values())
    assert total < 1_000_000, "fixtures total %d bytes; keep them small" % total


@pytest.mark.parametrize("kind", list(fixtures.FILES))
def test_fixtures_match_live_torch(kind):
    """Where torch is importable: recompute every committed case from its stored inputs, and
    check the committed case list is still the maker's grid. Fails on stale fixtures."""
    pytest.importorskip("torch")
    from reference import make_fixtures

    committed = fixtures.load_cases(kind)
    assert [c["params"] for c in committed] == make_fixtures.GRID[kind](), (
        "%s: the committed cases differ from make_fixtures.py's grid; regenerate" % kind)
    for case in committed:
        live = fixtures.recompute(kind, case)
        names = fixtures.array_names(kind, case["params"], "outputs")
        assert sorted(live) == sorted(names), case["name"]
        for name in names:
            np.testing.assert_allclose(case["arrays"][name], live[name], rtol=LIVE_TOLERANCE,
                                       atol=LIVE_TOLERANCE, err_msg="%s/%s: %s is stale"
                                       % (kind, case["name"], name))
