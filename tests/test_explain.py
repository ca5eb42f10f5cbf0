"""minicnn.explain: saliency and Grad-CAM against finite differences and hand-built models."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential, Softmax, explain, kernels

from gradcheck import numeric_gradient, relative_error

ROOT = Path(__file__).resolve().parent.parent


def seed_shaped_model(dtype="float32"):
    return Sequential([
        Conv2D(32, 3, padding="same", activation="relu", input_shape=(28, 28, 1), dtype=dtype),
        MaxPooling2D(),
        Conv2D(64, 3, padding="same", activation="relu"),
        MaxPooling2D(),
        Flatten(),
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ])


def tiny_model(final="softmax_layer", first_activation="relu"):
    """float64, two channels in, non-square kernel, a pooling layer: the gradient has to route."""
    minicnn.set_seed(7)
    layers = [
        Conv2D(3, (3, 2), padding="same", activation=first_activation, input_shape=(6, 5, 2), dtype="float64",
               bias_initializer="glorot_uniform"),
        MaxPooling2D(),
        Conv2D(4, 2, padding="same", activation="relu", bias_initializer="glorot_uniform"),
        Flatten(),
        Dense(6, activation="relu"),
    ]
    if final == "softmax_layer":
        layers += [Dense(4), Softmax()]
    elif final == "softmax_activation":
        layers += [Dense(4, activation="softmax")]
    else:
        layers += [Dense(4)]
    return Sequential(layers)


def logits(model, x):
    """The class scores explain() explains: everything below a final Softmax layer."""
    for layer in model.layers[:-1]:
        x = layer.forward(x, training=False)
    return x


def bilinear_reference(image, out_h, out_w):
    """Half-pixel-centre bilinear resize of one (h, w) map, one output pixel at a time."""
    h, w = image.shape
    result = np.zeros((out_h, out_w))
    for i in range(out_h):
        for j in range(out_w):
            r = min(max((i + 0.5) * h / out_h - 0.5, 0), h - 1)
            c = min(max((j + 0.5) * w / out_w - 0.5, 0), w - 1)
            r0, c0 = int(np.floor(r)), int(np.floor(c))
            r1, c1 = min(r0 + 1, h - 1), min(c0 + 1, w - 1)
            fr, fc = r - r0, c - c0
            result[i, j] = ((1 - fr) * (1 - fc) * image[r0, c0] + (1 - fr) * fc * image[r0, c1]
                            + fr * (1 - fc) * image[r1, c0] + fr * fc * image[r1, c1])
    return result


# ---- saliency ----

def test_saliency_equals_the_finite_difference_gradient_of_the_logit(backend):
    model = tiny_model()
    x = np.random.default_rng(3).random((3, 6, 5, 2))
    classes = np.array([1, 3, 0])
    maps = explain.saliency(model, x, class_index=classes)
    assert maps.shape == (3, 6, 5) and maps.dtype == np.float64
    for i in range(3):
        image = x[i:i + 1].copy()
        gradient = numeric_gradient(lambda: logits(model, image)[0, classes[i]], image)
        expected = np.abs(gradient[0]).max(axis=-1)
        expected /= expected.max()
        assert relative_error(maps[i], expected) <= 1e-6


def test_saliency_defaults_to_the_predicted_class_and_takes_one_int_for_all(backend):
    model = tiny_model()
    x = np.random.default_rng(4).random((4, 6, 5, 2))
    predicted = model.predict(x, verbose=0).argmax(axis=1)
    np.testing.assert_array_equal(explain.saliency(model, x), explain.saliency(model, x, predicted))
    np.testing.assert_array_equal(explain.saliency(model, x, 2), explain.saliency(model, x, [2] * 4))
    assert not np.array_equal(explain.saliency(model, x, 2), explain.saliency(model, x, 3))


@pytest.mark.parametrize("final", ["softmax_activation", "no_softmax"])
def test_the_score_is_the_logit_whatever_holds_the_softmax(final):
    """Dense(activation='softmax') and a plain linear output explain the same logits as Dense + Softmax()."""
    reference = tiny_model("softmax_layer")
    other = tiny_model(final)
    other.set_weights(reference.get_weights())
    x = np.random.default_rng(5).random((2, 6, 5, 2))
    for method in (explain.saliency, explain.grad_cam):
        np.testing.assert_allclose(method(other, x, class_index=[0, 2]),
                                   method(reference, x, class_index=[0, 2]), rtol=1e-12, atol=1e-12)


def test_saliency_mass_lies_where_the_answer_comes_from(backend):
    """A fixed 3x3 kernel and a Dense that only reads rows 2..5, columns 6..9 of its output:
    the input pixels that can change the score are that region grown by the kernel's radius."""
    model = Sequential([
        Conv2D(1, 3, padding="same", use_bias=False, input_shape=(12, 12, 1)),
        Flatten(),
        Dense(2),
        Softmax(),
    ])
    kernel = np.array([[0.1, 0.2, 0.1], [0.2, 1.0, 0.2], [0.1, 0.2, 0.1]], dtype=np.float32)
    region = np.zeros((12, 12), dtype=bool)
    region[2:6, 6:10] = True
    dense = np.random.default_rng(6).normal(size=(144, 2)).astype(np.float32)
    dense[~region.reshape(-1)] = 0
    model.set_weights([kernel[:, :, None, None], dense, np.zeros(2, np.float32)])
    x = np.random.default_rng(8).random((5, 12, 12, 1)).astype(np.float32)
    maps = explain.saliency(model, x)
    grown = np.zeros_like(region)
    grown[1:7, 5:11] = True
    inside = maps[:, grown].sum(axis=1) / maps.sum(axis=(1, 2))
    assert np.all(inside >= 0.99), inside
    assert np.all(maps[:, region].max(axis=1) == 1.0)    # the peak is in the region itself


