"""The demo page's HTTP server: the page, its assets, and POST /api/predict.

A local, single-user page on the standard library's ThreadingHTTPServer:

    GET  /                 the page (minicnn/serve/static/index.html)
    GET  /static/NAME      its script and style sheet, from the package (nothing external)
    POST /api/predict      body: the image file's bytes (PNG, JPEG, GIF, BMP or WebP)
        200 {"predictions": [{"label", "index", "probability"} x 10, most likely first],
             "image": 28 rows of 28 floats in [0, 1] (what the model saw),
             "heatmap": 28 x 28 Grad-CAM map in [0, 1] for the top answer,
             "heatmap_method": "grad-cam", "compute_ms": time spent in the server}
        400 {"error": ...} not an image, an empty or blank picture, a damaged file
        411 / 413 {"error": ...} no Content-Length / a body over MAX_BODY_BYTES or a picture
             over MAX_IMAGE_PIXELS (refused from its header, before decoding)

The model is guarded by a lock: a forward pass that keeps caches for the backward pass
(explain) is not thread-safe, so requests are served concurrently but computed one at a time.
It writes no files. Requests whose Host is not this machine are refused while it listens on
a loopback address, so that a web page elsewhere cannot reach it by DNS rebinding.
"""
import io
import json
import socket
import sys
import threading
import time
import traceback
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources

import numpy as np

from .. import explain
from ..datasets.fashion_mnist import CLASS_NAMES
from .. import images
from ..predict import output_kind, softmax

MAX_BODY_BYTES = 10 * 1024 * 1024
# Pictures are refused from their header above this many pixels (a 10 MB file can declare a
# picture that decodes into gigabytes). 40 megapixels holds any camera's photo.
MAX_IMAGE_PIXELS = 40_000_000
# Bodies a little over the cap are read and dropped so that the client gets its 413 instead
# of a reset connection; beyond this the connection is just closed after the answer.
_DRAIN_LIMIT_BYTES = 4 * MAX_BODY_BYTES
_FORMATS = ("PNG", "JPEG", "GIF", "BMP", "WEBP")
_CONTENT_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
                  ".css": "text/css; charset=utf-8", ".png": "image/png", ".svg": "image/svg+xml"}
