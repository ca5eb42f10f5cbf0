"""Tests of minicnn.datasets: the IDX reader, the lookup order, verification and downloads.

No test touches the network: downloads go to a server on 127.0.0.1 started here, and the
default URLs are pointed at a closed local port. Loader tests use a tiny four-file dataset
whose checksums replace the real ones in fashion_mnist.FILES.
"""
import gzip
import hashlib
import os
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from minicnn.datasets import download as dl
from minicnn.datasets import fashion_mnist as fm
from minicnn.datasets.idx import parse_idx, read_decompressed, read_idx

REAL_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
NAMES = list(fm.FILES)


# ----------------------------------------------------------------------------------- helpers

def idx_bytes(array):
    """The IDX encoding of a uint8 array."""
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
        int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.tobytes()


def write_file(path, raw, compress):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_dataset(directory, raws, compress=True):
    """Write the four files into `directory` as <name>.gz (compressed) or <name>."""
    for name, raw in raws.items():
        write_file(directory / (f"{name}.gz" if compress else name), raw, compress)
    return directory


def closed_port_url():
    """A URL on 127.0.0.1 where nothing listens: connecting is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def no_part_files(directory):
    return not list(Path(directory).rglob("*.part")) if Path(directory).exists() else True


# ---------------------------------------------------------------------------------- fixtures

@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No test sees the user's cache, the real system copy, env settings, or the internet."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("MINICNN_DATA", raising=False)
    monkeypatch.delenv("MINICNN_DATA_URLS", raising=False)
    monkeypatch.setattr(fm, "SYSTEM_DIR", tmp_path / "system")
    monkeypatch.setattr(fm, "BASE_URLS", (closed_port_url(),))
    monkeypatch.setattr(dl, "BACKOFF_SECONDS", 0.01)


@pytest.fixture
def tiny(monkeypatch):
    """A tiny Fashion-MNIST (6 train, 4 test images) made the expected content of FILES.

    Returns (raws, arrays): the IDX bytes by file name, and the arrays load_data must return.
    """
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (6, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([9, 0, 0, 3, 0, 2], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([9, 2, 1, 1], dtype=np.uint8),
    }
    raws = {name: idx_bytes(a) for name, a in arrays.items()}
    for name, raw in raws.items():
        monkeypatch.setitem(fm.FILES, name, fm.FileSpec(len(raw), hashlib.sha256(raw).hexdigest()))
    return raws, arrays


class LocalServer:
    """An HTTP server on 127.0.0.1 (port 0) in a thread, serving scripted responses.

    routes maps a URL path to a list of behaviours, used one per request (the last repeats):
      ("ok", body)         200 with Content-Length
      ("drop", body)       200 announcing len(body), then half the body and the connection closes
      ("endless", None)    200 without Content-Length, bytes for up to 5 s or until the client goes
      ("status", code)     that status code, empty body
    Any other path gets 404. hits counts requests per path.
    """

    def __init__(self):
        self.routes, self.hits = {}, {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] = server.hits.get(self.path, 0) + 1
                plan = server.routes.get(self.path)
                if not plan:
                    self.send_error(404)
                    return
                kind, arg = plan.pop(0) if len(plan) > 1 else plan[0]
                if kind == "status":
                    self.send_response(arg)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                elif kind in ("ok", "drop"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(arg)))
                    self.end_headers()
                    self.wfile.write(arg if kind == "ok" else arg[: len(arg) // 2])
                elif kind == "endless":
                    self.send_response(200)
                    self.end_headers()
                    chunk, deadline = b"\0" * 65536, time.monotonic() + 5
                    try:
                        while time.monotonic() < deadline:
                            self.wfile.write(chunk)
                    except OSError:      # the client hung up, as it should
                        pass

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def serve(self, prefix, raws, compress=True):
        for name, raw in raws.items():
            self.routes[f"/{prefix}/{name}.gz"] = [("ok", gzip.compress(raw) if compress else raw)]
        return f"{self.base}/{prefix}"

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = LocalServer()
    yield s
    s.close()


# --------------------------------------------------------------------------------- IDX reader

@pytest.mark.parametrize("shape", [(3, 28, 28), (5, 4, 7), (11,), (0, 28, 28)])
def test_read_idx_reads_gzip_and_raw_alike(tmp_path, shape):
    array = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
    raw = idx_bytes(array)
    for compress in (True, False):
        got = read_idx(write_file(tmp_path / f"f{compress}", raw, compress), ndim=len(shape))
        assert got.dtype == np.uint8 and got.shape == shape
        np.testing.assert_array_equal(got, array)
        assert got.flags.writeable and got.flags.c_contiguous


def test_gzip_is_detected_from_content_not_name(tmp_path):
    raw = idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 2, 2))
    gz_without_suffix = write_file(tmp_path / "images-idx3-ubyte", raw, compress=True)
    raw_with_gz_suffix = write_file(tmp_path / "images-idx3-ubyte.gz", raw, compress=False)
    assert read_decompressed(gz_without_suffix) == raw
    assert read_decompressed(raw_with_gz_suffix) == raw
    np.testing.assert_array_equal(read_idx(gz_without_suffix), read_idx(raw_with_gz_suffix))


GOOD_IMAGES = idx_bytes(np.zeros((2, 3, 3), dtype=np.uint8))


@pytest.mark.parametrize("data, ndim, message", [
    (b"\x00\x00\x09\x03" + GOOD_IMAGES[4:], 3, "magic number 0x00000903"),     # signed bytes
    (b"\x12\x34\x08\x03" + GOOD_IMAGES[4:], 3, "magic number 0x12340803"),
    (b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + b"abc", 3, "declares 1 dimension"),
    (GOOD_IMAGES, 1, "declares 3 dimension"),                                # images as labels
    (b"\x00\x00", None, "shorter than the 4-byte magic"),
    (GOOD_IMAGES[:9], 3, "truncated header"),
    (GOOD_IMAGES[:-1], 3, "truncated: payload is 17 bytes"),
    (GOOD_IMAGES + b"\0", 3, "too long: payload is 19 bytes"),
])
def test_malformed_idx_raises_value_error_naming_the_file(tmp_path, data, ndim, message):
    for compress in (True, False):
        path = write_file(tmp_path / f"bad-{compress}", data, compress)
        with pytest.raises(ValueError) as info:
            read_idx(path, ndim=ndim)
        assert str(path) in str(info.value)
        assert message in str(info.value)


def test_truncated_gzip_stream_raises_value_error_naming_the_file(tmp_path):
    path = tmp_path / "cut.gz"
    path.write_bytes(gzip.compress(GOOD_IMAGES * 50)[:-20])
    with pytest.raises(ValueError, match="corrupt or truncated gzip") as info:
        read_idx(path)
    assert str(path) in str(info.value)


def test_content_over_max_bytes_is_refused(tmp_path):
    path = write_file(tmp_path / "big.gz", b"\0" * 10_000, compress=True)
    assert len(read_decompressed(path, max_bytes=10_000)) == 10_000
    with pytest.raises(ValueError, match="larger than the expected 9,999 bytes"):
        read_decompressed(path, max_bytes=9_999)


def test_parsing_60k_images_takes_no_python_loop():
    data = idx_bytes(np.random.default_rng(2).integers(0, 256, (60000, 28, 28), dtype=np.uint8))
    start = time.perf_counter()
    images = parse_idx(data, ndim=3)
    elapsed = time.perf_counter() - start
    assert images.shape == (60000, 28, 28)
    assert elapsed < 0.5, f"parsing 60,000 images took {elapsed:.2f} s"


# ------------------------------------------------------------------------ local sources, order

def assert_loaded(result, arrays):
    (x_train, y_train), (x_test, y_test) = result
    for got, name in zip((x_train, y_train, x_test, y_test), NAMES):
        assert got.dtype == np.uint8
        np.testing.assert_array_equal(got, arrays[name])


def test_load_data_from_a_directory_returns_keras_layout(tmp_path, tiny):
    raws, arrays = tiny
    data_dir = tmp_path / "data"
    write_dataset(data_dir, dict(list(raws.items())[:2]), compress=True)
    write_dataset(data_dir, dict(list(raws.items())[2:]), compress=False)
    (x_train, y_train), (x_test, y_test) = fm.load_data(str(data_dir))
    assert x_train.shape == (6, 28, 28) and y_train.shape == (6,)
    assert x_test.shape == (4, 28, 28) and y_test.shape == (4,)
    assert_loaded(((x_train, y_train), (x_test, y_test)), arrays)


def test_class_names_are_keras_order():
    assert fm.CLASS_NAMES == ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                              "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


def test_lookup_order_path_then_env_then_cache_then_system_then_download(
        tmp_path, tiny, server, monkeypatch):
    raws, arrays = tiny
    explicit = write_dataset(tmp_path / "explicit", raws)
    env_dir = write_dataset(tmp_path / "env", raws)
    cache = write_dataset(fm.cache_dir(), raws)
    system = write_dataset(fm.SYSTEM_DIR, raws)
    base = server.serve("mirror", raws)
    monkeypatch.setenv("MINICNN_DATA", str(env_dir))

    read_from = []
    real_read = fm.read_decompressed

    def spy(path, *args, **kwargs):
        read_from.append(Path(path).parent)
        return real_read(path, *args, **kwargs)

    monkeypatch.setattr(fm, "read_decompressed", spy)

    def source_used(path=None):
        read_from.clear()
        assert_loaded(fm.load_data(path, base_urls=[base], progress=False), arrays)
        assert len(set(read_from)) == 1, read_from
        return read_from[0]

    assert source_used(explicit) == explicit          # path argument beats MINICNN_DATA
    assert source_used() == env_dir                   # MINICNN_DATA beats the cache
    monkeypatch.delenv("MINICNN_DATA")
    assert source_used() == cache                     # cache beats the system copy
    for f in cache.iterdir():
        f.unlink()
    assert source_used() == system                    # system copy beats a download
    assert sum(server.hits.values()) == 0
    for f in system.iterdir():
        f.unlink()
    assert source_used() == cache                     # downloaded into the cache (.part there)
    assert sum(server.hits.values()) == 4
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    assert source_used() == cache                     # and used from there next time
    assert sum(server.hits.values()) == 4


def test_xdg_cache_home_decides_the_cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert fm.cache_dir() == tmp_path / "x" / "minicnn" / "fashion-mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert fm.cache_dir() == tmp_path / "home" / ".cache" / "minicnn" / "fashion-mnist"


@pytest.mark.parametrize("via_env", [False, True])
def test_a_missing_explicit_directory_is_an_error_not_a_fallback(tmp_path, monkeypatch, via_env):
    missing = tmp_path / "typo"
    if via_env:
        monkeypatch.setenv("MINICNN_DATA", str(missing))
    with pytest.raises(FileNotFoundError) as info:
        fm.load_data(None if via_env else missing)
    assert str(missing) in str(info.value)
    assert ("MINICNN_DATA" if via_env else "path argument") in str(info.value)


def test_bad_explicit_copy_is_reported_kept_and_the_next_source_used(tmp_path, tiny):
    raws, arrays = tiny
    name = "t10k-labels-idx1-ubyte"
    explicit = write_dataset(tmp_path / "explicit", raws)
    bad = write_file(explicit / f"{name}.gz", idx_bytes([1, 2, 3, 4]), compress=True)
    write_dataset(fm.SYSTEM_DIR, raws)
    with pytest.warns(UserWarning, match="bad copy in the path argument") as record:
        assert_loaded(fm.load_data(explicit), arrays)
    assert str(bad) in str(record[0].message) and "SHA-256" in str(record[0].message)
    assert bad.exists()


def test_bad_system_copy_everywhere_raises_naming_file_and_keeps_it(tmp_path, tiny):
    raws, _ = tiny
    name = "train-labels-idx1-ubyte"
    write_dataset(fm.SYSTEM_DIR, raws)
    bad = write_file(fm.SYSTEM_DIR / f"{name}.gz", idx_bytes([0, 0, 0, 0, 0, 0]), compress=True)
    with pytest.warns(UserWarning), pytest.raises(fm.DataNotFoundError) as info:
        fm.load_data(progress=False)
    message = str(info.value)
    assert f"no good copy of {name}" in message
    assert f"{bad}: not a good copy of {name}" in message
    assert fm.FILES[name].sha256 in message
    assert bad.exists()


def test_checksum_error_names_file_and_origin(tmp_path, tiny, monkeypatch):
    raws, _ = tiny
    name = "train-labels-idx1-ubyte"
    path = write_file(tmp_path / f"{name}.gz", raws[name], compress=True)
    monkeypatch.setitem(fm.FILES, name, fm.FileSpec(len(raws[name]), "0" * 64))
    with pytest.raises(fm.ChecksumError) as info:
        fm._read_verified(path, name, fm.FILES[name], str(path))
    assert isinstance(info.value, ValueError)
    assert str(path) in str(info.value) and name in str(info.value)


def test_bad_cache_copy_is_deleted_and_downloaded_again(tiny, server):
    raws, arrays = tiny
    name = "t10k-images-idx3-ubyte"
    cache = write_dataset(fm.cache_dir(), raws)
    write_file(cache / f"{name}.gz", raws[name][:-5] + b"12345", compress=True)
    base = server.serve("mirror", raws)
    with pytest.warns(UserWarning, match="deleted from the cache"):
        assert_loaded(fm.load_data(base_urls=[base], progress=False), arrays)
    assert server.hits == {f"/mirror/{name}.gz": 1}
    assert read_decompressed(cache / f"{name}.gz") == raws[name]


def test_offline_with_no_copy_names_the_three_ways(tiny):
    with pytest.raises(fm.DataNotFoundError) as info:
        fm.load_data(retries=1, timeout=2, progress=False)
    message = str(info.value)
    assert isinstance(info.value, OSError)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "MINICNN_DATA=/that/dir" in message
    assert "internet" in message
    assert str(fm.cache_dir()) in message and str(fm.SYSTEM_DIR) in message
    assert fm.BASE_URLS[0] in message                     # which download was tried


def test_an_empty_url_list_never_downloads(tiny):
    with pytest.raises(fm.DataNotFoundError, match="no URL to download it from"):
        fm.load_data(base_urls=[], progress=False)


# ------------------------------------------------------------------------------------ downloads

def test_download_fills_the_cache_with_verified_files(tiny, server):
    raws, arrays = tiny
    base = server.serve("a", raws)
    start = time.perf_counter()
    assert_loaded(fm.load_data(base_urls=[base], progress=False), arrays)
    assert time.perf_counter() - start < 3
    cache = fm.cache_dir()
    assert sorted(p.name for p in cache.iterdir()) == sorted(f"{n}.gz" for n in NAMES)
    for name in NAMES:
        assert read_decompressed(cache / f"{name}.gz") == raws[name]


def test_download_of_uncompressed_content_is_accepted(tiny, server):
    raws, arrays = tiny
    base = server.serve("raw", raws, compress=False)
    assert_loaded(fm.load_data(base_urls=[base], progress=False), arrays)


def test_a_404_on_the_first_base_url_falls_back_to_the_second(tiny, server):
    raws, arrays = tiny
    good = server.serve("mirror", raws)
    assert_loaded(fm.load_data(base_urls=[f"{server.base}/gone", good], progress=False), arrays)
    for name in NAMES:
        assert server.hits[f"/gone/{name}.gz"] == 1          # a 404 is not retried
        assert server.hits[f"/mirror/{name}.gz"] == 1


def test_base_urls_come_from_minicnn_data_urls(tiny, server, monkeypatch):
    raws, arrays = tiny
    good = server.serve("mirror", raws)
    monkeypatch.setenv("MINICNN_DATA_URLS", f"{server.base}/gone, {good}")
    assert_loaded(fm.load_data(progress=False), arrays)
    assert server.hits[f"/mirror/{NAMES[0]}.gz"] == 1


def test_a_dropped_connection_leaves_no_partial_file(tmp_path, server):
    body = os.urandom(200_000)
    server.routes["/f.gz"] = [("drop", body)]
    dest = tmp_path / "dl" / "f.gz"
    with pytest.raises(dl.DownloadError) as info:
        dl.download([f"{server.base}/f.gz"], dest, max_bytes=10**6, timeout=2, retries=2,
                    backoff=0, progress=False)
    assert "attempt 2/2" in str(info.value)
    assert server.hits["/f.gz"] == 2
    assert not dest.exists()
    assert no_part_files(tmp_path)


def test_a_dropped_connection_is_retried_until_complete(tmp_path, server):
    body = os.urandom(100_000)
    server.routes["/f.gz"] = [("drop", body), ("status", 503), ("ok", body)]
    dest = tmp_path / "f.gz"
    dl.download([f"{server.base}/f.gz"], dest, max_bytes=10**6, timeout=2, retries=3,
                backoff=0, progress=False)
    assert dest.read_bytes() == body
    assert server.hits["/f.gz"] == 3
    assert no_part_files(tmp_path)


def test_a_corrupted_download_is_rejected_and_deleted(tiny, server):
    raws, _ = tiny
    name = "train-images-idx3-ubyte"
    base = server.serve("mirror", raws)
    corrupted = bytearray(raws[name])
    corrupted[100] ^= 0xFF
    server.routes[f"/mirror/{name}.gz"] = [("ok", gzip.compress(bytes(corrupted)))]
    with pytest.raises(fm.DataNotFoundError) as info:
        fm.load_data(base_urls=[base], progress=False)
    message = str(info.value)
    assert f"{base}/{name}.gz: not a good copy of {name}" in message
    assert "the download was deleted" in message
    assert server.hits[f"/mirror/{name}.gz"] == 1             # bad content is not retried
    assert not (fm.cache_dir() / f"{name}.gz").exists()
    assert no_part_files(fm.cache_dir())


def test_an_endless_stream_is_cut_off_by_the_size_cap(tmp_path, server):
    server.routes["/endless.gz"] = [("endless", None)]
    dest = tmp_path / "endless.gz"
    start = time.perf_counter()
    with pytest.raises(dl.DownloadError, match="exceeded the 300,000-byte cap"):
        dl.download([f"{server.base}/endless.gz"], dest, max_bytes=300_000, timeout=2,
                    retries=3, backoff=0, progress=False)
    assert time.perf_counter() - start < 3
    assert server.hits["/endless.gz"] == 1                    # not retried
    assert not dest.exists() and no_part_files(tmp_path)


def test_an_announced_oversize_body_is_refused_before_reading(tmp_path, server):
    server.routes["/big.gz"] = [("ok", b"x" * 5000)]
    with pytest.raises(dl.DownloadError, match="announced 5,000 bytes, over the 4,000-byte cap"):
        dl.download([f"{server.base}/big.gz"], tmp_path / "big.gz", max_bytes=4000, timeout=2,
                    progress=False)
    assert not (tmp_path / "big.gz").exists() and no_part_files(tmp_path)


def test_an_unwritable_cache_fails_before_any_request(tmp_path, tiny, server, monkeypatch):
    raws, _ = tiny
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the cache directory should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocker))
    with pytest.raises(fm.DataNotFoundError, match="download into .*not-a-dir"):
        fm.load_data(base_urls=[server.serve("mirror", raws)], progress=False)
    assert server.hits == {}


def test_a_silent_server_times_out(tmp_path):
    with socket.socket() as listener:        # accepts connections but never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/f.gz"
        start = time.perf_counter()
        with pytest.raises(dl.DownloadError, match="attempt 1/1"):
            dl.download([url], tmp_path / "f.gz", max_bytes=100, timeout=0.3, retries=1,
                        progress=False)
        assert time.perf_counter() - start < 2


# ------------------------------------------------------------------------------- the real data

@pytest.fixture
def real_data(monkeypatch):
    if not all((REAL_SYSTEM_DIR / f"{n}.gz").is_file() or (REAL_SYSTEM_DIR / n).is_file()
               for n in NAMES):
        pytest.skip(f"Fashion-MNIST is not installed in {REAL_SYSTEM_DIR} "
                    f"(apt-get install dataset-fashion-mnist)")
    monkeypatch.setattr(fm, "SYSTEM_DIR", REAL_SYSTEM_DIR)
    return fm.load_data(progress=False)


def test_the_real_data_has_the_published_facts(real_data):
    (x_train, y_train), (x_test, y_test) = real_data
    assert x_train.shape == (60000, 28, 28) and x_train.dtype == np.uint8
    assert y_train.shape == (60000,) and y_train.dtype == np.uint8
    assert x_test.shape == (10000, 28, 28) and x_test.dtype == np.uint8
    assert y_test.shape == (10000,) and y_test.dtype == np.uint8
    np.testing.assert_array_equal(np.bincount(y_train, minlength=10), [6000] * 10)
    np.testing.assert_array_equal(np.bincount(y_test, minlength=10), [1000] * 10)
    assert y_train[:10].tolist() == [9, 0, 0, 3, 0, 2, 7, 2, 5, 5]
    assert y_test[:10].tolist() == [9, 2, 1, 1, 6, 1, 4, 6, 5, 7]
    pixels = x_train / 255.0
    assert round(pixels.mean(), 4) == 0.2860
    assert round(pixels.std(), 4) == 0.3530
