"""`python -m minicnn predict` against hostile inputs: files that are not regular files, models
that do not output ten probabilities, models whose output is not a probability vector, and
file names the terminal cannot encode. Every run is a subprocess with a time-out, so a hang
fails the test instead of stalling the suite."""
import os
import socket
import threading
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import Dense, Flatten, Sequential
from minicnn.datasets.fashion_mnist import CLASS_NAMES
from minicnn.predict import output_kind
from processes import run_python

TIMEOUT = 30   # seconds; a healthy run takes about one
INVALID = "the model produced invalid output for this image"
LOGITS_NOTE = "note: the model outputs logits (its last layer has no softmax); applying softmax"


def run_cli(*args, env=None):
    """Run `python -m minicnn ARGS` (bytes arguments allowed) in a child importing the minicnn
    under test (tests/processes.py); returns the CompletedProcess with stdout and stderr as
    bytes (names need not be valid UTF-8)."""
    return run_python(["-m", "minicnn", *args], capture_output=True, env=env or {}, timeout=TIMEOUT)


def drawing(path):
    """Dark trousers (two legs and a waistband) on white paper, saved as a PNG."""
    image_module = pytest.importorskip("PIL.Image")
    picture = np.full((60, 40), 250, np.uint8)
    picture[6:15, 12:28] = 30
    picture[6:54, 12:18] = 30
    picture[6:54, 22:28] = 30
    image_module.fromarray(picture).save(path)
    return path


def save_model(path, layers, input_shape=(28, 28, 1), weights=None):
    minicnn.set_seed(0)
    model = Sequential([Flatten(input_shape=input_shape)] + layers)
    if weights is not None:
        model.set_weights(weights(model))
    model.save(path)
    return path


@pytest.fixture(scope="module")
def fashion_model(tmp_path_factory):
    """A (28, 28, 1) -> (10,) softmax model: untrained, but a valid answer for any image."""
    directory = tmp_path_factory.mktemp("model")
    return save_model(directory / "model.npz", [Dense(10, activation="softmax")])


def answer_lines(result):
    return result.stdout.decode("utf-8", "backslashreplace").splitlines()


# ------------------------------------------------------------------ files that are not files

def make_special(kind, directory):
    """A path in `directory` to a FIFO, a directory, a character device or a Unix socket."""
    if (kind == "fifo" and not hasattr(os, "mkfifo")) or (kind == "socket" and not hasattr(socket, "AF_UNIX")):
        pytest.skip(f"no {kind}s on this system")
    if kind == "device" and not Path("/dev/zero").exists():
        pytest.skip("no /dev/zero on this system")
    if kind == "fifo":
        path = directory / "pipe.png"
        os.mkfifo(path)
    elif kind == "directory":
        path = directory / "folder.png"
        path.mkdir()
    elif kind == "device":
        path = Path("/dev/zero")
    else:
        path = directory / "s.png"
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
            listener.bind(str(path))          # the socket file stays after the socket closes
    return path


@pytest.mark.parametrize("kind", ["fifo", "directory", "device", "socket"])
def test_non_regular_files_get_an_error_and_the_others_their_answer(tmp_path, fashion_model, kind):
    # Bug: a FIFO (with no writer) blocked open() forever, /dev/zero was read forever, so the
    # images after it never got an answer.
    good = drawing(tmp_path / "good.png")
    special = make_special(kind, tmp_path)
    result = run_cli("predict", "--model", str(fashion_model), str(special), str(good))
    lines = answer_lines(result)
    assert result.returncode == 1, result.stderr
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"{special}: error: ") and "not a regular file" in lines[0], lines[0]
    assert lines[1].startswith(f"{good}: ") and lines[1].count("%") == 3, lines[1]
    assert b"Traceback" not in result.stderr


