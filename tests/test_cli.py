"""`python -m minicnn predict` against hostile inputs: files that are not regular files, models
that do not output ten probabilities, models whose output is not a probability vector, and
file names the terminal cannot encode. Every run is a subprocess with a time-out, so a hang
fails the test instead of stalling the suite."""
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import Dense, Flatten, Sequential

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT = 30   # seconds; a healthy run takes about one


def run_cli(*args, env=None, cwd=ROOT):
    """Run `python -m minicnn ARGS` (bytes arguments allowed); returns the CompletedProcess
    with stdout and stderr as bytes (names need not be valid UTF-8)."""
    environment = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "minicnn", *args], capture_output=True,
                          cwd=cwd, env=environment, timeout=TIMEOUT)


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