_PAGE_POLICY = ("default-src 'self'; img-src 'self' data: blob:; object-src 'none'; "
                "base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class BadImage(ValueError):
    """The body is not a picture the page can answer (-> 400), or too large (status 413)."""

    def __init__(self, message, status=HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = status


class Predictor:
    """A model and its lock: bytes of an image file -> the API's answer (a JSON-ready dict)."""

    def __init__(self, model):
        """model: a Fashion-MNIST classifier, (28, 28, 1) in and 10 probabilities or logits out.

        Raises ValueError for another model (the predict command's rules: predict.output_kind).
        """
        self.outputs_are_probabilities = output_kind(model, CLASS_NAMES) == "probabilities"
        self.model = model
        self.lock = threading.Lock()

    def answer(self, body):
        """body: bytes of an image file. Returns the 200 answer; raises BadImage."""
        started = time.perf_counter()
        image = decode_image(body)
        x = image[None, :, :, None].astype(self.model.dtype)
        with self.lock:    # the layers' caches are shared state between forward and backward
            found = explain.explain(self.model, x, saliency=False, grad_cam=True)
        scores = found.outputs[0].astype(np.float64)
        probabilities = scores if self.outputs_are_probabilities else softmax(scores[None])[0]
        order = np.argsort(-probabilities, kind="stable")
        return {
            "predictions": [{"label": CLASS_NAMES[i], "index": int(i), "probability": float(probabilities[i])}
                            for i in order],
            "image": np.round(image.astype(np.float64), 4).tolist(),
            "heatmap": np.round(found.grad_cam[0].astype(np.float64), 4).tolist(),
            "heatmap_method": "grad-cam",
            "compute_ms": round(1000 * (time.perf_counter() - started), 2),
        }


def decode_image(body):
    """Bytes of an image file -> the prepared (28, 28) float32 picture, as load_image prepares files.

    The header is read first: a format other than _FORMATS, or a picture over MAX_IMAGE_PIXELS,
    is refused before any decoding. Raises BadImage.
    """
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise RuntimeError('the page reads pictures with Pillow: pip install "minicnn[serve]"') from None
    if not body:
        raise BadImage("the body is empty: send the image file's bytes")
    try:
        with Image.open(io.BytesIO(body), formats=_FORMATS) as picture:     # reads the header only
            width, height = picture.size
        if width * height > MAX_IMAGE_PIXELS:
            raise BadImage(f"the picture is {width}x{height} pixels; the page takes at most "
                           f"{MAX_IMAGE_PIXELS:,} pixels", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        # The same decoding as minicnn.images.load_image (JPEG at reduced scale, EXIF
        # orientation), so the page and `python -m minicnn predict` see the same 28x28 picture.
        pixels = images._decode(Image, io.BytesIO(body))
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage(f"not an image file the page reads ({', '.join(_FORMATS)})") from None
    except Image.DecompressionBombError as error:
        raise BadImage(f"the picture is too large to decode safely ({error})",
                       HTTPStatus.REQUEST_ENTITY_TOO_LARGE) from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        raise BadImage(f"the image cannot be decoded ({error})") from None
    try:
        return images.prepare_image(pixels)
    except (TypeError, ValueError) as error:
        raise BadImage(str(error)) from None


def _static_files():
    """{name: bytes} of the page's assets, read once from the package."""
    folder = resources.files(__package__).joinpath("static")
    return {entry.name: entry.read_bytes() for entry in folder.iterdir()
            if entry.is_file() and not entry.name.startswith(".")}


class PageServer(ThreadingHTTPServer):
    """ThreadingHTTPServer holding the Predictor and the assets; IPv6 hosts work too."""

    daemon_threads = True

    def __init__(self, address, predictor, quiet=False):
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        self.predictor = predictor
        self.quiet = quiet
        self.assets = _static_files()
        super().__init__(address, PageHandler)

    @property
    def url(self):
        host, port = self.server_address[:2]
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"

    def is_loopback(self):
        host = self.server_address[0]
        return host in ("localhost", "::1") or host.startswith("127.")


class PageHandler(BaseHTTPRequestHandler):
    server_version = "minicnn-serve"
    timeout = 30            # seconds a client may stall mid-request before its thread gives up
    protocol_version = "HTTP/1.1"

    # -- routes -----------------------------------------------------------------------------
    def do_GET(self):
        if not self._host_allowed():
            return
        path = self.path.split("?", 1)[0]
        name = "index.html" if path in ("/", "/index.html") else None
        if path.startswith("/static/"):
            name = path[len("/static/"):]
        if name is None or name not in self.server.assets:
            return self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such page: {path}"})
        extension = name[name.rfind("."):]
        headers = {"Cache-Control": "no-cache"}
        if name == "index.html":
            headers["Content-Security-Policy"] = _PAGE_POLICY
        self._send(HTTPStatus.OK, self.server.assets[name],
                   _CONTENT_TYPES.get(extension, "application/octet-stream"), headers)

    def do_POST(self):
        if not self._host_allowed():
            return
        if self.path.split("?", 1)[0] != "/api/predict":
            return self._send_json(HTTPStatus.NOT_FOUND, {"error": f"no such API: POST {self.path}"})
        body = self._read_body()
        if body is None:
            return
        try:
            answer = self.server.predictor.answer(body)
        except BadImage as error:
            return self._send_json(error.status, {"error": str(error)})
        except Exception as error:      # a bug must not stop the server: answer 500 and log it
            traceback.print_exc(file=sys.stderr)
            return self._send_json(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"internal error: {error}"})
        self._send_json(HTTPStatus.OK, answer)

    # -- request body -----------------------------------------------------------------------
    def _read_body(self):
        """The body's bytes, or None after answering an error (the connection then closes)."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            self.close_connection = True
            self._send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "send the image with a Content-Length, not chunked"})
            return None
        declared = self.headers.get("Content-Length")
        if declared is None:
            self.close_connection = True
            self._send_json(HTTPStatus.LENGTH_REQUIRED, {"error": "Content-Length is required"})
            return None
        try:
            length = int(declared)
            if length < 0:
                raise ValueError
        except ValueError:
            self.close_connection = True
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": f"bad Content-Length {declared!r}"})
            return None
        if length > MAX_BODY_BYTES:
            self.close_connection = True
            if length <= _DRAIN_LIMIT_BYTES:
                self._drain(length)
            self._send_json(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                            {"error": f"the body is {length:,} bytes; the page takes at most "
                                      f"{MAX_BODY_BYTES:,} bytes (10 MB)"})
            return None
        body = self.rfile.read(length)
        if len(body) != length:
            self.close_connection = True
            self._send_json(HTTPStatus.BAD_REQUEST, {"error": f"the body ended after {len(body)} of "
                                                              f"{length} bytes"})
            return None
        return body

    def _drain(self, length):
        remaining = length
        try:
            while remaining > 0:
                chunk = self.rfile.read(min(remaining, 1 << 16))
                if not chunk:
                    break
                remaining -= len(chunk)
        except OSError:
            pass

    # -- answers ----------------------------------------------------------------------------
    def _host_allowed(self):
        """While listening on loopback, only requests addressed to this machine are answered."""
        if not self.server.is_loopback():
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        if name.strip("[]") in ("127.0.0.1", "localhost", "::1") or name.startswith("127."):
            return True
        self.close_connection = True
        self._send_json(HTTPStatus.FORBIDDEN, {"error": f"this page answers requests for localhost, not {host!r}"})
        return False

    def _send_json(self, status, payload):
        self._send(status, json.dumps(payload).encode(), "application/json", {"Cache-Control": "no-store"})

    def _send(self, status, data, content_type, headers=None):
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def log_message(self, format, *args):
        if not self.server.quiet:
            super().log_message(format, *args)


def make_server(model, host="127.0.0.1", port=8000, quiet=False):
    """A PageServer for `model` bound to (host, port); port 0 picks a free port (see .url).

    Call serve_forever() on it (in a thread for tests) and shutdown() + server_close() after.
    Raises ValueError for a model that is not a Fashion-MNIST classifier, OSError when the
    address cannot be bound.
    """
    return PageServer((host, port), Predictor(model), quiet=quiet)