def test_a_fifo_swapped_in_after_the_check_does_not_hang(tmp_path, monkeypatch):
    """The race: the path is a regular file when checked, a FIFO when opened. Opening without
    blocking and checking the opened file again refuses it instead of waiting for a writer."""
    pytest.importorskip("PIL")
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this system")
    from minicnn import images
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    regular = os.stat(drawing(tmp_path / "good.png"))
    real_stat = os.stat

    def stat_as_if_regular(path, *args, **kwargs):
        return regular if Path(path) == fifo else real_stat(path, *args, **kwargs)

    monkeypatch.setattr(images.os, "stat", stat_as_if_regular)
    outcome = []

    def load():
        try:
            images.load_image(fifo)
        except Exception as exc:
            outcome.append(exc)

    reader = threading.Thread(target=load, daemon=True)
    reader.start()
    reader.join(TIMEOUT)
    if reader.is_alive():             # blocked in open(): release it by connecting a writer
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("load_image blocked opening a FIFO")
    assert len(outcome) == 1 and isinstance(outcome[0], ValueError), outcome
    assert "not a regular file" in str(outcome[0]) and str(fifo) in str(outcome[0])


# ------------------------------------------------------------------ models that cannot answer

def huge_kernels(model):
    """Finite float32 weights so large that any image overflows the first Dense to inf."""
    return [np.full_like(w, 3e38) if w.ndim == 2 else w for w in model.get_weights()]


@pytest.mark.parametrize("layers, kind", [
    (lambda: [Dense(10, activation="softmax"), minicnn.Dropout(0.5)], "probabilities"),
    (lambda: [Dense(10), minicnn.BatchNormalization()], "logits"),
    (lambda: [Dense(10)], "logits"),
], ids=["softmax-dropout", "dense-batchnorm", "dense"])
def test_output_kind_looks_past_layers_that_pass_values_on(layers, kind):
    """Bug: a Dropout after the softmax, or a batch normalisation after the last Dense, was
    refused as "a None activation" while asking for "no final activation"."""
    model = Sequential([Flatten(input_shape=(28, 28, 1))] + layers())
    assert output_kind(model, CLASS_NAMES) == kind


def test_a_global_average_pooled_head_gives_logits():
    model = Sequential([minicnn.Conv2D(10, 3, input_shape=(28, 28, 1)), minicnn.GlobalAveragePooling2D()])
    assert output_kind(model, CLASS_NAMES) == "logits"


@pytest.mark.parametrize("layers, input_shape, expected", [
    ([Dense(12, activation="softmax")], (28, 28, 1), "outputs shape (12,) per image"),
    ([Dense(5, activation="softmax")], (28, 28, 1), "outputs shape (5,) per image"),
    ("conv", (28, 28, 1), "outputs shape (26, 26, 4) per image"),
    ([Dense(10, activation="softmax")], (32, 32, 3), "takes images of shape (32, 32, 3)"),
    ([Dense(10, activation="relu")], (28, 28, 1), "whose 'relu' activation makes neither probabilities nor logits"),
], ids=["dense12", "dense5", "conv", "input32x32x3", "relu"])
def test_a_model_that_does_not_output_ten_probabilities_is_refused_in_one_line(
        tmp_path, layers, input_shape, expected):
    # Bug: Dense(12) gave an IndexError traceback, a conv output a TypeError, Dense(5) was
    # labelled with the first five item names, another input shape a traceback from predict.
    if layers == "conv":
        minicnn.set_seed(0)
        model = Sequential([minicnn.Conv2D(4, 3, activation="softmax", input_shape=input_shape)])
        path = model.save(tmp_path / "model.npz")
    else:
        path = save_model(tmp_path / "model.npz", layers, input_shape)
    good = drawing(tmp_path / "good.png")
    result = run_cli("predict", "--model", str(path), str(good))
    assert result.returncode == 2, result.stderr
    assert result.stdout == b""
    errors = result.stderr.decode().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    assert expected in errors[0], errors[0]
    if "outputs shape" in expected:
        assert "(10,)" in errors[0] and "Fashion-MNIST" in errors[0], errors[0]
    if "takes images" in expected:
        assert "(28, 28, 1)" in errors[0], errors[0]


