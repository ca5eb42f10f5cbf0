"""The demo page's server: a real ThreadingHTTPServer on 127.0.0.1:0, spoken to over HTTP."""
import http.client
import io
import json
import re
import signal
import statistics
import struct
import subprocess
import sys
import textwrap
import threading
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from minicnn.datasets.fashion_mnist import CLASS_NAMES

PIL_Image = pytest.importorskip("PIL.Image", reason="the page reads pictures with Pillow")

from minicnn.images import load_image  # noqa: E402
from minicnn.serve import MAX_BODY_BYTES, Predictor  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def seed_shaped_model():
    return Sequential([
        Conv2D(32, 3, padding="same", activation="relu", input_shape=(28, 28, 1)),
        MaxPooling2D(),
        Conv2D(64, 3, padding="same", activation="relu"),
        MaxPooling2D(),
        Flatten(),
        Dense(128, activation="relu"),
        Dense(10, activation="softmax"),
    ])


def synthetic_items(n, seed):
    """(n, 28, 28, 1) pictures whose class k is a bright bar at row 2 + 2k: easy to tell apart."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 10, n)
    x = rng.random((n, 28, 28, 1)).astype(np.float32) * 0.2
    for i, k in enumerate(y):
        x[i, 2 + 2 * k:5 + 2 * k, 4:24, 0] = 1.0
    return x, y


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """The seed model's shape after a few Adam steps on synthetic pictures (about a second)."""
    minicnn.set_seed(5)
    model = seed_shaped_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    x, y = synthetic_items(96, 0)
    model.fit(x, y, epochs=2, batch_size=32, verbose=0)
    path = tmp_path_factory.mktemp("serve") / "model.npz"
    model.save(path)
    return path


@pytest.fixture(scope="module")
def model(model_path):
    return minicnn.load_model(model_path, compile=False)


def request(server, method, path, body=None, headers=None):
    """(status, headers, body bytes) of one request on a fresh connection."""
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def predict(server, body):
    status, headers, data = request(server, "POST", "/api/predict", body)
    assert headers["Content-Type"] == "application/json"
    return status, json.loads(data)


def encode(pixels, fmt, **options):
    buffer = io.BytesIO()
    PIL_Image.fromarray(pixels).save(buffer, fmt, **options)
    return buffer.getvalue()


def trousers_png():
    """Dark trousers on a white background, as a product photo."""
    pixels = np.full((120, 80), 250, np.uint8)
    pixels[10:110, 20:38] = 30
    pixels[10:110, 42:60] = 30
    pixels[10:25, 20:60] = 30
    return encode(pixels, "PNG")


def noise_png():
    return encode(np.random.default_rng(0).integers(0, 256, (64, 64), dtype=np.uint8), "PNG")


def shirt_jpeg():
    pixels = np.full((90, 110, 3), 245, np.uint8)
    pixels[15:80, 30:80] = (180, 40, 40)
    pixels[15:35, 10:100] = (180, 40, 40)
    return encode(pixels, "JPEG", quality=90)


def assert_a_good_answer(answer):
    predictions = answer["predictions"]
    assert len(predictions) == 10
    assert sorted(p["label"] for p in predictions) == sorted(CLASS_NAMES)
    probabilities = [p["probability"] for p in predictions]
    assert abs(sum(probabilities) - 1) <= 1e-5
    assert probabilities == sorted(probabilities, reverse=True)
    assert all(CLASS_NAMES[p["index"]] == p["label"] for p in predictions)
    for key in ("image", "heatmap"):
        picture = np.array(answer[key])
        assert picture.shape == (28, 28), key
        assert picture.min() >= 0 and picture.max() <= 1 and not np.isnan(picture).any(), key
    assert np.array(answer["heatmap"]).max() == 1


@pytest.mark.parametrize("make, suffix", [(trousers_png, ".png"), (shirt_jpeg, ".jpg")])
def test_a_good_picture_gets_ten_sorted_probabilities_and_what_the_model_saw(server, model, tmp_path, make, suffix):
    body = make()
    status, answer = predict(server, body)
    assert status == 200, answer
    assert_a_good_answer(answer)
    # The same bytes as a file through minicnn.images and model.predict (the predict command's way).
    path = tmp_path / f"item{suffix}"
    path.write_bytes(body)
    prepared = load_image(path)
    np.testing.assert_allclose(np.array(answer["image"]), prepared, rtol=0, atol=5e-5)
    expected = model.predict(prepared[None, :, :, None], verbose=0)[0]
    for prediction in answer["predictions"]:
        assert abs(prediction["probability"] - expected[prediction["index"]]) <= 1e-6


