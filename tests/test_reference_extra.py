"""Issue 12's layers against PyTorch fixtures (tests/reference/*.npz, made by
tests/reference/make_fixtures.py; test_reference.py::test_fixtures_match_live_torch recomputes
them wherever torch is importable). Same tolerance as test_reference.py: element-wise
|actual - expected| <= 1e-10 + 1e-10 |expected| in float64.

What each fixture pins:
    avgpool2d            TF-"same" windows averaging only their cells inside the image
                         (torch: window sums / counts of inside cells, see the maker)
    global_avgpool2d     torch's adaptive_avg_pool2d(1)
    batchnorm_training   y, dx, dgamma, dbeta and the moving statistics after one step by
                         Keras' rule, converted from torch's momentum (1 - Keras') and its
                         unbiased running variance
    batchnorm_inference  y from the moving statistics
    dropout              torch's kept cells are x / (1 - rate): minicnn's scale is the same
"""
import numpy as np
import pytest

from minicnn import AveragePooling2D, BatchNormalization, Dropout, GlobalAveragePooling2D
from reference import fixtures
from test_reference import DTYPE, assert_close, assert_shape, cases, run_and_compare


@pytest.mark.parametrize("kind, case", cases("avgpool2d"))
def test_average_pooling_matches_torch(backend, kind, case):
    p = case["params"]
    layer = AveragePooling2D(pool_size=tuple(p["pool_size"]), strides=tuple(p["strides"]),
                             padding=p["padding"], dtype=DTYPE)
    run_and_compare(layer, case)


@pytest.mark.parametrize("kind, case", cases("global_avgpool2d"))
def test_global_average_pooling_matches_torch(backend, kind, case):
    run_and_compare(GlobalAveragePooling2D(dtype=DTYPE), case)


def _batchnorm(case):
    p, a = case["params"], case["arrays"]
    layer = BatchNormalization(axis=p["axis"], momentum=p["momentum"], epsilon=p["epsilon"], dtype=DTYPE)
    layer.build(a["x"].shape[1:])
    layer.set_weights([a["gamma"], a["beta"], a["moving_mean"], a["moving_variance"]])
    return layer


@pytest.mark.parametrize("kind, case", cases("batchnorm_training"))
def test_batch_normalization_training_matches_torch(backend, kind, case):
    a = case["arrays"]
    layer = _batchnorm(case)
    x, dy = a["x"].copy(), a["dy"].copy()
    y = layer.forward(x, training=True)
    dx = layer.backward(dy)
    for actual, name in ((y, "y"), (dx, "dx"), (layer.grads["gamma"], "dgamma"), (layer.grads["beta"], "dbeta"),
                         (layer.params["moving_mean"], "new_moving_mean"),
                         (layer.params["moving_variance"], "new_moving_variance")):
        assert_shape(actual, a[name], name)
        assert_close(actual, a[name], name)
    assert np.array_equal(dy, a["dy"]) and np.array_equal(x, a["x"])


@pytest.mark.parametrize("kind, case", cases("batchnorm_inference"))
def test_batch_normalization_inference_matches_torch(backend, kind, case):
    a = case["arrays"]
    layer = _batchnorm(case)
    y = layer.forward(a["x"].copy(), training=False)
    assert_shape(y, a["y"], "y")
    assert_close(y, a["y"], "y")
    np.testing.assert_array_equal(layer.params["moving_variance"], a["moving_variance"])


@pytest.mark.parametrize("kind, case", cases("dropout"))
def test_dropout_scales_kept_cells_as_torch_does(kind, case):
    a, rate = case["arrays"], case["params"]["rate"]
    torch_kept = a["y"] != 0
    torch_scale = np.unique(a["y"][torch_kept] / a["x"][torch_kept])
    y = Dropout(rate, seed=0, dtype=DTYPE).forward(a["x"], training=True)
    kept = y != 0
    # Same multiplier on every kept cell, to the last bit of float64 rounding of x * scale.
    np.testing.assert_allclose(y[kept] / a["x"][kept], torch_scale.mean(), rtol=1e-15, atol=0)
    assert np.ptp(torch_scale) <= 4e-16 * torch_scale.mean()
    # Both keep about 1 - rate of the 2000 cells (5 standard deviations).
    spread = 5 * np.sqrt(rate * (1 - rate) / a["x"].size)
    assert abs(kept.mean() - (1 - rate)) < spread and abs(torch_kept.mean() - (1 - rate)) < spread


def test_new_fixtures_cover_their_cases():
    pool = [c["params"] for c in fixtures.load_cases("avgpool2d")]
    assert {p["padding"] for p in pool} == {"valid", "same"}
    assert any(p["pool_size"][0] != p["pool_size"][1] for p in pool)
    assert {1} < {p["batch"] for p in pool}
    assert {3} <= {p["strides"][0] for p in pool} and any(p["strides"][0] != p["strides"][1] for p in pool)
    bn = [c["params"] for c in fixtures.load_cases("batchnorm_training")]
    assert {len(p["input_shape"]) for p in bn} == {1, 3}     # (N, units) and (N, H, W, C)
    assert {p["axis"] for p in bn} >= {-1, 1, 3}
    assert len({p["momentum"] for p in bn}) > 1