def test_a_model_that_outputs_logits_gets_softmax_and_a_note(tmp_path):
    # Bug: Dense(10) without softmax printed its raw outputs as percentages ("215.7%", "-74.0%").
    logits_path = save_model(tmp_path / "logits.npz", [Dense(10)])
    probabilities_path = save_model(tmp_path / "probabilities.npz",
                                    [Dense(10, activation="softmax")])
    good = drawing(tmp_path / "good.png")
    logits = run_cli("predict", "--model", str(logits_path), "--top", "10", str(good), str(good))
    probabilities = run_cli("predict", "--model", str(probabilities_path), "--top", "10", str(good))
    assert logits.returncode == 0 and probabilities.returncode == 0, logits.stderr
    assert logits.stderr.decode().splitlines() == [LOGITS_NOTE]
    lines = answer_lines(logits)
    # The same weights (seed 0) with a softmax layer give the same answer.
    assert lines == answer_lines(probabilities) * 2
    answers = lines[0].split(": ", 1)[1].split(", ")
    percents = [float(answer.rsplit(" ", 1)[1].rstrip("%")) for answer in answers]
    assert len(percents) == 10 and all(0 <= p <= 100 for p in percents)
    assert abs(sum(percents) - 100) <= 10 * 0.05 + 1e-9      # ten roundings to 0.1
    assert sorted(percents, reverse=True) == percents


@pytest.mark.parametrize("activation", ["softmax", None], ids=["softmax", "logits"])
def test_invalid_model_output_is_reported_never_printed_as_nan(tmp_path, activation):
    # Bug: huge (finite) weights overflow to inf, softmax makes NaN, and "nan%" was printed.
    path = save_model(tmp_path / "model.npz", [Dense(10, activation=activation)],
                      weights=huge_kernels)
    good = drawing(tmp_path / "good.png")
    result = run_cli("predict", "--model", str(path), str(good), str(tmp_path / "missing.png"))
    lines = answer_lines(result)
    assert result.returncode == 1, result.stderr
    assert len(lines) == 2, lines
    assert lines[0] == f"{good}: error: {INVALID} (NaN or infinite values)"
    assert lines[1].startswith(f"{tmp_path / 'missing.png'}: error: ")
    assert "nan%" not in result.stdout.decode() and "inf%" not in result.stdout.decode()
    assert b"Traceback" not in result.stderr and b"RuntimeWarning" not in result.stderr


# ------------------------------------------------------------------ the same for Python callers

class FakeModel:
    """A stand-in with the public face of a model, returning chosen outputs."""

    def __init__(self, outputs, layers, input_shape=(28, 28, 1)):
        self.outputs = np.asarray(outputs, np.float32)
        self.layers = layers
        self.input_shape = input_shape
        self.output_shape = self.outputs.shape[1:]
        self.dtype = np.float32

    def predict(self, x, verbose=0):
        return self.outputs[:len(x)]


def test_predict_image_files_refuses_a_model_that_cannot_answer_before_reading(tmp_path):
    pytest.importorskip("PIL")
    from minicnn.datasets.fashion_mnist import CLASS_NAMES
    from minicnn.predict import predict_image_files

    files = [drawing(tmp_path / "good.png")]
    lines, notes = [], []
    with pytest.raises(ValueError, match=r"outputs shape \(3,\) per image.*\(10,\)"):
        predict_image_files(FakeModel([[0.2, 0.3, 0.5]], [minicnn.Softmax()]), files, CLASS_NAMES,
                            print_fn=lines.append)
    with pytest.raises(ValueError, match=r"takes images of shape \(28, 28, 3\).*\(28, 28, 1\)"):
        predict_image_files(FakeModel([np.full(10, 0.1)], [minicnn.Softmax()], (28, 28, 3)), files,
                            CLASS_NAMES, print_fn=lines.append)
    with pytest.raises(ValueError, match=r"ends in ReLU '.*', whose 'relu' activation makes neither"):
        predict_image_files(FakeModel([np.full(10, 0.1)], [minicnn.ReLU()]), files, CLASS_NAMES,
                            print_fn=lines.append)
    assert lines == []                                 # nothing printed before refusing
    logits = np.log(np.arange(1, 11, dtype=np.float32))  # softmax: (1..10) / 55
    assert predict_image_files(FakeModel([logits], [Dense(10)]), files, CLASS_NAMES,
                               print_fn=lines.append, note_fn=notes.append) == 0
    assert notes == [LOGITS_NOTE]
    assert lines == [f"{files[0]}: Ankle boot 18.2%, Bag 16.4%, Sneaker 14.5%"]