@pytest.mark.parametrize("body, words", [
    (b"", "empty"),
    (b"this is not an image", "not an image file"),
    (lambda: noise_png()[:3000], "cannot be decoded"),             # truncated after the header
    (lambda: encode(np.zeros((30, 30), np.uint8), "PNG"), "blank"),
    (lambda: b"GIF89a" + b"\x00" * 50, "not an image file"),
])
def test_a_bad_body_gets_400_with_an_error_and_the_server_keeps_answering(server, body, words):
    status, answer = predict(server, body() if callable(body) else body)
    assert status == 400 and words in answer["error"], answer
    status, answer = predict(server, trousers_png())
    assert status == 200
    assert_a_good_answer(answer)


def test_an_oversized_body_gets_413_and_the_server_keeps_answering(server):
    status, answer = predict(server, b"\x89PNG" + b"\x00" * (MAX_BODY_BYTES - 3))
    assert status == 413 and "at most 10,485,760 bytes" in answer["error"]
    assert predict(server, trousers_png())[0] == 200


def test_a_huge_declared_length_is_refused_without_reading_the_body(server):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.putrequest("POST", "/api/predict")
        connection.putheader("Content-Length", str(10 ** 12))
        connection.endheaders()                     # and no body at all: a read would hang
        response = connection.getresponse()
        assert response.status == 413 and "the body is" in json.loads(response.read())["error"]
    finally:
        connection.close()
    assert predict(server, trousers_png())[0] == 200