# ---- Grad-CAM ----

@pytest.mark.parametrize("layer", [None, "first", 0, -7, "object"])
def test_grad_cam_matches_its_definition_with_finite_difference_gradients(backend, layer):
    # A linear first layer: ReLU zeros tie in the max pooling above, where a central
    # difference splits the gradient that backward gives to the first maximum.
    model = tiny_model(first_activation=None)
    x = np.random.default_rng(9).random((2, 6, 5, 2))
    target = 2 if layer is None else 0          # default: the last Conv2D
    chosen = {"first": model.layers[0].name, "object": model.layers[0]}.get(layer, layer)
    # Per image, the first class with positive evidence at that layer (others give zero maps).
    classes = np.array([
        next(c for c in range(4) if explain.grad_cam(model, x[i:i + 1], c, layer=chosen).max() > 0)
        for i in range(2)
    ])
    maps = explain.grad_cam(model, x, class_index=classes, layer=chosen)
    assert maps.shape == (2, 6, 5)
    for i in range(2):
        features = x[i:i + 1]
        for below in model.layers[:target + 1]:
            features = below.forward(features, training=False)
        features = features.copy()

        def score():
            out = features
            for above in model.layers[target + 1:-1]:
                out = above.forward(out, training=False)
            return out[0, classes[i]]

        gradient = numeric_gradient(score, features)[0]                     # (h, w, K)
        weights = gradient.mean(axis=(0, 1))
        cam = np.maximum((features[0] * weights).sum(axis=-1), 0)
        expected = bilinear_reference(cam, 6, 5)
        assert expected.max() > 0
        expected /= expected.max()
        assert relative_error(maps[i], expected) <= 1e-6


def test_upsample_bilinear_matches_the_reference_loop():
    maps = np.random.default_rng(10).random((2, 3, 4))
    for size in [(6, 8), (7, 5), (28, 28), (3, 4)]:
        ours = explain.upsample_bilinear(maps, size)
        for i in range(2):
            np.testing.assert_allclose(ours[i], bilinear_reference(maps[i], *size), rtol=0, atol=1e-12)