def test_predict_image_files_reports_each_invalid_output_row_as_an_error(tmp_path):
    pytest.importorskip("PIL")
    from minicnn.datasets.fashion_mnist import CLASS_NAMES
    from minicnn.predict import predict_image_files

    files = [drawing(tmp_path / f"{i}.png") for i in range(4)]
    rows = [np.full(10, 0.1),                          # a valid answer
            np.r_[1.5, -0.5, np.zeros(8)],               # sums to 1 but has a negative value
            np.r_[0.5, 0.9, np.zeros(8)],                # positive but sums to 1.4
            np.r_[np.nan, np.zeros(9)]]
    lines = []
    failures = predict_image_files(FakeModel(rows, [minicnn.Softmax()]), files, CLASS_NAMES,
                                   print_fn=lines.append)
    assert failures == 3 and len(lines) == 4
    assert lines[0].startswith(f"{files[0]}: T-shirt/top 10.0%")
    assert lines[1] == f"{files[1]}: error: {INVALID} (negative values)"
    assert lines[2] == f"{files[2]}: error: {INVALID} (not a probability vector: it sums to 1.4)"
    assert lines[3] == f"{files[3]}: error: {INVALID} (NaN or infinite values)"


# ------------------------------------------------------------------ names the terminal cannot show

def test_every_file_gets_its_line_whatever_the_terminal_can_encode(tmp_path, fashion_model):
    # Bug: print() raised UnicodeEncodeError at the first name the terminal could not encode
    # (a non-ASCII name on an ASCII terminal, a name that is not UTF-8 anywhere), and the files
    # after it got no answer.
    directory = os.fsencode(tmp_path)
    names = [b"trousers-\xc3\xa9.png", "ズボン.png".encode(), b"\xff.png"]   # é, Japanese, not UTF-8
    for name in names:
        drawing(os.fsdecode(directory + b"/" + name))
    missing = directory + b"/\xfe-missing.png"
    arguments = [directory + b"/" + name for name in names] + [missing]
    shown = {"ascii": ["trousers-\\xe9.png", "\\u30ba\\u30dc\\u30f3.png", "\\xff.png"],
             "utf-8": ["trousers-é.png", "ズボン.png", "\\xff.png"]}
    for encoding, expected in shown.items():
        result = run_cli("predict", "--model", str(fashion_model), *arguments,
                         env={"PYTHONIOENCODING": encoding})
        assert result.returncode == 1, result.stderr
        assert b"Traceback" not in result.stderr, result.stderr
        lines = result.stdout.decode(encoding).splitlines()
        assert len(lines) == 4, lines
        for line, name in zip(lines, expected):
            assert line.startswith(f"{os.fsdecode(directory)}/{name}: ") and line.count("%") == 3, line
        assert lines[3].startswith(f"{os.fsdecode(directory)}/\\xfe-missing.png: error: "), lines[3]


def test_describe_never_shows_nan_as_a_percentage():
    from minicnn.datasets.fashion_mnist import CLASS_NAMES
    from minicnn.predict import describe

    assert describe(np.eye(10)[9], CLASS_NAMES, 9) == "Ankle boot 100.0% (true: Ankle boot)"
    assert describe(np.full(10, np.nan), CLASS_NAMES, 1) == f"{INVALID} (NaN or infinite values) (true: Trouser)"
