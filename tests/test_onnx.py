"""ONNX export: the exported graph, run by ONNX Runtime, computes what model.predict computes.

Tolerance: 1e-5 absolute on every output (probabilities or raw activations of order 1), float32
on both sides; the measured differences are ~1e-7.
"""
import sys

import numpy as np
import pytest

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, ReLU, Sequential, Softmax
from minicnn.layers import Linear
from minicnn.onnx_export import CONVERTERS, add_arguments, run
from models import seed_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

TOLERANCE = 1e-5


def onnx_outputs(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"input": x})[0]


def images(n, shape, seed=1):
    return np.random.default_rng(seed).uniform(-1, 1, (n, *shape)).astype(np.float32)


def check_export(model, tmp_path, batches=(1, 257)):
    """Export, check the file, and compare ONNX Runtime with predict; returns the worst difference."""
    path = model.export(tmp_path / f"{model.name}.onnx")
    proto = onnx.load(path)
    onnx.checker.check_model(proto, full_check=True)
    worst = 0.0
    for n in batches:
        x = images(n, model.input_shape, seed=n)
        expected = model.predict(x, verbose=0)
        got = onnx_outputs(path, x)
        assert got.shape == expected.shape and got.dtype == np.float32
        worst = max(worst, float(np.abs(got - expected).max()))
    assert worst <= TOLERANCE, worst
    return worst


def with_random_biases(model):
    """Glorot biases so that a bias dropped or misplaced by the export shows in the outputs."""
    rng = np.random.default_rng(7)
    model.set_weights([w if w.ndim > 1 else rng.normal(0, 0.3, w.shape).astype(w.dtype) for w in model.get_weights()])
    return model


def test_the_seed_model_exports_and_agrees_at_batch_1_and_257(tmp_path):
    minicnn.set_seed(0)
    check_export(with_random_biases(seed_model()), tmp_path)


def every_layer_model():
    return Sequential([
        Conv2D(5, (3, 2), strides=2, padding="same", activation="relu", input_shape=(10, 12, 3)),  # stride 2 on even sizes
        MaxPooling2D((3, 3), strides=2, padding="same"),
        Conv2D(4, (2, 3), padding="same", use_bias=False),       # non-square, no bias, linear
        ReLU(),
        Linear(),
        MaxPooling2D(2, strides=1, padding="valid"),
        Flatten(),
        Dense(7, activation="relu"),
        Dense(6, use_bias=False),
        Softmax(),
    ], name="every_layer")


@pytest.mark.parametrize("build", [
    every_layer_model,
    lambda: Sequential([   # "valid" 5x5 kernels, odd 3x3 stride-2 valid pooling, odd sizes
        Conv2D(6, 5, activation="relu", input_shape=(17, 15, 2)),
        MaxPooling2D(3, strides=2, padding="valid"),
        Conv2D(3, (5, 1), strides=(1, 2), padding="valid", activation="softmax"),   # 4-D output, softmax over channels
    ], name="valid_5x5"),
    lambda: Sequential([   # 3x3 stride-2 "same" pooling on odd and even sizes, a 4-D Softmax layer last
        MaxPooling2D(3, strides=2, padding="same", input_shape=(9, 8, 2)),
        Conv2D(3, 1, activation="relu"),
        Softmax(axis=2),
    ], name="pool_first"),
    lambda: Sequential([Flatten(input_shape=(4, 3, 2)), Dense(5, activation="softmax")], name="dense_only"),
])
def test_models_using_every_layer_and_odd_geometries_agree(build, tmp_path):
    minicnn.set_seed(3)
    check_export(with_random_biases(build()), tmp_path)


def test_every_layer_class_has_a_converter_and_a_test():
    assert set(CONVERTERS) == set(minicnn.layers.REGISTRY.names)
    covered = {type(layer).__name__ for build in (every_layer_model, *ISSUE_12_MODELS) for layer in build().layers}
    assert covered == set(minicnn.layers.REGISTRY.names)


def with_random_statistics(model):
    """Random weights everywhere, positive variances: batch normalisation must use them all."""
    rng = np.random.default_rng(11)
    weights = []
    for layer in model.layers:
        for key, value in layer.named_weights():
            weights.append(rng.uniform(0.5, 2.0, value.shape).astype(value.dtype) if key == "moving_variance"
                           else value if value.ndim > 1 else rng.normal(0, 0.5, value.shape).astype(value.dtype))
    model.set_weights(weights)
    return model