def test_maps_are_zero_not_nan_when_the_score_ignores_the_image(backend):
    model = Sequential([Conv2D(2, 3, activation="relu", input_shape=(5, 5, 1)), Flatten(), Dense(3), Softmax()])
    weights = model.get_weights()
    model.set_weights(weights[:2] + [np.zeros_like(weights[2]), np.ones_like(weights[3])])
    x = np.random.default_rng(11).random((2, 5, 5, 1)).astype(np.float32)
    found = explain.explain(model, x)
    for maps in (found.saliency, found.grad_cam):
        assert maps.shape == (2, 5, 5)
        assert not np.isnan(maps).any() and np.all(maps == 0)


@pytest.mark.parametrize("batch", [1, 5])
def test_seed_shaped_model_grad_cam_shape_range_and_finiteness(backend, batch):
    minicnn.set_seed(0)
    model = seed_shaped_model()
    x = np.random.default_rng(batch).random((batch, 28, 28, 1)).astype(np.float32)
    maps = explain.grad_cam(model, x)
    assert maps.shape == (batch, 28, 28) and maps.dtype == np.float32
    assert not np.isnan(maps).any() and maps.min() >= 0 and maps.max() <= 1
    assert np.all(maps.max(axis=(1, 2)) == 1)


@pytest.mark.parametrize("batch", [1, 5])
def test_seed_shaped_model_saliency_shape_range_and_finiteness(backend, batch):
    minicnn.set_seed(0)
    model = seed_shaped_model()
    x = np.random.default_rng(batch).random((batch, 28, 28, 1)).astype(np.float32)
    maps = explain.saliency(model, x)
    assert maps.shape == (batch, 28, 28) and maps.dtype == np.float32
    assert not np.isnan(maps).any() and maps.min() >= 0 and maps.max() <= 1
    assert np.all(maps.max(axis=(1, 2)) == 1)


_SEED_SALIENCY_C_VERSUS_NUMPY = """
import sys
import numpy as np, minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential, explain
minicnn.set_seed(0)
model = Sequential([Conv2D(32, 3, padding="same", activation="relu", input_shape=(28, 28, 1)),
                    MaxPooling2D(), Conv2D(64, 3, padding="same", activation="relu"),
                    MaxPooling2D(), Flatten(), Dense(128, activation="relu"),
                    Dense(10, activation="softmax")])
x = np.random.default_rng(0).random((5, 28, 28, 1)).astype(np.float32)
maps = {}
for engine in ("numpy", "c"):
    minicnn.set_backend(engine)
    maps[engine] = np.concatenate([explain.saliency(model, x[:1]), explain.saliency(model, x)])
print(float(np.abs(maps["c"] - maps["numpy"]).max()))
"""


