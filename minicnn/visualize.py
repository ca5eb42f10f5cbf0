"""Pictures of a model and its answers, written as PNG files. Needs matplotlib (optional).

Uses matplotlib's object API (Figure + savefig), never pyplot's global state, so it works
headless and does not touch the caller's backend.

    prediction_grid     test images, each beside its probability bar chart (predicted bar red
                        when wrong, true bar blue), as the TensorFlow tutorial draws them
    training_curves     loss and accuracy per epoch, train vs validation
    confusion_matrix    counts of true class (rows) vs predicted class (columns)
    first_layer_filters the learned kernels of the first Conv2D
    feature_maps        one image after each Conv2D and MaxPooling2D layer
"""
import numpy as np

from .layers import Conv2D, MaxPooling2D

INSTALL_HINT = 'pip install "minicnn[examples]" (or pip install matplotlib)'


def available():
    """True when matplotlib can be imported."""
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def _figure(width, height):
    try:
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError(f"drawing pictures needs matplotlib: {INSTALL_HINT}") from error
    return Figure(figsize=(width, height), dpi=100)


def _image_axes(ax, image, title=None, **title_kwargs):
    ax.imshow(image, cmap="gray" if image.ndim == 2 else None)
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8, **title_kwargs)


def prediction_grid(path, images, probabilities, labels, class_names, columns=3):
    """Each image with its predicted item and a bar chart of the class probabilities."""
    count = len(images)
    rows = -(-count // columns)
    fig = _figure(4.2 * columns, 2.1 * rows)
    for i in range(count):
        predicted, true = int(np.argmax(probabilities[i])), int(labels[i])
        colour = "tab:blue" if predicted == true else "tab:red"
        image_ax = fig.add_subplot(rows, 2 * columns, 2 * i + 1)
        _image_axes(image_ax, images[i].reshape(images[i].shape[0], images[i].shape[1]))
        image_ax.set_xlabel(f"{class_names[predicted]} {100 * probabilities[i][predicted]:.0f}%\n"
                            f"({class_names[true]})", color=colour, fontsize=8)
        bar_ax = fig.add_subplot(rows, 2 * columns, 2 * i + 2)
        bars = bar_ax.bar(range(len(class_names)), probabilities[i], color="#777777")
        bar_ax.set_ylim(0, 1)
        bar_ax.set_xticks(range(len(class_names)))
        bar_ax.set_xticklabels(range(len(class_names)), fontsize=6)
        bar_ax.tick_params(axis="y", labelsize=6)
        bars[predicted].set_color("tab:red")
        bars[true].set_color("tab:blue")
    fig.tight_layout()
    fig.savefig(path)
    return path


def training_curves(path, history):
    """Loss and accuracy per epoch from a History.history dict (train, and val_ when present)."""
    fig = _figure(10, 4)
    for position, metric in enumerate(("loss", "accuracy")):
        ax = fig.add_subplot(1, 2, position + 1)
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in history and len(history[key]):
                epochs = np.arange(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    return path


def confusion_matrix(path, counts, class_names):
    """A heat map of the confusion matrix with the counts written in the cells."""
    fig = _figure(8, 7)
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(counts, cmap="Blues")
    ticks = range(len(class_names))
    ax.set_xticks(ticks)
    ax.set_xticklabels(class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks)
    ax.set_yticklabels(class_names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    threshold = counts.max() / 2 if counts.size else 0
    for i in range(counts.shape[0]):
        for j in range(counts.shape[1]):
            ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if counts[i, j] > threshold else "black")
    fig.tight_layout()
    fig.savefig(path)
    return path


def first_layer_filters(path, kernel):
    """The first Conv2D's kernels (KH, KW, C_in, F): one small image per filter (channel mean)."""
    kernel = np.asarray(kernel)
    filters = kernel.shape[-1]
    columns = min(filters, 8)
    rows = -(-filters // columns)
    fig = _figure(1.2 * columns, 1.2 * rows)
    for f in range(filters):
        _image_axes(fig.add_subplot(rows, columns, f + 1), kernel[:, :, :, f].mean(axis=2), f"{f}")
    fig.suptitle("first-layer filters")
    fig.tight_layout()
    fig.savefig(path)
    return path


def feature_maps(path, model, image, max_channels=8):
    """The input image and its activations after each Conv2D and MaxPooling2D layer."""


    x = image.reshape((1,) + image.shape).astype(model.dtype)
    stages = [("input", x)]
    for layer in model.layers:
        x = layer.forward(x)
        if isinstance(layer, (Conv2D, MaxPooling2D)):
            stages.append((f"{layer.name} {x.shape[1]}x{x.shape[2]}x{x.shape[3]}", x))
    fig = _figure(1.3 * max_channels, 1.4 * len(stages))
    for row, (title, activations) in enumerate(stages):
        channels = min(activations.shape[-1], max_channels)
        for c in range(channels):
            ax = fig.add_subplot(len(stages), max_channels, row * max_channels + c + 1)
            _image_axes(ax, activations[0, :, :, c], title if c == 0 else None, loc="left")
    fig.tight_layout()
    fig.savefig(path)
    return path