def png_header_only(width, height):
    """A PNG declaring width x height grayscale pixels with almost no data: a decompression bomb's header."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def test_a_picture_too_large_to_decode_is_refused_from_its_header(server):
    status, answer = predict(server, png_header_only(8000, 8000))
    assert status == 413 and "8000x8000 pixels" in answer["error"]
    assert predict(server, trousers_png())[0] == 200


def test_requests_without_a_length_or_to_other_hosts_are_refused(server):
    host, port = server.server_address[:2]
    connection = http.client.HTTPConnection(host, port, timeout=10)
    try:
        connection.putrequest("POST", "/api/predict")
        connection.endheaders()
        response = connection.getresponse()
        assert response.status == 411 and "Content-Length" in json.loads(response.read())["error"]
    finally:
        connection.close()
    status, _, data = request(server, "GET", "/", headers={"Host": "attacker.example:80"})
    assert status == 403 and "localhost" in json.loads(data)["error"]
    assert request(server, "GET", "/", headers={"Host": f"localhost:{port}"})[0] == 200


def test_eight_concurrent_requests_are_all_answered_correctly(server):
    bodies = []
    for k in range(8):
        pixels = np.full((60, 50), 255, np.uint8)
        pixels[5 + 3 * k:40 + 2 * k, 5 + k:30 + 2 * k] = 20 * k
        bodies.append(encode(pixels, "PNG"))
    alone = [predict(server, body)[1] for body in bodies]
    start = threading.Barrier(8)

    def ask(body):
        start.wait()
        return predict(server, body)

    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(ask, bodies))
    for (status, answer), expected in zip(together, alone):
        assert status == 200
        assert answer["predictions"] == expected["predictions"]
        assert answer["image"] == expected["image"] and answer["heatmap"] == expected["heatmap"]
    assert len({json.dumps(answer["image"]) for _, answer in together}) == 8


def test_twenty_requests_in_a_row_answer_the_same(server):
    """Also prints the median round trip (run with -s to see it; speed is reported, not tested)."""
    body = trousers_png()
    answers, seconds = [], []
    for _ in range(20):
        started = time.perf_counter()
        answers.append(predict(server, body))
        seconds.append(time.perf_counter() - started)
    for status, answer in answers:
        assert status == 200
        assert {**answer, "compute_ms": 0} == {**answers[0][1], "compute_ms": 0}
    print(f"\nPOST /api/predict round trip: median {1000 * statistics.median(seconds):.1f} ms over 20 "
          f"(server compute median {statistics.median(a['compute_ms'] for _, a in answers):.1f} ms)")


class _References(HTMLParser):
    def __init__(self):
        super().__init__()
        self.found = []

    def handle_starttag(self, tag, attributes):
        self.found += [value for name, value in attributes if name in ("src", "href") and value]


def test_the_page_and_every_asset_it_references_come_from_this_server(server):
    status, headers, page = request(server, "GET", "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    assert "default-src 'self'" in headers["Content-Security-Policy"]
    parser = _References()
    parser.feed(page.decode())
    assert sorted(parser.found) == ["/static/app.js", "/static/favicon.svg", "/static/style.css"]
    kinds = {".js": "text/javascript", ".css": "text/css", ".svg": "image/svg+xml"}
    for reference in parser.found:
        parts = urlsplit(reference)
        assert not parts.scheme and not parts.netloc, f"external asset {reference}"
        status, headers, data = request(server, "GET", reference)
        assert status == 200 and data, reference
        assert headers["Content-Type"].startswith(kinds[Path(parts.path).suffix])
        # Nothing inside an asset reaches out either (web fonts, CDNs, @import url(...)).
        # (The SVG's xmlns names its namespace; browsers never fetch it.)
        text = data.replace(b'xmlns="http://www.w3.org/2000/svg"', b"")
        assert not re.search(rb"(?i)(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), reference
    assert b"fonts.googleapis" not in page and b"cdn" not in page.lower()


@pytest.mark.parametrize("path", ["/nope", "/static/../server.py", "/static/", "/static/missing.js"])
def test_unknown_paths_get_404(server, path):
    status, _, data = request(server, "GET", path)
    assert status == 404 and "error" in json.loads(data)
    assert request(server, "POST", "/api/other", b"x")[0] == 404


def test_the_predictor_refuses_a_model_that_is_not_a_fashion_mnist_classifier():
    other = Sequential([Flatten(input_shape=(8, 8, 1)), Dense(10, activation="softmax")])
    with pytest.raises(ValueError, match=r"takes images of shape \(8, 8, 1\)"):
        Predictor(other)
    relu_out = Sequential([Flatten(input_shape=(28, 28, 1)), Dense(10, activation="relu")])
    with pytest.raises(ValueError, match="'relu' activation"):
        Predictor(relu_out)


_SERVE = textwrap.dedent("""
    import sys
    from minicnn.serve.cli import main
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_the_serve_command_prints_its_url_serves_and_stops_cleanly(model_path, stop):
    # As a user's terminal starts it: with SIGINT at its default. A job that a non-interactive
    # shell starts in the background inherits SIGINT ignored (POSIX), Python keeps it ignored,
    # and the server then rightly ignores Ctrl+C; a test run launched that way must not fail.
    process = subprocess.Popen([sys.executable, "-c", _SERVE, "--model", str(model_path), "--port", "0", "--quiet"],
                               cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        line = process.stdout.readline()
        match = re.match(r"minicnn serve: http://127\.0\.0\.1:(\d+)/ \(Ctrl\+C to stop\)", line)
        assert match, line + process.stderr.read() if process.poll() is not None else line
        connection = http.client.HTTPConnection("127.0.0.1", int(match.group(1)), timeout=30)
        connection.request("POST", "/api/predict", body=trousers_png())
        response = connection.getresponse()
        assert response.status == 200
        assert_a_good_answer(json.loads(response.read()))
        connection.close()
        process.send_signal(stop)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_the_serve_command_refuses_a_missing_model_and_a_bad_port(tmp_path):
    result = subprocess.run([sys.executable, "-c", _SERVE, "--model", str(tmp_path / "none.npz")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "cannot load the model" in result.stderr
    result = subprocess.run([sys.executable, "-c", _SERVE, "--model", "m.npz", "--port", "70000"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "port number 0..65535" in result.stderr


def test_the_lock_keeps_concurrent_explanations_apart(model):
    """Threads switching as often as Python allows, each explaining its own picture many times:
    without the lock, one request's forward pass overwrites the caches another's backward reads."""
    predictor = Predictor(model)
    bodies = []
    for k in range(6):
        pixels = np.full((50, 50), 255, np.uint8)
        pixels[4 + 5 * k:30 + 3 * k, 6 + 2 * k:44 - 3 * k] = 10
        bodies.append(encode(pixels, "PNG"))
    expected = [predictor.answer(body)["heatmap"] for body in bodies]
    previous = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda k: [predictor.answer(bodies[k])["heatmap"] for _ in range(15)], range(6)))
    finally:
        sys.setswitchinterval(previous)
    for k, heatmaps in enumerate(results):
        assert all(heatmap == expected[k] for heatmap in heatmaps), k


def test_a_model_that_outputs_logits_gets_softmax_probabilities(model):
    logits_model = Sequential(seed_shaped_model().layers[:-1] + [Dense(10)])
    logits_model.set_weights(model.get_weights())
    body = trousers_png()
    expected = Predictor(model).answer(body)
    answer = Predictor(logits_model).answer(body)
    assert [p["label"] for p in answer["predictions"]] == [p["label"] for p in expected["predictions"]]
    np.testing.assert_allclose([p["probability"] for p in answer["predictions"]],
                               [p["probability"] for p in expected["predictions"]], rtol=0, atol=1e-6)
    assert answer["heatmap"] == expected["heatmap"]      # the same logit is explained either way