@pytest.mark.skipif("c" not in kernels.available_backends(), reason="C engine not built here")
def test_seed_model_saliency_with_fewer_images_than_threads_on_the_c_engine():
    """Regression: the C engine's conv2d_backward once segfaulted computing the first layer's
    input gradient (which training never asks for) when the batch had fewer images than
    threads. In a child process with two threads, so a crash fails this test only."""
    environment = {**os.environ, "OMP_NUM_THREADS": "2"}
    result = subprocess.run([sys.executable, "-c", textwrap.dedent(_SEED_SALIENCY_C_VERSUS_NUMPY)],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 0, result.stderr[-2000:]
    # Maps in [0, 1] from float32 engines that sum in different orders: 1e-4 apart at most.
    assert float(result.stdout) <= 1e-4, result.stdout


# ---- the model is left as it was ----

def test_explaining_changes_neither_weights_nor_answers_nor_the_next_training_step(backend):
    def fresh():
        minicnn.set_seed(21)
        model = Sequential([Conv2D(4, 3, padding="same", activation="relu", input_shape=(8, 8, 1)),
                            MaxPooling2D(), Flatten(), Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
        return model

    explained, untouched = fresh(), fresh()
    x = np.random.default_rng(12).random((6, 8, 8, 1)).astype(np.float32)
    y = np.array([0, 1, 2, 0, 1, 2])
    explained.train_on_batch(x, y)
    untouched.train_on_batch(x, y)     # both have optimizer state and stored gradients now
    answers = explained.predict(x, verbose=0)
    weights = explained.get_weights()

    explain.explain(explained, x[:3], class_index=1)

    for before, after in zip(weights, explained.get_weights()):
        np.testing.assert_array_equal(before, after)
    np.testing.assert_array_equal(explained.predict(x, verbose=0), answers)
    explained.train_on_batch(x, y)
    untouched.train_on_batch(x, y)
    for a, b in zip(explained.get_weights(), untouched.get_weights()):
        np.testing.assert_array_equal(a, b)


# ---- clear errors ----

@pytest.mark.parametrize("images, error, words", [
    (np.zeros((6, 5, 2)), ValueError, "images[None]"),
    (np.zeros((2, 6, 5)), ValueError, "(N, 6, 5, 2)"),
    (np.zeros((2, 5, 6, 2)), ValueError, "received (2, 5, 6, 2)"),
    (np.zeros((0, 6, 5, 2)), ValueError, "empty"),
    (np.zeros((1, 6, 5, 2), dtype=np.uint8), TypeError, "uint8 / 255"),
    (np.zeros((1, 6, 5, 2), dtype=bool), TypeError, "bool"),
    (np.full((1, 6, 5, 2), np.nan), ValueError, "NaN"),
    (np.array([["a"]]), TypeError, "dtype <U1"),
])
def test_bad_images_are_refused_clearly(images, error, words):
    with pytest.raises(error, match=None) as raised:
        explain.saliency(tiny_model(), images)
    assert words in str(raised.value)


def test_one_channel_images_without_their_channel_axis_get_a_hint():
    model = Sequential([Conv2D(2, 3, input_shape=(5, 5, 1)), Flatten(), Dense(3)])
    with pytest.raises(ValueError, match=r"images\[\.\.\., None\]"):
        explain.grad_cam(model, np.zeros((2, 5, 5)))


@pytest.mark.parametrize("class_index, error, words", [
    (4, ValueError, "0..3"),
    (-1, ValueError, "0..3"),
    ([0, 1, 2], ValueError, "one per image (2)"),
    (True, TypeError, "received True"),
    (1.0, TypeError, "received 1.0"),
    ("1", TypeError, "received '1'"),
])
def test_bad_class_index_is_refused_clearly(class_index, error, words):
    with pytest.raises(error) as raised:
        explain.saliency(tiny_model(), np.zeros((2, 6, 5, 2)), class_index=class_index)
    assert words in str(raised.value)


@pytest.mark.parametrize("layer, error, words", [
    ("nope", ValueError, "no layer named 'nope'"),
    (7, ValueError, "out of range"),
    (3, ValueError, "needs feature maps"),                  # Flatten
    (Conv2D(2, 3), ValueError, "not one of this model's layers"),
    (2.0, TypeError, "received float"),
])
def test_bad_grad_cam_layer_is_refused_clearly(layer, error, words):
    with pytest.raises(error) as raised:
        explain.grad_cam(tiny_model(), np.zeros((1, 6, 5, 2)), layer=layer)
    assert words in str(raised.value)


def test_grad_cam_without_a_convolution_asks_for_a_layer():
    model = Sequential([Flatten(input_shape=(4, 4, 1)), Dense(3), Softmax()])
    with pytest.raises(ValueError, match="no Conv2D layer"):
        explain.grad_cam(model, np.zeros((1, 4, 4, 1), np.float32))
    np.testing.assert_array_equal(explain.saliency(model, np.ones((1, 4, 4, 1), np.float32)).shape, (1, 4, 4))


# ---- python -m minicnn explain ----

def small_fashion_model(path):
    """A 28x28x1 -> 10 classifier, small enough to explain in milliseconds, saved to `path`."""
    minicnn.set_seed(3)
    model = Sequential([Conv2D(4, 3, padding="same", activation="relu", input_shape=(28, 28, 1)),
                        MaxPooling2D(), Conv2D(8, 3, padding="same", activation="relu"),
                        MaxPooling2D(), Flatten(), Dense(10, activation="softmax")])
    model.save(path)
    return path


def explain_command(*argv):
    import argparse
    import io

    from minicnn import explain_cli

    parser = argparse.ArgumentParser()
    explain_cli.add_arguments(parser)
    out, err = io.StringIO(), io.StringIO()
    status = explain_cli.run(parser.parse_args(list(argv)), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def write_shirt(path):
    from PIL import Image

    pixels = np.full((40, 30), 255, np.uint8)
    pixels[5:35, 8:22] = 40
    Image.fromarray(pixels).save(path)
    return path


@pytest.mark.parametrize("method, panels", [("grad-cam", 2), ("saliency", 2), ("both", 3)])
def test_explain_command_draws_one_picture_per_image(tmp_path, method, panels):
    pytest.importorskip("matplotlib")
    PIL = pytest.importorskip("PIL.Image")
    model = small_fashion_model(tmp_path / "m.npz")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    images = [write_shirt(tmp_path / "a" / "shirt.png"), write_shirt(tmp_path / "b" / "shirt.png")]
    status, out, err = explain_command("--model", str(model), "--out", str(tmp_path / "out"),
                                       "--method", method, *map(str, images))
    assert status == 0, err
    written = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert written == ["shirt_explain-2.png", "shirt_explain.png"]       # no temporary left
    for name in written:
        with PIL.open(tmp_path / "out" / name) as picture:
            width, height = picture.size
        assert height == 260 and width == round(210 * panels)
    assert out.count("%") == 2 * 3                                       # top three per image


def test_explain_command_reports_bad_files_and_still_draws_the_others(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    model = small_fashion_model(tmp_path / "m.npz")
    good = write_shirt(tmp_path / "good.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    status, out, err = explain_command("--model", str(model), "--out", str(tmp_path / "out"),
                                       str(tmp_path / "bad.png"), str(good), str(tmp_path / "missing.png"))
    assert status == 1
    assert "bad.png: error:" in err and "missing.png: error:" in err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["good_explain.png"]
    assert "good.png" in out


def test_explain_command_refuses_a_model_it_cannot_use(tmp_path):
    pytest.importorskip("matplotlib")
    status, _, err = explain_command("--model", str(tmp_path / "none.npz"), "--out", str(tmp_path),
                                     str(tmp_path / "x.png"))
    assert status == 2 and "cannot load the model" in err
    Sequential([Flatten(input_shape=(4, 4, 1)), Dense(3)]).save(tmp_path / "other.npz")
    status, _, err = explain_command("--model", str(tmp_path / "other.npz"), "--out", str(tmp_path),
                                     str(tmp_path / "x.png"))
    assert status == 2 and "other.npz: the model takes images of shape (4, 4, 1)" in err


def test_explain_command_refuses_a_layer_the_model_does_not_have(tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    model = small_fashion_model(tmp_path / "m.npz")
    status, _, err = explain_command("--model", str(model), "--out", str(tmp_path / "out"), "--layer", "nope",
                                     str(write_shirt(tmp_path / "shirt.png")))
    assert status == 2 and "no layer named 'nope'" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out", ["a_file", "a_file/under_it"])
def test_explain_command_refuses_an_out_that_is_a_file_in_one_line(tmp_path, out):
    """Bug: --out naming a file (or a folder under one) ended the run, after all the work, in a
    FileExistsError / NotADirectoryError traceback."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("PIL")
    model = small_fashion_model(tmp_path / "m.npz")
    (tmp_path / "a_file").write_text("not a folder")
    status, out_text, err = explain_command("--model", str(model), "--out", str(tmp_path / out),
                                            str(write_shirt(tmp_path / "shirt.png")))
    assert status == 2 and out_text == ""
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and str(tmp_path / out) in err
    assert "Traceback" not in err


def test_explain_command_without_matplotlib_says_how_to_get_it(tmp_path):
    code = textwrap.dedent("""
        import sys
        sys.modules["matplotlib"] = None         # import matplotlib... raises ImportError
        from minicnn.explain_cli import main
        sys.exit(main(["--model", "m.npz", "--out", "o", "x.png"]))
    """)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "needs matplotlib" in result.stderr and "minicnn[examples]" in result.stderr


# ---- the model as it predicts: batch normalisation, dropout and augmentation ----

def predicting_model():
    """Layers that behave differently when training: each must explain its inference forward."""
    from minicnn import BatchNormalization, Dropout, RandomFlip, ReLU
    minicnn.set_seed(5)
    model = Sequential([RandomFlip(input_shape=(6, 5, 2), dtype="float64"), Conv2D(3, 3, padding="same"),
                        BatchNormalization(), ReLU(), Flatten(), Dropout(0.5), Dense(4)])
    model.build((None, 6, 5, 2))
    rng = np.random.default_rng(8)
    batchnorm = model.layers[2]
    # moving statistics and an affine part that are not the defaults (1, 0, 0, 1)
    batchnorm.set_weights([rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3),
                           rng.uniform(0.5, 2, 3)])
    return model


def test_explanations_take_the_gradient_of_the_model_as_it_predicts(backend):
    model = predicting_model()
    x = np.random.default_rng(9).random((3, 6, 5, 2))
    classes = np.array([0, 2, 3])
    state = [w.copy() for w in model.get_weights()]
    first = explain.explain(model, x, class_index=classes, grad_cam=False)
    second = explain.explain(model, x, class_index=classes, grad_cam=False)
    # no dropout mask, flip or batch statistics: the outputs are predict's, every time
    np.testing.assert_allclose(first.outputs, model.predict(x, verbose=0), rtol=1e-12)
    np.testing.assert_array_equal(first.saliency, second.saliency)
    # and the moving statistics were neither used for... nor updated by the explanation
    for before, after in zip(state, model.get_weights()):
        np.testing.assert_array_equal(before, after)
    for i in range(3):
        image = x[i:i + 1].copy()
        gradient = numeric_gradient(lambda: model.predict(image, verbose=0)[0, classes[i]], image)
        expected = np.abs(gradient[0]).max(axis=-1)
        expected /= expected.max()
        assert relative_error(first.saliency[i], expected) <= 1e-6


def test_an_inference_forward_kept_for_a_backward_gives_the_affine_maps_gradients(backend):
    """BatchNormalization (and the ReLU Sequential runs in its pass) inside keeping_caches:
    dx, dgamma and dbeta of the inference map against finite differences."""
    from minicnn import BatchNormalization, ReLU
    from minicnn.layers.base import keeping_caches
    model = Sequential([BatchNormalization(axis=1, input_shape=(3, 4, 2), dtype="float64"), ReLU()])
    model.build((None, 3, 4, 2))
    rng = np.random.default_rng(4)
    batchnorm = model.layers[0]
    batchnorm.set_weights([rng.uniform(0.5, 2, 3), rng.normal(size=3), rng.normal(size=3),
                           rng.uniform(0.5, 2, 3)])
    x = rng.normal(size=(2, 3, 4, 2))
    dy = rng.normal(size=(2, 3, 4, 2))
    with keeping_caches():
        model.forward(x, training=False)
    assert model.layers[0]._cache is None            # no batch statistics were computed
    dx = model.backward(dy, need_input_gradient=True)

    def f():
        return float((model.forward(x, training=False) * dy).sum())
    assert relative_error(dx, numeric_gradient(f, x)) <= 1e-7
    for name in ("gamma", "beta"):
        analytic = batchnorm.grads[name]
        assert relative_error(analytic, numeric_gradient(f, batchnorm.params[name])) <= 1e-7
    # outside keeping_caches an inference forward keeps nothing, and backward says so
    model.forward(x, training=False)
    with pytest.raises(RuntimeError, match="training=True"):
        model.backward(dy)
