"""model.summary(): Keras' table of layers, output shapes and parameter counts."""
from .errors import shorten


def print_summary(model, line_length=65, print_fn=print):
    """Print Layer (type) | Output Shape | Param #, then the totals. Columns widen for long
    layer names instead of cutting them off."""
    if not model.layers:
        raise ValueError(f"Sequential '{shorten(model.name)}': the model has no layers to summarise; add some first")
    if not model.built:
        raise ValueError(
            f"Sequential '{shorten(model.name)}': the model is not built yet; give the first layer "
            f"input_shape=... or call build()"
        )
    rows = [
        (f"{layer.name} ({type(layer).__name__})",
         "(None, " + ", ".join(str(d) for d in layer.output_shape) + ")",
         f"{layer.count_params():,}")
        for layer in model.layers
    ]
    name_width = max([int(line_length * 0.45)] + [len(r[0]) + 2 for r in rows])
    shape_width = max([int(line_length * 0.40)] + [len(r[1]) + 2 for r in rows])
    width = max(line_length, name_width + shape_width + 10)

    def row(name, shape, params):
        return (" " + name).ljust(name_width) + (" " + shape).ljust(shape_width) + " " + params

    lines = [f'Model: "{model.name}"', "_" * width, row("Layer (type)", "Output Shape", "Param #"), "=" * width]
    for index, cells in enumerate(rows):
        lines.append(row(*cells))
        lines.append("=" * width if index == len(rows) - 1 else "")
    total = model.count_params()
    trainable = sum(layer.count_params() - layer.count_non_trainable_params()
                    for layer in model.layers if layer.trainable)
    lines += [f"Total params: {total:,}", f"Trainable params: {trainable:,}",
              f"Non-trainable params: {total - trainable:,}", "_" * width]
    for line in lines:
        print_fn(line)