def issue_12_every_layer():
    L = minicnn.layers
    return Sequential([
        L.RandomFlip("horizontal", input_shape=(11, 10, 3)),
        L.RandomTranslation(0.2, 0.1),
        Conv2D(6, 3, padding="same"),
        L.BatchNormalization(),                                       # channels: ONNX BatchNormalization
        ReLU(),
        L.AveragePooling2D((3, 3), strides=2, padding="same"),        # border windows average inside cells only
        L.Dropout(0.5),
        L.BatchNormalization(axis=1, scale=False),                    # over the height: Mul + Add
        L.AveragePooling2D(2, padding="valid"),
        L.GlobalAveragePooling2D(),
        Dense(5),
        L.BatchNormalization(center=False),                           # (N, F)
        Softmax(),
    ], name="issue_12_every_layer")


def issue_12_keepdims():
    L = minicnn.layers
    return Sequential([
        Conv2D(4, (2, 3), strides=2, padding="valid", input_shape=(9, 8, 2)),
        L.AveragePooling2D((3, 1), strides=(1, 2), padding="same"),
        L.GlobalAveragePooling2D(keepdims=True),                      # 4-D output: back to NHWC
        L.BatchNormalization(),
    ], name="issue_12_keepdims")


ISSUE_12_MODELS = (issue_12_every_layer, issue_12_keepdims)


@pytest.mark.parametrize("build", ISSUE_12_MODELS)
def test_issue_12_layers_export_their_inference_behaviour(build, tmp_path):
    minicnn.set_seed(4)
    check_export(with_random_statistics(build()), tmp_path)


def test_the_graph_is_nhwc_with_a_dynamic_batch_and_one_transpose_each_way(tmp_path):
    minicnn.set_seed(0)
    proto = onnx.load(seed_model().export(tmp_path / "seed.onnx"))
    (graph_input,), (graph_output,) = proto.graph.input, proto.graph.output
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "input" and dims == ["batch", 28, 28, 1]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim] == ["batch", 10]
    ops = [node.op_type for node in proto.graph.node]
    assert ops == ["Transpose", "Conv", "Relu", "MaxPool", "Conv", "Relu", "MaxPool", "Transpose", "Flatten",
                   "Gemm", "Relu", "Gemm", "Softmax", "Identity"]


def test_a_float64_model_exports_as_float32(tmp_path):
    minicnn.set_seed(0)
    model = with_random_biases(Sequential([Conv2D(2, 3, input_shape=(5, 5, 1), dtype="float64"), Flatten(), Dense(3)]))
    path = model.export(tmp_path / "f64.onnx")
    x = images(4, (5, 5, 1))
    np.testing.assert_allclose(onnx_outputs(path, x), model.predict(x.astype(np.float64), verbose=0),
                               rtol=0, atol=TOLERANCE)


def test_unbuilt_models_unknown_formats_and_unknown_layers_are_refused(tmp_path):
    with pytest.raises(ValueError, match="needs a built model"):
        Sequential([Dense(3)]).export(tmp_path / "x.onnx")
    model = Sequential([Dense(3, input_shape=(4,))])
    with pytest.raises(ValueError, match="format must be 'onnx'"):
        model.export(tmp_path / "x.tflite", format="tflite")

    class Doubling(minicnn.Layer):
        def _forward(self, x, training):
            return 2 * x

    model.add(Doubling(name="twice"))
    with pytest.raises(ValueError, match="Doubling 'twice' has no ONNX form"):
        model.export(tmp_path / "x.onnx")
    assert not list(tmp_path.iterdir())


def test_a_missing_onnx_package_gives_an_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)   # import onnx now raises ImportError
    with pytest.raises(ImportError, match=r'pip install "minicnn\[onnx\]"'):
        Sequential([Dense(3, input_shape=(4,))]).export(tmp_path / "x.onnx")


def test_the_export_command_writes_a_file_that_agrees(tmp_path, capsys):
    import argparse

    minicnn.set_seed(0)
    model = with_random_biases(seed_model(size=8, filters=(2, 3), units=4))
    saved = model.save(tmp_path / "m.npz")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--model", saved, str(tmp_path / "m.onnx")])) == 0
    x = images(3, (8, 8, 1))
    np.testing.assert_allclose(onnx_outputs(tmp_path / "m.onnx", x), model.predict(x, verbose=0), rtol=0, atol=TOLERANCE)
    assert run(parser.parse_args(["--model", str(tmp_path / "missing.npz"), str(tmp_path / "n.onnx")])) == 2
    assert "cannot load the model" in capsys.readouterr().err
    assert not (tmp_path / "n.onnx").exists()
