"""The demo page: draw an item or drop a photo, see the model's answer and why.

    python -m minicnn serve --model fashion.npz      # then open http://127.0.0.1:8000/

server.py holds the HTTP server and the API, cli.py the command, static/ the page itself
(plain HTML, CSS and JavaScript shipped in the package: it works with no internet).
"""
from .server import MAX_BODY_BYTES, MAX_IMAGE_PIXELS, BadImage, Predictor, decode_image, make_server

__all__ = ["MAX_BODY_BYTES", "MAX_IMAGE_PIXELS", "BadImage", "Predictor", "decode_image", "make_server"]
