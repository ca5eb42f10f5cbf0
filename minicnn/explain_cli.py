"""python -m minicnn explain --model M IMAGE... --out DIR: one picture per image saying why.

Each picture (DIR/<image name>_explain.png) shows the prepared 28x28 input, the heat map(s)
over it and the model's top three answers. Drawing needs matplotlib (the "examples" extra).
A file that cannot be read gets its own error line; the others still get their picture.
Exit status: 0 all drawn, 1 some image failed, 2 nothing could run (model, matplotlib).
"""
import io as io_bytes
import os
import sys
from pathlib import Path

import numpy as np

import minicnn

from . import explain, io
from .datasets.fashion_mnist import CLASS_NAMES
from .images import load_images
from .predict import output_kind, softmax, top_k

METHODS = {"grad-cam": ("grad_cam",), "saliency": ("saliency",), "both": ("grad_cam", "saliency")}
_TITLES = {"grad_cam": "Grad-CAM", "saliency": "saliency"}
_INSTALL_HINT = 'pip install "minicnn[examples]" (or pip install matplotlib)'


def add_arguments(parser):
    """Add the explain command's arguments to an argparse (sub)parser."""
    parser.add_argument("--model", required=True, help="a model saved by model.save / examples/fashion_mnist.py")
    parser.add_argument("--out", required=True, metavar="DIR", help="folder for the pictures (created if missing)")
    parser.add_argument("--method", choices=sorted(METHODS), default="grad-cam",
                        help="which heat map(s) to draw (default: grad-cam)")
    parser.add_argument("--layer", default=None, help="Grad-CAM layer name (default: the last Conv2D)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG/JPEG photos or drawings")


def run(args, out=None, err=None):
    """Draw the pictures for parsed `args`; returns the exit status (0, 1 or 2)."""
    out = sys.stdout if out is None else out     # looked up now: the caller may have replaced them
    err = sys.stderr if err is None else err
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: F401  (checked here, used below)
    except ImportError:
        print(f"error: drawing the explanations needs matplotlib: {_INSTALL_HINT}", file=err)
        return 2
    if os.path.exists(args.out) and not os.path.isdir(args.out):   # before any of the work
        print(f"error: --out {args.out} is a file; it must name a folder (created if missing)", file=err)
        return 2
    try:
        model = minicnn.load_model(args.model, compile=False)
    except (OSError, ValueError) as error:
        print(f"error: cannot load the model {args.model}: {error}", file=err)
        return 2
    try:
        kind = output_kind(model, CLASS_NAMES)      # the predict command's rules
    except ValueError as error:
        print(f"error: {args.model}: {error}", file=err)
        return 2
    try:
        results = load_images(args.images)
    except ImportError as error:     # no Pillow: no file can be read
        print(f"error: {error}", file=err)
        return 2
    readable = [(path, image) for path, image in results if isinstance(image, np.ndarray)]
    failures = len(results) - len(readable)
    for path, problem in results:
        if not isinstance(problem, np.ndarray):
            print(f"{path}: error: {problem}", file=err)
    if not readable:
        return 1
    wanted = METHODS[args.method]
    batch = np.stack([image for _, image in readable])[..., None].astype(model.dtype)
    try:
        found = explain.explain(model, batch, layer=args.layer,
                                saliency="saliency" in wanted, grad_cam="grad_cam" in wanted)
    except (TypeError, ValueError) as error:    # e.g. --layer naming no feature-map layer
        print(f"error: {error}", file=err)
        return 2
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as error:     # --out names a file, or a folder under one, or no permission
        print(f"error: cannot make the folder --out {args.out}: {error.strerror or error}", file=err)
        return 2
    taken = set()
    probabilities = found.outputs if kind == "probabilities" else softmax(found.outputs)
    for i, (path, image) in enumerate(readable):
        maps = {name: getattr(found, name)[i] for name in wanted}
        answers = _top_answers(probabilities[i], CLASS_NAMES)
        target = _output_path(args.out, path, taken)
        try:
            _draw(image, maps, answers, CLASS_NAMES[found.class_index[i]], target)
        except OSError as error:
            failures += 1
            print(f"{path}: error: cannot write {target}: {error}", file=err)
            continue
        print(f"{path}: {target}: " + ", ".join(f"{label} {100 * p:.1f}%" for label, p in answers), file=out)
    return 1 if failures else 0


def _top_answers(outputs, class_names, k=3):
    indices, values = top_k(outputs[None, :], k)
    return [(class_names[c], float(p)) for c, p in zip(indices[0], values[0])]


def _output_path(folder, image_path, taken):
    """DIR/<stem>_explain.png, numbered when two images share a name (a/x.png and b/x.png)."""
    stem = Path(image_path).stem or "image"
    candidate, number = f"{stem}_explain.png", 1
    while candidate in taken:
        number += 1
        candidate = f"{stem}_explain-{number}.png"
    taken.add(candidate)
    return os.path.join(folder, candidate)


def _draw(image, maps, answers, explained_label, target):
    """Write the picture to `target` atomically (a temporary file renamed into place)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = 1 + len(maps)
    figure = Figure(figsize=(2.1 * panels, 2.6), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.subplots(1, panels, squeeze=False)[0]
    axes[0].imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    axes[0].set_title("input 28x28", fontsize=9)
    for ax, (name, heat) in zip(axes[1:], maps.items()):
        ax.imshow(image, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.imshow(heat, cmap="inferno", vmin=0, vmax=1, alpha=0.6, interpolation="nearest")
        ax.set_title(f"{_TITLES[name]}: {explained_label}", fontsize=9)
    for ax in axes:
        ax.set_axis_off()
    figure.text(0.5, 0.04, "   ".join(f"{label} {100 * p:.1f}%" for label, p in answers),
                ha="center", fontsize=9)
    figure.subplots_adjust(left=0.02, right=0.98, top=0.88, bottom=0.14, wspace=0.08)
    picture = io_bytes.BytesIO()
    figure.savefig(picture, format="png")
    io.write_bytes(target, picture.getvalue())   # atomic, with the umask, like model files


def main(argv=None):
    """Stand-alone entry point (the same command as `python -m minicnn explain`)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m minicnn explain", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
