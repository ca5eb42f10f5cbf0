"""Answering "what is in this picture?": top-k classes with probabilities, for arrays and files."""
import numpy as np

from .images import load_images


def top_k(probabilities, k=3):
    """For (N, K) probabilities: (indices (N, k), probabilities (N, k)), most likely first."""
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"top_k: k must be a positive integer, received {k!r}")
    probabilities = np.asarray(probabilities)
    k = min(k, probabilities.shape[1])
    order = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(probabilities, order, axis=1)


def describe(probability_row, class_names, true_label=None):
    """'Ankle boot 97.3% (true: Ankle boot)' for one row of probabilities."""
    best = int(np.argmax(probability_row))
    text = f"{class_names[best]} {100 * probability_row[best]:.1f}%"
    if true_label is not None:
        text += f" (true: {class_names[int(true_label)]})"
    return text


def predict_image_files(model, paths, class_names, k=3, print_fn=print):
    """Print the top-k items for each image file; a bad file gets its error, the others their answer.

    Returns the number of files that could not be read (0 means every file got an answer).
    Raises ImportError (with the install hint) when Pillow is missing, since then no file can be read.
    """
    results = load_images(paths)
    readable = [i for i, (_, image) in enumerate(results) if isinstance(image, np.ndarray)]
    probabilities = {}
    if readable:
        batch = np.stack([results[i][1] for i in readable])[..., None].astype(model.dtype)
        probabilities = dict(zip(readable, model.predict(batch, verbose=0)))
    failures = 0
    for i, (path, image) in enumerate(results):
        if i not in probabilities:
            failures += 1
            print_fn(f"{path}: error: {image}")
            continue
        indices, values = top_k(probabilities[i][None, :], k)
        answer = ", ".join(f"{class_names[c]} {100 * p:.1f}%" for c, p in zip(indices[0], values[0]))
        print_fn(f"{path}: {answer}")
    return failures
