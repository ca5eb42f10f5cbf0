"""The main job end to end: examples/fashion_mnist.py, the predict path and the CLI."""
import importlib.util
import time
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import visualize
from minicnn.datasets import fashion_mnist
from minicnn.predict import predict_image_files, top_k
from processes import run_python

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = all(
    any((fashion_mnist.SYSTEM_DIR / f"{name}{suffix}").exists() for suffix in ("", ".gz"))
    for name in fashion_mnist.FILES
)


def load_example():
    spec = importlib.util.spec_from_file_location("fashion_mnist_example", ROOT / "examples" / "fashion_mnist.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def synthetic_fashion(n_train=600, n_test=200, seed=0):
    """uint8 28x28 'clothes': class k is a bright block at one of 10 places, on faint noise."""
    rng = np.random.default_rng(seed)

    def make(n):
        y = rng.integers(0, 10, n).astype(np.uint8)
        x = rng.integers(0, 40, (n, 28, 28)).astype(np.uint8)
        for i, k in enumerate(y):
            r, c = 3 + 12 * (k // 5), 1 + 5 * (k % 5)
            x[i, r:r + 10, c:c + 4] = 230
        return x, y

    return make(n_train), make(n_test)


@pytest.fixture
def example(monkeypatch):
    """The example module with synthetic data; the engine its main() selects is put back after."""
    module = load_example()
    data = synthetic_fashion()
    monkeypatch.setattr(module.fashion_mnist, "load_data", lambda: data)
    previous = minicnn.get_backend()
    yield module
    minicnn.set_backend(previous)


def drawing(path, background, item, size=(60, 40)):
    """A pair of 'trousers' (two legs and a waist band) drawn with Pillow."""
    image_module = pytest.importorskip("PIL.Image")
    from PIL import ImageDraw

    picture = image_module.new("L", size, color=background)
    pen = ImageDraw.Draw(picture)
    w, h = size
    pen.rectangle([w * 0.3, h * 0.1, w * 0.7, h * 0.25], fill=item)
    pen.rectangle([w * 0.3, h * 0.1, w * 0.45, h * 0.9], fill=item)
    pen.rectangle([w * 0.55, h * 0.1, w * 0.7, h * 0.9], fill=item)
    picture.save(path)
    return path


def test_example_trains_saves_reports_and_reloads(example, tmp_path, capsys):
    out = tmp_path / "run"
    assert example.main(["--epochs", "2", "--subset", "500", "--out", str(out), "--verbose", "0", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "Total params: 421,642" in printed
    accuracy = float(printed.split("test accuracy: ")[1].split()[0])
    assert accuracy >= 0.9  # the synthetic task is easy; chance is 0.1
    assert len([line for line in printed.splitlines() if line.startswith("  ") and "(true: " in line]) == 8
    predictions = [line.strip() for line in printed.splitlines() if "(true: " in line]
    for line in predictions:
        name, rest = line.split(" (true: ")
        assert any(name.startswith(item + " ") and name.endswith("%") for item in fashion_mnist.CLASS_NAMES), line
    assert "one epoch of training steps" in printed and "images/s" in printed
    assert (out / "model.npz").is_file()
    if visualize.available():
        for picture in ("predictions", "training_curves", "confusion_matrix", "first_layer_filters", "feature_maps"):
            assert (out / f"{picture}.png").stat().st_size > 1000
    else:
        assert "pictures skipped" in printed

    # --model reuses the saved model without training and gets the same test accuracy.
    assert example.main(["--model", str(out / "model.npz"), "--out", str(out), "--verbose", "0"]) == 0
    again = capsys.readouterr().out
    assert "training on" not in again
    assert float(again.split("test accuracy: ")[1].split()[0]) == accuracy


def test_recipe_best_trains_saves_reports_and_reloads(example, tmp_path, capsys):
    out = tmp_path / "recipe"
    assert example.main(["--recipe", "best", "--epochs", "1", "--subset", "512", "--out", str(out),
                         "--verbose", "0", "--seed", "3", "--show", "2"]) == 0
    printed = capsys.readouterr().out
    assert "Total params: 871,978" in printed and "Non-trainable params: 896" in printed   # BN moving statistics
    assert "training on 512 images, 1 epochs, batch 128" in printed
    accuracy = float(printed.split("test accuracy: ")[1].split()[0])
    assert 0.0 <= accuracy <= 1.0 and "on 200 images" in printed
    assert len([line for line in printed.splitlines() if "(true: " in line]) == 2
    if visualize.available():
        assert (out / "first_layer_filters.png").stat().st_size > 1000   # found the Conv2D behind the augmentation
        assert (out / "training_curves.png").stat().st_size > 1000

    reloaded = minicnn.load_model(out / "model.npz")
    kinds = [type(layer).__name__ for layer in reloaded.layers]
    assert kinds[0] == "RandomFlip" and reloaded.layers[0].mode == "horizontal"
    assert kinds.count("BatchNormalization") == 5
    assert kinds.count("Dropout") == 3 and kinds[-1] == "Dense"
    # The schedule spans the run: 4 steps = 2 warm-up steps (half of a short run at most), 2 of cosine.
    schedule = reloaded.optimizer.learning_rate_schedule
    assert schedule.warmup_steps == 2 and schedule.decay_steps == 2 and reloaded.optimizer.iterations == 4
    assert schedule(2) == pytest.approx(example.RECIPE_PEAK_LEARNING_RATE, rel=1e-6)
    assert reloaded.optimizer.learning_rate == pytest.approx(example.RECIPE_PEAK_LEARNING_RATE * 0.01, rel=1e-6)

    # --model reuses the saved model (augmentation and dropout off in inference): same test accuracy.
    assert example.main(["--model", str(out / "model.npz"), "--out", str(out), "--verbose", "0", "--show", "0"]) == 0
    assert float(capsys.readouterr().out.split("test accuracy: ")[1].split()[0]) == accuracy


def test_validation_holds_out_training_images_instead_of_the_test_set(example, tmp_path, capsys):
    assert example.main(["--validation", "100", "--epochs", "1", "--out", str(tmp_path), "--verbose", "0",
                         "--show", "0"]) == 0
    printed = capsys.readouterr().out
    assert "training on 500 images, 1 epochs, batch 32" in printed      # 600 synthetic minus the 100 held out
    assert "validation accuracy: " in printed and "on 100 images" in printed and "test accuracy" not in printed
    (x_train, y_train), (x_val, y_val) = example.load_images(0, 0, validation=100)
    (x_all, y_all), _ = example.load_images(0, 0)
    np.testing.assert_array_equal(x_val, x_all[-100:])
    np.testing.assert_array_equal(y_train, y_all[:-100])


def test_example_rejects_bad_flags(example, capsys):
    for argv in (["--epochs", "0"], ["--batch-size", "-1"], ["--subset", "-5"], ["--backend", "gpu"],
                 ["--recipe", "better"], ["--validation", "-1"], ["--validation", "60000"],
                 ["--validation", "100", "--model", "model.npz"]):
        with pytest.raises(SystemExit) as stop:
            example.main(argv)
        assert stop.value.code == 2
    assert "--epochs must be at least 1" in capsys.readouterr().err


def test_predict_path_on_user_drawings(tmp_path, capsys):
    pytest.importorskip("PIL")
    minicnn.set_seed(0)
    example = load_example()
    (x_train, y_train), _ = synthetic_fashion(n_train=200)
    model = example.build_model()
    model.fit(x_train[..., None] / np.float32(255), y_train, epochs=1, verbose=0)
    files = [
        drawing(tmp_path / "light.png", background=250, item=30),           # dark trousers on white paper
        drawing(tmp_path / "dark.jpg", background=5, item=220),             # light trousers on black
        drawing(tmp_path / "wide.png", background=240, item=60, size=(120, 45)),  # non-square
    ]
    (tmp_path / "notes.txt").write_text("not an image")
    lines = []
    failures = predict_image_files(model, files + [tmp_path / "notes.txt", tmp_path / "missing.png"],
                                   fashion_mnist.CLASS_NAMES, print_fn=lines.append)
    assert failures == 2 and len(lines) == 5
    for line in lines[:3]:
        answers = line.split(": ", 1)[1].split(", ")
        assert len(answers) == 3
        percents = [float(a.rsplit(" ", 1)[1].rstrip("%")) for a in answers]
        assert percents == sorted(percents, reverse=True) and 0 < sum(percents) <= 100.05
    assert "notes.txt: error:" in lines[3] and "missing.png: error:" in lines[4]

    from minicnn.images import load_image
    batch = np.stack([load_image(f) for f in files])[..., None]
    assert batch.shape == (3, 28, 28, 1) and batch.dtype == np.float32
    probabilities = model.predict(batch, verbose=0)
    assert probabilities.shape == (3, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=0, atol=1e-5)
    indices, values = top_k(probabilities, 3)
    assert indices.shape == (3, 3) and np.all(np.diff(values, axis=1) <= 0)


def test_cli_predict_answers_good_files_and_reports_bad_ones(tmp_path):
    pytest.importorskip("PIL")
    minicnn.set_seed(0)
    example = load_example()
    model = example.build_model()
    model_path = model.save(tmp_path / "model.npz")
    good = drawing(tmp_path / "good.png", background=255, item=0)
    result = run_python(["-m", "minicnn", "predict", "--model", str(model_path), str(good), str(tmp_path / "nope.png")],
                        capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith(f"{good}: ") and lines[0].count("%") == 3
    assert lines[1].startswith(f"{tmp_path / 'nope.png'}: error:")
    broken = run_python(["-m", "minicnn", "predict", "--model", str(tmp_path / "nothing.npz"), str(good)],
                        capture_output=True, text=True, timeout=120)
    assert broken.returncode == 2 and "cannot load the model" in broken.stderr


@pytest.mark.skipif(not REAL_DATA, reason="real Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)")
def test_end_to_end_on_real_fashion_mnist():
    """Trains the seed model on 12,000 real training images for 2 epochs and checks the test accuracy.

    Measured here: about 0.87 (C engine, ~10 s). The bound leaves room for the seed and engine.
    """
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    minicnn.set_seed(0)
    example = load_example()
    model = example.build_model()
    pick = np.random.default_rng(0).permutation(len(x_train))[:12000]
    start = time.perf_counter()
    model.fit(x_train[pick][..., None] / np.float32(255), y_train[pick], epochs=2, batch_size=32, verbose=0)
    seconds = time.perf_counter() - start
    loss, accuracy = model.evaluate(x_test[..., None] / np.float32(255), y_test, batch_size=1000, verbose=0)
    print(f"real-data end-to-end: accuracy {accuracy:.4f}, training {seconds:.1f} s on {minicnn.get_backend()}")
    assert accuracy >= 0.84


def test_top_k_needs_a_positive_k():
    probabilities = np.array([[0.1, 0.7, 0.2]])
    indices, values = top_k(probabilities, 5)
    assert indices.tolist() == [[1, 2, 0]] and values.tolist() == [[0.7, 0.2, 0.1]]
    for k in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="k must be a positive integer"):
            top_k(probabilities, k)


def run_example(*args):
    """examples/fashion_mnist.py in a new process, importing this checkout's minicnn."""
    return run_python([str(ROOT / "examples" / "fashion_mnist.py"), *map(str, args)],
                      capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("case", ["missing-model", "damaged-model", "input-32x32x3", "five-outputs",
                                  "out-is-a-file", "out-under-a-file"])
def test_example_reports_bad_model_and_out_in_one_line(tmp_path, case):
    # Bug: each of these printed a traceback (FileNotFoundError, ModelFileError, a shape error
    # from predict, FileExistsError / NotADirectoryError from mkdir).
    from minicnn import Dense, Flatten, Sequential

    out, model = tmp_path / "run", tmp_path / "model.npz"
    expected = {"missing-model": "cannot load the model", "damaged-model": "cannot load the model",
                "input-32x32x3": "takes images of shape (32, 32, 3)",
                "five-outputs": "outputs shape (5,) per image",
                "out-is-a-file": "is a file, not a folder", "out-under-a-file": "cannot write into --out"}[case]
    if case == "damaged-model":
        model.write_bytes(b"PK\x03\x04 this is not a model")
    elif case in ("input-32x32x3", "five-outputs"):
        shape, units = ((32, 32, 3), 10) if case == "input-32x32x3" else ((28, 28, 1), 5)
        Sequential([Flatten(input_shape=shape), Dense(units, activation="softmax")]).save(model)
    elif case == "out-is-a-file":
        out.write_text("a file, not a directory")
    elif case == "out-under-a-file":
        (tmp_path / "file").write_text("a file")
        out = tmp_path / "file" / "run"
    if case.startswith("out-"):
        Sequential([Flatten(input_shape=(28, 28, 1)), Dense(10, activation="softmax")]).save(model)
    picture = drawing(tmp_path / "good.png", background=255, item=0)
    result = run_example("--model", model, "--out", out, "--predict", picture)
    assert result.returncode == 2, (result.stdout, result.stderr)
    errors = result.stderr.splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: ") and expected in errors[0], result.stderr
    assert "Traceback" not in result.stderr


def test_help_says_each_default_once(capsys):
    """Bug: --epochs and --batch-size, whose defaults depend on --recipe, showed theirs and then
    "(default: None)"."""
    example = load_example()
    with pytest.raises(SystemExit):
        example.parse_arguments(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: None)" not in text
    assert "(default: 10 for the seed model, 12 for --recipe best)" in text
    assert "(default: auto)" in text   # the others keep theirs
