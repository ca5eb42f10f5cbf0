#!/usr/bin/env python3
"""Train the classic Fashion-MNIST CNN with minicnn, then say what clothing items images show.

    python examples/fashion_mnist.py                     # 10 epochs, Adam, batch 32
    python examples/fashion_mnist.py --subset 5000 --epochs 2      # a quick run
    python examples/fashion_mnist.py --model runs/fashion_mnist/model.npz --predict shoe.jpg
    python examples/fashion_mnist.py --recipe best        # the stronger recipe (README: A stronger recipe)

It prints the test accuracy, per-class accuracy and wall time, saves the model, prints a few
test images' predicted items with their probability, and, when matplotlib is installed, draws
pictures into --out.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, Sequential
from minicnn.datasets import fashion_mnist
from minicnn.evaluation import confusion_matrix, per_class_accuracy
from minicnn.layers import BatchNormalization, Dropout, RandomFlip, ReLU
from minicnn.optimizers import AdamW
from minicnn.optimizers.schedules import CosineDecay
from minicnn.predict import describe, escape_unencodable_output, output_kind, predict_image_files, softmax

CLASS_NAMES = fashion_mnist.CLASS_NAMES


def build_model():
    """The seed model: the Keras tutorial's CNN, only the import changed."""
    model = Sequential([
        Conv2D(32, (3, 3), padding="same", activation=minicnn.nn.relu, input_shape=(28, 28, 1)),
        MaxPooling2D((2, 2), strides=2),
        Conv2D(64, (3, 3), padding="same", activation=minicnn.nn.relu),
        MaxPooling2D((2, 2), strides=2),
        Flatten(),
        Dense(128, activation=minicnn.nn.relu),
        Dense(10, activation=minicnn.nn.softmax),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


# What --recipe best changes when the user leaves an option at its default (None on the parser).
RECIPE_DEFAULTS = {"seed": {"epochs": 10, "batch_size": 32}, "best": {"epochs": 12, "batch_size": 128}}
RECIPE_PEAK_LEARNING_RATE = 2e-3
RECIPE_WARMUP_EPOCHS = 1
# Keras' default 0.99 leaves the moving statistics far from the data's after a few hundred
# steps, so a short run's validation accuracy is meaningless; 0.9 (PyTorch's default) settles.
RECIPE_BN_MOMENTUM = 0.9


def conv_block(filters):
    """Two 3x3 convolutions (Winograd in the C engine), each Conv2D(no bias) -> BN -> ReLU
    (BN's shift makes a bias redundant), then 2x2 max pooling."""
    def convolution():
        return [Conv2D(filters, (3, 3), padding="same", use_bias=False),
                BatchNormalization(momentum=RECIPE_BN_MOMENTUM), ReLU()]

    return [*convolution(), *convolution(), MaxPooling2D((2, 2), strides=2)]


def build_recipe_model(steps_per_epoch, epochs):
    """The stronger recipe: left-right flips, two BN conv blocks (32-32, 64-64) with dropout,
    a 256-unit dense layer with dropout, AdamW with one epoch of warm-up then cosine decay.

    Input (N, 28, 28, 1) -> probabilities (N, 10). `steps_per_epoch` x `epochs` sizes the schedule.
    """
    total_steps = steps_per_epoch * epochs
    warmup_steps = min(steps_per_epoch * RECIPE_WARMUP_EPOCHS, total_steps // 2)
    schedule = CosineDecay(RECIPE_PEAK_LEARNING_RATE / 10, decay_steps=max(1, total_steps - warmup_steps),
                           alpha=0.01, warmup_target=RECIPE_PEAK_LEARNING_RATE, warmup_steps=warmup_steps)
    model = Sequential([
        # Fashion-MNIST items are left-right symmetric in kind (a shoe points either way), never upside down.
        # A random shift of up to 2 pixels as well (RandomTranslation(0.08, 0.08)) lost on the
        # validation split (README: A stronger recipe).
        RandomFlip("horizontal", input_shape=(28, 28, 1)),
        *conv_block(32),
        Dropout(0.25),
        *conv_block(64),
        Dropout(0.25),
        Flatten(),
        Dense(256, use_bias=False), BatchNormalization(momentum=RECIPE_BN_MOMENTUM), ReLU(),
        Dropout(0.4),
        Dense(10, activation=minicnn.nn.softmax),
    ])
    model.compile(optimizer=AdamW(learning_rate=schedule, weight_decay=1e-4),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def load_images(subset, seed, validation=0):
    """Fashion-MNIST scaled to [0, 1] with a channel axis: (N, 28, 28, 1) float32.

    validation > 0 holds out the last `validation` training images and returns them in place of
    the test set (for choosing a design without ever looking at the test set); --subset then
    draws from the images left.
    """
    (x_train, y_train), (x_test, y_test) = fashion_mnist.load_data()
    if validation:
        x_test, y_test = x_train[-validation:], y_train[-validation:]
        x_train, y_train = x_train[:-validation], y_train[:-validation]
    if subset:
        pick = np.random.default_rng(seed).permutation(len(x_train))[:subset]
        x_train, y_train = x_train[pick], y_train[pick]
    scale = np.float32(1 / 255)
    return (x_train[..., None] * scale, y_train), (x_test[..., None] * scale, y_test)


class _DefaultsHelp(argparse.ArgumentDefaultsHelpFormatter):
    """Shows each default, except None: those flags say their defaults in their own help."""

    def _get_help_string(self, action):
        return action.help if action.default is None else super()._get_help_string(action)


def parse_arguments(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=_DefaultsHelp)
    parser.add_argument("--recipe", choices=sorted(RECIPE_DEFAULTS), default="seed",
                        help="seed: the tutorial's CNN; best: the stronger recipe (BN conv blocks, "
                             "dropout, augmentation, AdamW with warm-up and cosine decay)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="passes over the training images (default: 10 for the seed model, "
                             f"{RECIPE_DEFAULTS['best']['epochs']} for --recipe best)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="images per training step (default: 32 for the seed model, "
                             f"{RECIPE_DEFAULTS['best']['batch_size']} for --recipe best)")
    parser.add_argument("--backend", choices=["auto", "c", "numpy"], default="auto",
                        help="convolution engine: C when built (auto), or force one")
    parser.add_argument("--subset", type=int, default=0, metavar="N",
                        help="train on N random training images only (0 = all 60,000), for quick runs")
    parser.add_argument("--validation", type=int, default=0, metavar="N",
                        help="hold out the last N training images and report on them instead of the "
                             "test set (for comparing designs; 0 = report on the test set)")
    parser.add_argument("--seed", type=int, default=0, help="seed for weights, shuffling and --subset")
    parser.add_argument("--out", type=Path, default=Path("runs/fashion_mnist"),
                        help="directory for the saved model and the pictures")
    parser.add_argument("--model", type=Path, default=None, metavar="PATH",
                        help="reuse a saved model instead of training")
    parser.add_argument("--predict", nargs="+", default=[], metavar="IMAGE",
                        help="your own photos or drawings (PNG/JPEG) to classify; prints the top 3 items")
    parser.add_argument("--show", type=int, default=8, metavar="K", help="test images to print predictions for")
    parser.add_argument("--verbose", type=int, choices=[0, 1, 2], default=1,
                        help="0 silent, 1 progress bar per epoch, 2 one line per epoch")
    args = parser.parse_args(argv)
    for name, value in RECIPE_DEFAULTS[args.recipe].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for name in ("epochs", "batch_size"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.subset < 0:
        parser.error("--subset must be 0 (all) or a positive number of images")
    if not 0 <= args.validation < 60_000:
        parser.error("--validation must be 0 (report on the test set) or a number of training "
                     "images below 60,000 to hold out")
    if args.validation and args.model is not None:
        parser.error("--validation chooses images to hold out of training; a --model is not trained here")
    return args


def first_convolution(model):
    """The first Conv2D (the recipe puts augmentation layers before it)."""
    return next(layer for layer in model.layers if isinstance(layer, Conv2D))


def draw_pictures(out, model, history, x_test, y_test, probabilities, counts):
    from minicnn import visualize

    if not visualize.available():
        print(f"pictures skipped: matplotlib is not installed ({visualize.INSTALL_HINT})")
        return
    drawn = [
        visualize.prediction_grid(out / "predictions.png", x_test[:15], probabilities[:15], y_test[:15], CLASS_NAMES),
        visualize.confusion_matrix(out / "confusion_matrix.png", counts, CLASS_NAMES),
        visualize.first_layer_filters(out / "first_layer_filters.png", first_convolution(model).get_weights()[0]),
        visualize.feature_maps(out / "feature_maps.png", model, x_test[0]),
    ]
    if history is not None:
        drawn.append(visualize.training_curves(out / "training_curves.png", history.history))
    print("pictures: " + ", ".join(str(path) for path in drawn))


class TrainingTimer(minicnn.callbacks.Callback):
    """Wall time of each epoch's training steps alone (from the epoch's start to its last step),
    so the per-epoch figure does not include the validation pass."""

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = self._last_step = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self._last_step = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(self._last_step - self._start)


def train(model, args, x_train, y_train, x_test, y_test):
    """fit with a live progress bar; prints the wall time and saves the model into --out.

    The test set serves as validation data, as in the TensorFlow tutorial: it is only watched
    (curves), never used to choose anything.
    """
    print(f"training on {len(x_train):,} images, {args.epochs} epochs, batch {args.batch_size}")
    timer = TrainingTimer()
    start = time.perf_counter()
    history = model.fit(x_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_data=(x_test, y_test), verbose=args.verbose, callbacks=[timer])
    seconds = time.perf_counter() - start
    per_epoch = float(np.median(timer.seconds))
    print(f"training wall time: {seconds:.1f} s in all; one epoch of training steps: {per_epoch:.1f} s "
          f"(median, {len(x_train) / per_epoch:,.0f} images/s, validation excluded)")
    model_path = args.out / "model.npz"
    model.save(model_path)
    print(f"saved the model to {model_path}")
    return history


def report_on_test_set(args, model, history, x_test, y_test, set_name="test"):
    """Test accuracy, per-class accuracy, a few predictions in words, and the pictures.
    set_name="validation" when --validation put held-out training images in place of the test set."""
    probabilities = model.predict(x_test, batch_size=1000, verbose=0)
    if output_kind(model, CLASS_NAMES) == "logits":   # a saved model without a final softmax
        probabilities = softmax(probabilities)
    predicted = probabilities.argmax(axis=1)
    print(f"{set_name} accuracy: {np.mean(predicted == y_test):.4f} on {len(y_test):,} images")
    counts = confusion_matrix(y_test, predicted, len(CLASS_NAMES))
    print("per-class accuracy:")
    for name, accuracy in zip(CLASS_NAMES, per_class_accuracy(counts)):
        print(f"  {name:<12} {accuracy:.3f}")
    print(f"some {set_name} images:")
    for i in range(min(args.show, len(x_test))):
        print("  " + describe(probabilities[i], CLASS_NAMES, y_test[i]))
    draw_pictures(args.out, model, history, x_test, y_test, probabilities, counts)


def prepare_out(out):
    """Create --out and prove it writable now, not after an hour of training.
    Raises OSError (a file in the way, no permission, a read-only file system)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} is a file, not a folder")
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=out):
        pass


def fail(message):
    """A user mistake: one line on stderr and exit status 2, as the command line does."""
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv=None):
    escape_unencodable_output()
    args = parse_arguments(argv)
    minicnn.set_backend(args.backend)
    minicnn.set_seed(args.seed)
    info = minicnn.backend_info()
    print(f"minicnn {minicnn.__version__}, engine: {info['engine']}"
          + (f" ({info.get('simd')}, {info.get('threads')} threads)" if info["engine"] == "c" else ""))
    try:
        prepare_out(args.out)
    except OSError as error:
        return fail(f"cannot write into --out {args.out}: {error}")

    history = None
    if args.model is not None:
        try:
            model = minicnn.load_model(args.model, compile=False)   # only predicts
        except (OSError, ValueError) as error:
            return fail(f"cannot load the model {args.model}: {error}")
        try:
            output_kind(model, CLASS_NAMES)
        except ValueError as error:   # another input size or number of classes
            return fail(f"{args.model}: {error}")
        print(f"loaded {args.model}")
    else:
        (x_train, y_train), (x_test, y_test) = load_images(args.subset, args.seed, args.validation)
        if args.recipe == "best":
            model = build_recipe_model(steps_per_epoch=-(-len(x_train) // args.batch_size), epochs=args.epochs)
        else:
            model = build_model()
        model.summary()
        history = train(model, args, x_train, y_train, x_test, y_test)

    # A saved model asked only about the user's images needs no data set at all.
    if args.model is None or not args.predict:
        if args.model is not None:
            (_, _), (x_test, y_test) = load_images(0, args.seed)
        report_on_test_set(args, model, history, x_test, y_test,
                           "validation" if args.validation and args.model is None else "test")

    failures = 0
    if args.predict:
        print("your images (top 3):")
        try:
            failures = predict_image_files(model, args.predict, CLASS_NAMES, print_fn=lambda line: print("  " + line))
        except ImportError as error:  # no Pillow: no file can be read
            print(f"  error: {error}")
            failures = len(args.predict)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
