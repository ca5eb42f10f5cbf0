"""Answering "what is in this picture?": top-k classes with probabilities, for arrays and files."""
import numpy as np

from .images import load_images


def top_k(probabilities, k=3):
    """For (N, K) probabilities: (indices (N, k), probabilities (N, k)), most likely first."""
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
    """
    results = load_images(paths)
    good = [(path, image) for path, image in results if isinstance(image, np.ndarray)]
    probabilities = {}
    if good:
        batch = np.stack([image for _, image in good])[..., None].astype(model.dtype)
        for (path, _), row in zip(good, model.predict(batch, verbose=0)):
            probabilities[path] = row
    failures = 0
    for path, image in results:
        if not isinstance(image, np.ndarray):
            failures += 1
            print_fn(f"{path}: error: {image}")
            continue
        indices, values = top_k(probabilities[path][None, :], k)
        answer = ", ".join(f"{class_names[i]} {100 * p:.1f}%" for i, p in zip(indices[0], values[0]))
        print_fn(f"{path}: {answer}")
    return failures
