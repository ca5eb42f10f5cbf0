"""Model files: round trips, resuming training exactly, and files that are not what they claim."""
import copy
import io
import json
import os
import pickle
import textwrap
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest

import minicnn
from minicnn import Conv2D, Dense, Flatten, MaxPooling2D, ModelFileError, Sequential
from minicnn.callbacks import ModelCheckpoint
from minicnn.io import FORMAT_VERSION, HEADER_ENTRY

from processes import run_python



def make_model(dtype=None, seed=0, optimizer="adam"):
    minicnn.set_seed(seed)
    model = Sequential([
        Conv2D(3, (3, 2), strides=(1, 2), padding="same", activation="relu", input_shape=(6, 6, 1), dtype=dtype,
               kernel_initializer="he_normal"),
        MaxPooling2D(2, dtype=dtype),
        Flatten(dtype=dtype),
        Dense(3, activation=minicnn.nn.softmax, dtype=dtype),
    ], name="tiny")
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def data(n=48, seed=0):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.normal(0, 0.3, (n, 6, 6, 1)).astype(np.float32)
    for k in range(3):
        x[y == k, 2 * k:2 * k + 2, :, 0] += 1.0
    return x, y


def state_of(model):
    """Everything a model file should carry, as comparable bytes."""
    optimizer = model.optimizer.get_state() if model.compiled else None
    return {
        "config": json.dumps(model.get_config(), sort_keys=True),
        "weights": [w.tobytes() for w in model.get_weights()],
        "dtypes": [w.dtype.name for w in model.get_weights()],
        "compile": None if not model.compiled else (type(model.optimizer).__name__, model.optimizer.get_config(),
                                                    type(model.loss).__name__, model.metrics_names),
        "iterations": optimizer and optimizer["iterations"],
        "slots": optimizer and {k: v.tobytes() for k, v in optimizer["slots"].items()},
        "shuffle": (model._shuffle_seed, model._epochs_seen),
    }


@pytest.fixture
def trained(tmp_path):
    model = make_model()
    x, y = data()
    model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    return model, model.save(tmp_path / "model.npz")


# -- round trips ---------------------------------------------------------------------------------

def test_save_load_predict_gives_identical_outputs(trained):
    model, path = trained
    x, _ = data(20, seed=1)
    loaded = minicnn.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert state_of(loaded) == state_of(model)
    assert loaded.name == "tiny" and [l.name for l in loaded.layers] == [l.name for l in model.layers]


def test_float64_model_and_uncompiled_model_round_trip(tmp_path):
    model = make_model(dtype="float64")
    model.fit(*data(16), epochs=1, verbose=0)
    loaded = minicnn.load_model(model.save(tmp_path / "f64"))
    assert loaded.dtype == "float64" and state_of(loaded) == state_of(model)
    minicnn.set_seed(0)
    bare = Sequential([Dense(2, input_shape=(3,))])
    again = minicnn.load_model(bare.save(tmp_path / "bare"))
    assert not again.compiled and [w.tobytes() for w in again.get_weights()] == [w.tobytes() for w in bare.get_weights()]
    without_optimizer = minicnn.load_model(model.save(tmp_path / "no_opt", include_optimizer=False))
    assert without_optimizer.compiled and without_optimizer.optimizer.iterations == 0
    not_compiled = minicnn.load_model(tmp_path / "f64.npz", compile=False)
    assert not not_compiled.compiled


def test_file_names_follow_numpy_savez(tmp_path):
    model = make_model()
    model.build()
    assert model.save(tmp_path / "a") == str(tmp_path / "a.npz")
    assert model.save(str(tmp_path / "b.h5")) == str(tmp_path / "b.h5.npz")
    assert model.save(tmp_path / "sub" / "dir" / "c.npz") == str(tmp_path / "sub" / "dir" / "c.npz")
    assert minicnn.load_model(tmp_path / "a").name == "tiny"          # finds a.npz
    with pytest.raises(FileExistsError):
        model.save(tmp_path / "a.npz", overwrite=False)
    with pytest.raises(FileNotFoundError):
        minicnn.load_model(tmp_path / "missing.npz")
    with pytest.raises(ValueError, match="built"):
        Sequential([Dense(2)]).save(tmp_path / "unbuilt")


def test_loading_draws_nothing_from_the_generator(trained):
    _, path = trained
    minicnn.set_seed(123)
    expected = minicnn.seeding.generator().random(4)
    minicnn.set_seed(123)
    minicnn.load_model(path)
    np.testing.assert_array_equal(minicnn.seeding.generator().random(4), expected)


def test_weights_files(tmp_path, trained):
    model, full_path = trained
    path = model.save_weights(tmp_path / "weights")
    other = make_model(seed=9)
    other.build()
    other.load_weights(path)
    assert [w.tobytes() for w in other.get_weights()] == [w.tobytes() for w in model.get_weights()]
    other.load_weights(full_path)    # a full model file has weights too
    with pytest.raises(ModelFileError, match="only weights"):
        minicnn.load_model(path)
    minicnn.set_seed(0)
    wrong = Sequential([Dense(2, input_shape=(5,))])
    with pytest.raises(ModelFileError, match="do not fit"):
        wrong.load_weights(path)


# -- resuming training -------------------------------------------------------------------------

@pytest.mark.parametrize("optimizer", ["adam", "sgd_momentum"])
def test_save_load_continue_equals_uninterrupted_training(tmp_path, optimizer):
    x, y = data(40)

    def fresh():
        opt = minicnn.optimizers.SGD(0.05, momentum=0.9, nesterov=True) if optimizer != "adam" else "adam"
        return make_model(seed=11, optimizer=opt)

    uninterrupted = fresh()
    checkpoint = ModelCheckpoint(tmp_path / "ckpt-{epoch:02d}.npz")
    full = uninterrupted.fit(x, y, epochs=3, batch_size=8, validation_split=0.2, verbose=0, callbacks=[checkpoint])

    first = fresh()
    part_one = first.fit(x, y, epochs=1, batch_size=8, validation_split=0.2, verbose=0)
    path = first.save(tmp_path / "after-one-epoch")
    minicnn.set_seed(999)                               # a different process state entirely
    resumed = minicnn.load_model(path)
    part_two = resumed.fit(x, y, epochs=2, batch_size=8, validation_split=0.2, verbose=0)

    final = [w.tobytes() for w in uninterrupted.get_weights()]
    assert [w.tobytes() for w in resumed.get_weights()] == final
    assert {k: part_one.history[k] + part_two.history[k] for k in full.history} == full.history
    assert resumed.optimizer.iterations == uninterrupted.optimizer.iterations

    from_checkpoint = minicnn.load_model(tmp_path / "ckpt-01.npz")   # what ModelCheckpoint wrote
    from_checkpoint.fit(x, y, epochs=3, initial_epoch=1, batch_size=8, validation_split=0.2, verbose=0)
    assert [w.tobytes() for w in from_checkpoint.get_weights()] == final


def test_resume_in_a_new_process_equals_uninterrupted_training(tmp_path):
    x, y = data(32)
    np.savez(tmp_path / "data.npz", x=x, y=y)
    uninterrupted = make_model(seed=4)
    uninterrupted.fit(x, y, epochs=2, batch_size=8, verbose=0)
    first = make_model(seed=4)
    first.fit(x, y, epochs=1, batch_size=8, verbose=0)
    first.save(tmp_path / "half")
    script = textwrap.dedent(f"""
        import numpy as np, minicnn
        d = np.load({str(tmp_path / 'data.npz')!r})
        model = minicnn.load_model({str(tmp_path / 'half.npz')!r})
        model.fit(d["x"], d["y"], epochs=1, batch_size=8, verbose=0)
        model.save({str(tmp_path / 'resumed.npz')!r})
    """)
    run_python(["-W", "ignore", "-c", script], check=True, timeout=120)
    resumed = minicnn.load_model(tmp_path / "resumed.npz")
    assert [w.tobytes() for w in resumed.get_weights()] == [w.tobytes() for w in uninterrupted.get_weights()]


def random_model(seed_of_layers):
    """Dropout, RandomFlip and RandomTranslation with seed_of_layers (None: minicnn's generator)."""
    minicnn.set_seed(3)
    model = Sequential([
        minicnn.RandomFlip("horizontal", seed=seed_of_layers, input_shape=(6, 6, 1)),
        minicnn.RandomTranslation(0.2, 0.2, seed=None if seed_of_layers is None else seed_of_layers + 1),
        Conv2D(3, (3, 3), activation="relu"), Flatten(),
        minicnn.Dropout(0.4, seed=None if seed_of_layers is None else seed_of_layers + 2),
        Dense(3, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model


@pytest.mark.parametrize("seed_of_layers", [None, 7], ids=["minicnn_generator", "own_seeds"])
def test_resuming_a_model_with_random_layers_equals_uninterrupted_training(tmp_path, seed_of_layers):
    """Bug: a model file kept no generator positions, so after load_model the dropout masks,
    flips and shifts started over (seed=) or came from wherever minicnn's generator was:
    2 epochs + save/load + 3 epochs differed from 5 epochs."""
    x, y = data(40)
    uninterrupted = random_model(seed_of_layers)
    uninterrupted.fit(x, y, epochs=5, batch_size=8, verbose=0)
    first = random_model(seed_of_layers)
    first.fit(x, y, epochs=2, batch_size=8, verbose=0)
    path = first.save(tmp_path / "two-epochs")
    minicnn.set_seed(999)                               # another process's state
    minicnn.seeding.generator().random(17)
    resumed = minicnn.load_model(path)
    resumed.fit(x, y, epochs=3, batch_size=8, verbose=0)
    assert [w.tobytes() for w in resumed.get_weights()] == [w.tobytes() for w in uninterrupted.get_weights()]


def test_a_file_from_before_the_generators_were_kept_still_loads(tmp_path):
    x, y = data(16)
    model = random_model(7)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)

    def drop_generators(entries, header):
        del header["training"]["layer_generators"], header["training"]["minicnn_generator"]

    old = rewrite(model.save(tmp_path / "m"), tmp_path / "old.npz", drop_generators)
    assert minicnn.load_model(old).get_training_state()["epochs_seen"] == 1


@pytest.mark.parametrize("change, message", [
    (lambda g: g.update(state="0x" + "f" * 33), "state must be a hex string of at most 128 bits"),
    (lambda g: g.update(inc=12), "inc must be a hex string"),
    (lambda g: g.update(bit_generator="MT19937"), "expected a PCG64 generator state"),
    (lambda g: g.update(has_uint32=2), "has_uint32 must be 0 or 1"),
])
def test_a_damaged_generator_position_is_refused_naming_the_file(tmp_path, change, message):
    x, y = data(16)
    model = random_model(7)
    model.fit(x, y, epochs=1, batch_size=8, verbose=0)

    def damage(entries, header):
        change(next(iter(header["training"]["layer_generators"].values())))

    target = rewrite(model.save(tmp_path / "m"), tmp_path / "damaged.npz", damage)
    with pytest.raises(ModelFileError, match=f"training state is invalid.*{message}"):
        minicnn.load_model(target)


# -- writing is atomic -------------------------------------------------------------------------

def test_a_failing_save_leaves_the_previous_file_and_no_temporary(trained, monkeypatch):
    model, path = trained
    before = Path(path).read_bytes()

    def broken_savez(handle, **entries):
        handle.write(b"PK\x03\x04 half a model")
        raise OSError("disk full")

    monkeypatch.setattr(np, "savez", broken_savez)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert Path(path).read_bytes() == before
    assert sorted(p.name for p in Path(path).parent.iterdir()) == ["model.npz"]


def test_a_save_killed_midway_leaves_the_previous_file_intact(trained):
    model, path = trained
    before = state_of(minicnn.load_model(path))
    script = textwrap.dedent(f"""
        import os, signal, minicnn
        from minicnn import Sequential, Dense
        model = Sequential([Dense(7, input_shape=(3,))])
        def die(fd):                      # killed after the new bytes are written, before the rename
            os.kill(os.getpid(), signal.SIGKILL)
        os.fsync = die
        model.save({path!r})
    """)
    result = run_python(["-W", "ignore", "-c", script], timeout=120)
    assert result.returncode == -9
    assert state_of(minicnn.load_model(path)) == before


# -- bad files --------------------------------------------------------------------------------

def entries_of(path):
    with np.load(path, allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}


def header_of(entries):
    return json.loads(entries[HEADER_ENTRY].tobytes())


def with_header(entries, header):
    return {**entries, HEADER_ENTRY: np.frombuffer(json.dumps(header).encode(), dtype=np.uint8)}


def test_truncated_files_raise_a_clear_error(trained, tmp_path):
    _, path = trained
    content = Path(path).read_bytes()
    broken = tmp_path / "broken.npz"
    for length in list(range(0, len(content), 97)) + [len(content) - 1, len(content) - 22]:
        broken.write_bytes(content[:length])
        with pytest.raises(ModelFileError) as error:
            minicnn.load_model(broken)
        assert str(broken) in str(error.value)


def test_every_bit_flip_is_caught_or_harmless(trained, tmp_path):
    """One flipped bit anywhere: a ModelFileError, or (for zip fields nothing reads) the very
    same model. Never another exception, never a different model."""
    _, path = trained
    original = state_of(minicnn.load_model(path))
    content = bytearray(Path(path).read_bytes())
    flipped = tmp_path / "flipped.npz"
    outcomes = {"error": 0, "same": 0}
    for position in range(0, len(content), 3):
        damaged = bytearray(content)
        damaged[position] ^= 1 << (position % 8)
        flipped.write_bytes(damaged)
        try:
            loaded = minicnn.load_model(flipped)
        except ModelFileError:
            outcomes["error"] += 1
            continue
        assert state_of(loaded) == original, f"bit flip at byte {position} gave a different model"
        outcomes["same"] += 1
    assert outcomes["error"] > 0.8 * sum(outcomes.values()), outcomes


@pytest.mark.parametrize("content, message", [
    (b"", "empty"),
    (b"hello, I am a text file\n", "not a .npz"),
    (pickle.dumps({"weights": [1, 2, 3]}), "not a .npz"),
])
def test_foreign_files_raise(tmp_path, content, message):
    path = tmp_path / "foreign.npz"
    path.write_bytes(content)
    with pytest.raises(ModelFileError, match=message):
        minicnn.load_model(path)


def test_foreign_npz_npy_and_directory_raise(tmp_path):
    np.savez(tmp_path / "other.npz", kernel=np.ones(3), bias=np.zeros(2))
    with pytest.raises(ModelFileError, match=f"no '{HEADER_ENTRY}' entry.*bias, kernel"):
        minicnn.load_model(tmp_path / "other.npz")
    np.save(tmp_path / "array.npy", np.ones(3))
    with pytest.raises(ModelFileError, match="single .npy"):
        minicnn.load_model(tmp_path / "array.npy")
    (tmp_path / "folder.npz").mkdir()
    with pytest.raises(ModelFileError, match="directory"):
        minicnn.load_model(tmp_path / "folder.npz")


def rewrite(path, target, change):
    entries = entries_of(path)
    header = header_of(entries)
    entries = change(entries, header) or with_header(entries, header)
    np.savez(target, **entries)
    return target


@pytest.mark.parametrize("change, message", [
    (lambda e, h: h.update(format_version=FORMAT_VERSION + 1), "newer minicnn"),
    (lambda e, h: h.update(format_version="1"), "format_version"),
    (lambda e, h: h.update(format="keras"), "not a minicnn model"),
    (lambda e, h: h["model"]["layers"][0].update(class_name="Lambda"), "unknown layer class 'Lambda'"),
    (lambda e, h: h["model"]["layers"][0]["config"].update(filters=4), "do not fit"),
    (lambda e, h: h["model"]["layers"][0]["config"].update(evil="os.system"), "architecture is invalid"),
    (lambda e, h: h["weights"][0].update(shape=[3, 2, 1, 4]), "header says"),
    (lambda e, h: h["weights"][0].update(dtype="object"), "invalid entry description"),
    (lambda e, h: h["weights"][0].update(shape=[10 ** 6, 10 ** 6]), "declares"),
    (lambda e, h: h["compile"]["optimizer"].update(class_name="builtins.eval"), "unknown optimizer"),
    (lambda e, h: h["training"].update(optimizer_iterations=-1), "iterations"),
    (lambda e, h: h["training"]["slots"].pop() and None, "does not match its header"),
    (lambda e, h: with_header({**e, "extra": np.ones(2)}, h), "unexpected entries"),
    (lambda e, h: {**e, "weight_0000": np.full_like(e["weight_0000"], np.nan)}, "NaN"),
    (lambda e, h: {**e, HEADER_ENTRY: np.frombuffer(b"{not json", dtype=np.uint8)}, "unreadable header"),
    (lambda e, h: {**e, HEADER_ENTRY: np.zeros(3)}, "uint8"),
])
def test_inconsistent_files_raise_a_clear_error(trained, tmp_path, change, message):
    _, path = trained
    with pytest.raises(ModelFileError, match=message) as error:
        minicnn.load_model(rewrite(path, tmp_path / "changed.npz", change))
    assert str(tmp_path / "changed.npz") in str(error.value)


class Plant:
    """Unpickling this creates a marker file: proof that code from a file ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickled_objects_are_never_unpickled(trained, tmp_path):
    _, path = trained
    marker = tmp_path / "code-ran"
    payload = np.array([Plant(marker)], dtype=object)
    pickle.loads(pickle.dumps(Plant(marker))).close()          # the plant works...
    assert marker.exists()
    marker.unlink()                                            # ...when something unpickles it

    entries = entries_of(path)
    header = header_of(entries)
    files = {
        "as a listed weight": {**entries, "weight_0000": payload},
        "as an extra entry": {**entries, "zzz": payload},
        "as the header": {**entries, HEADER_ENTRY: payload},
    }
    for name, content in files.items():
        target = tmp_path / f"{name.replace(' ', '_')}.npz"
        np.savez(target, allow_pickle=True, **content)
        with pytest.raises(ModelFileError):
            minicnn.load_model(target)
        assert not marker.exists(), name
    np.save(tmp_path / "object.npy", payload, allow_pickle=True)
    raw = tmp_path / "raw-pickle.npz"
    raw.write_bytes(pickle.dumps(Plant(marker)))
    for target in (tmp_path / "object.npy", raw):
        with pytest.raises(ModelFileError):
            minicnn.load_model(target)
        with pytest.raises(ModelFileError):
            make_model().load_weights(target)
    assert not marker.exists()
    assert header["format_version"] == FORMAT_VERSION


def test_file_layout_is_plain_arrays_with_a_json_header(trained):
    _, path = trained
    with zipfile.ZipFile(path) as archive:
        names = sorted(archive.namelist())
    assert names[0].startswith("minicnn_header") and all(n.endswith(".npy") for n in names)
    entries = entries_of(path)
    header = header_of(entries)
    assert header["format"] == "minicnn-model" and header["kind"] == "model"
    assert [w["param"] for w in header["weights"]] == ["kernel", "bias", "kernel", "bias"]
    assert all(entries[w["entry"]].dtype == np.float32 for w in header["weights"])
    assert header["compile"]["loss"]["class_name"] == "SparseCategoricalCrossentropy"
    assert header["training"]["optimizer_iterations"] == 12


# -- the hostile review's findings (issue 10) ---------------------------------------------------

def as_float64_overflowing(entries, header):
    """The first weight as float64 1e300: a valid float64, but inf once it is float32."""
    header["weights"][0]["dtype"] = "float64"
    entries = dict(entries, weight_0000=np.full(entries["weight_0000"].shape, 1e300))
    return with_header(entries, header)


def test_weights_that_overflow_the_model_dtype_are_refused_on_load(trained, tmp_path):
    _, path = trained
    with pytest.raises(ModelFileError, match=r"conv2d.*'kernel'.*beyond the float32 range") as error:
        minicnn.load_model(rewrite(path, tmp_path / "huge.npz", as_float64_overflowing))
    assert "3.403e+38" in str(error.value)
    model = make_model()
    before = model.get_weights()
    with pytest.raises(ModelFileError, match="beyond the float32 range"):
        model.load_weights(tmp_path / "huge.npz")
    for got, expected in zip(model.get_weights(), before):   # nothing written
        np.testing.assert_array_equal(got, expected)


def test_set_weights_refuses_overflow_and_writes_nothing(trained):
    model, _ = trained
    before = model.get_weights()
    new = [w + 1 for w in before]
    new[-1] = np.full(new[-1].shape, -1e39)                  # the last layer's bias: float32 overflow
    with pytest.raises(ValueError, match=r"Dense '.*': weight 'bias' holds values beyond the float32 range"):
        model.set_weights(new)
    for got, expected in zip(model.get_weights(), before):   # not even the first layers changed
        np.testing.assert_array_equal(got, expected)
    dense = model.layers[-1]
    with pytest.raises(ValueError, match="'kernel' holds values beyond the float32 range"):
        dense.set_weights([np.full(dense.params["kernel"].shape, 1e300), dense.params["bias"]])
    np.testing.assert_array_equal(dense.get_weights()[0], before[-2])
    model64 = make_model(dtype="float64")
    model64.set_weights([np.full(w.shape, 1e300) for w in model64.get_weights()])   # fits float64
    assert model64.get_weights()[0].flat[0] == 1e300


@pytest.mark.parametrize("umask, expected", [(0o077, 0o600), (0o002, 0o664), (0o022, 0o644)])
def test_new_files_respect_the_umask_and_existing_files_keep_their_mode(tmp_path, umask, expected):
    model = make_model()
    previous = os.umask(umask)
    try:
        path = Path(model.save(tmp_path / "new.npz"))
        weights = Path(model.save_weights(tmp_path / "weights.npz"))
        assert (path.stat().st_mode & 0o777, weights.stat().st_mode & 0o777) == (expected, expected)
        os.chmod(path, 0o640)
        model.save(path)
        assert path.stat().st_mode & 0o777 == 0o640
    finally:
        os.umask(previous)


def test_stale_temporaries_of_the_same_target_are_removed_and_nothing_else(tmp_path):
    from minicnn.io import STALE_TEMPORARY_SECONDS

    model = make_model()
    old = time_ago = __import__("time").time() - STALE_TEMPORARY_SECONDS - 60
    planted = {
        ".model.npz.0123456789abcdef.tmp": old,     # ours, stale: removed
        ".model.npz.k3j_x9az.tmp": old,             # an older minicnn's (mkstemp) name, stale: removed
        ".model.npz.fedcba9876543210.tmp": None,    # ours but fresh (a concurrent save): kept
        ".other.npz.0123456789abcdef.tmp": old,     # another target's: kept
        ".model.npz.not-ours!.tmp": old,            # not the writer's pattern: kept
        "model.npz.0123456789abcdef.tmp": old,      # no leading dot: kept
    }
    for name, mtime in planted.items():
        (tmp_path / name).write_bytes(b"half a model")
        if mtime is not None:
            os.utime(tmp_path / name, (time_ago, mtime))
    model.save(tmp_path / "model.npz")
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted(["model.npz"] + [name for name in planted if name not in
                                           (".model.npz.0123456789abcdef.tmp", ".model.npz.k3j_x9az.tmp")])


def test_a_full_disk_names_the_file_being_written(trained, monkeypatch):
    import errno

    model, path = trained
    before = Path(path).read_bytes()

    def full_disk(handle, **entries):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(np, "savez", full_disk)
    for save in (model.save, model.save_weights):
        with pytest.raises(OSError, match="No space left on device") as error:
            save(path)
        assert error.value.errno == errno.ENOSPC and str(path) in str(error.value)
        assert Path(path).read_bytes() == before
        assert sorted(p.name for p in Path(path).parent.iterdir()) == ["model.npz"]


def test_huge_strings_from_files_and_code_make_bounded_messages(trained, tmp_path):
    _, path = trained
    huge = "x" * 10_000_000

    def rename_layer(entries, header):
        header["model"]["layers"][0]["config"]["name"] = huge
        header["weights"][0]["layer"] = huge

    def unknown_class(entries, header):
        header["model"]["layers"][0]["class_name"] = huge

    def unknown_argument(entries, header):
        header["model"]["layers"][0]["config"][huge] = 1

    for change in (rename_layer, unknown_class, unknown_argument):
        with pytest.raises(ModelFileError) as error:
            minicnn.load_model(rewrite(path, tmp_path / "huge.npz", change))
        assert len(str(error.value)) < 2500
    layer = Dense(3, name=huge, input_shape=(4,))
    with pytest.raises(ValueError) as error:
        layer.forward(np.zeros((2, 5), np.float32))
    assert len(str(error.value)) < 300 and "xxx..." in str(error.value)
    with pytest.raises(ValueError) as error:
        Dense(3, activation=huge)
    assert len(str(error.value)) < 400
    with pytest.raises(ValueError) as error:
        Sequential(name=huge).add(Dense(2, name="a")) or Sequential([Dense(2, name="a"), Dense(2, name="a")], name=huge)
    assert len(str(error.value)) < 300


@pytest.mark.parametrize("change, field", [
    (lambda h: h["model"]["layers"][0]["config"].update(input_shape=[6.5, 6, 1]), "input_shape"),
    (lambda h: h["model"]["layers"][0]["config"].update(input_shape=[True, 6, 1]), "input_shape"),
    (lambda h: h["model"].update(build_input_shape=[6.0, 6, 1]), "input_shape"),
    (lambda h: h["model"]["layers"][0]["config"].update(use_bias="yes"), "use_bias"),
    (lambda h: h["model"]["layers"][0]["config"].update(trainable=1), "trainable"),
    (lambda h: h["model"]["layers"][0]["config"].update(filters=3.0), "filters"),
    (lambda h: h["model"]["layers"][0]["config"]["kernel_initializer"]["config"].update(seed=1.5), "seed"),
    (lambda h: h["model"].update(name=5), "name"),
    (lambda h: h["compile"]["loss"]["config"].update(from_logits="yes"), "from_logits"),
    (lambda h: h["compile"]["loss"]["config"].update(name=7), "name"),
    (lambda h: h["compile"]["optimizer"].update(class_name="SGD", config={"nesterov": 1}), "nesterov"),
    (lambda h: h["compile"]["optimizer"]["config"].update(learning_rate=True), "learning_rate"),
    (lambda h: h["training"].update(epochs_seen=10 ** 30), "epochs_seen"),
    (lambda h: h["training"].update(epochs_seen=2.0), "epochs_seen"),
    (lambda h: h["training"].update(optimizer_iterations=10 ** 30), "optimizer_iterations"),
    (lambda h: h["training"].update(shuffle_seed=True), "shuffle_seed"),
])
def test_fields_of_the_wrong_type_are_refused(trained, tmp_path, change, field):
    _, path = trained
    with pytest.raises(ModelFileError, match=field):
        minicnn.load_model(rewrite(path, tmp_path / "typed.npz", lambda e, h: change(h)))


def test_layer_arguments_of_the_wrong_type_raise_instead_of_truncating():
    for bad in ((28.5, 28, 1), (True, 28, 1), (28, 28.0, 1)):
        with pytest.raises(ValueError, match="input_shape must be a tuple of positive integers"):
            Conv2D(2, 3, input_shape=bad)
    with pytest.raises(TypeError, match="use_bias must be True or False"):
        Dense(2, use_bias="no")
    with pytest.raises(TypeError, match="from_logits must be True or False"):
        minicnn.losses.SparseCategoricalCrossentropy(from_logits="yes")
    with pytest.raises(TypeError, match="seed must be an integer"):
        minicnn.initializers.GlorotUniform(seed=1.5)
    assert Conv2D(2, 3, input_shape=np.array([28, 28, 1])).declared_input_shape == (28, 28, 1)


def test_load_model_without_compile_never_reads_the_optimizer_state(trained, tmp_path):
    # The CLI only predicts: the optimizer's slots (two thirds of a trained Adam model's file)
    # need not be read. Damage the last byte of every optimizer entry's data: compile=False must
    # still load (the entries are never read), compile=True must notice (zip CRC).
    model, path = trained
    damaged = tmp_path / "damaged.npz"
    raw = bytearray(Path(path).read_bytes())
    with zipfile.ZipFile(path) as archive:
        members = [info for info in archive.infolist() if info.filename.startswith("optimizer_")]
        assert members and all(info.compress_type == zipfile.ZIP_STORED for info in members)
        for info in members:
            name_length, extra_length = np.frombuffer(raw, "<u2", 2, info.header_offset + 26)
            data_start = info.header_offset + 30 + int(name_length) + int(extra_length)
            raw[data_start + info.compress_size - 1] ^= 0xFF
    damaged.write_bytes(bytes(raw))
    x, _ = data(10, seed=3)
    loaded = minicnn.load_model(damaged, compile=False)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert not loaded.compiled
    with pytest.raises(ModelFileError, match="damaged or truncated"):
        minicnn.load_model(damaged)


def test_training_state_is_public_and_checked(trained):
    model, path = trained
    state = model.get_training_state()
    assert set(state) == {"shuffle_seed", "epochs_seen", "layer_generators", "minicnn_generator"}
    assert state["epochs_seen"] == 2
    assert state["layer_generators"] == {} and state["minicnn_generator"] is None   # no random layers
    assert minicnn.load_model(path).get_training_state() == state
    fresh = make_model()
    for bad, error in [({"shuffle_seed": 1.5, "epochs_seen": 1}, TypeError),
                       ({"shuffle_seed": None, "epochs_seen": -1}, ValueError),
                       ({"shuffle_seed": 2 ** 63, "epochs_seen": 1}, ValueError)]:
        with pytest.raises(error):
            fresh.set_training_state(bad)
    assert fresh.get_training_state()["shuffle_seed"] is None                        # nothing set
    assert fresh.get_training_state()["epochs_seen"] == 0
    fresh.set_training_state(state)
    assert fresh.get_training_state() == state


@pytest.mark.parametrize("copy_of", ["deepcopy", "pickle"])
def test_a_model_copied_between_a_training_forward_and_its_backward_carries_its_caches(copy_of):
    """Bug: the forward caches held the engine module, so deepcopy and pickle failed after any
    training forward the training plans did not clear (train_on_batch, a model with batch
    normalisation, a snapshot from a callback). The copy's backward now gives the original's."""
    minicnn.set_seed(0)
    model = Sequential([Conv2D(3, 3, padding="same", activation="relu", input_shape=(6, 6, 1)), MaxPooling2D(),
                        minicnn.BatchNormalization(), Flatten(), Dense(3, activation="softmax")])
    x = data(4)[0]
    y = model.forward(x, training=True)
    copied = copy.deepcopy(model) if copy_of == "deepcopy" else pickle.loads(pickle.dumps(model))
    dy = np.full(y.shape, 0.1, np.float32)
    assert copied.backward(dy).tobytes() == model.backward(dy).tobytes()
    for original, twin in zip(model.layers, copied.layers):
        assert all(original.grads[key].tobytes() == twin.grads[key].tobytes() for key in original.grads)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.train_on_batch(x, np.arange(4) % 3)
    assert copy.deepcopy(model).predict(x, verbose=0).tobytes() == model.predict(x, verbose=0).tobytes()


def test_a_look_alike_or_duplicate_entry_is_refused_before_anything_is_read(trained, tmp_path):
    """Bug: NumPy looks a plain member "weight_0000" up before "weight_0000.npy", so a file that
    held both passed every check on the .npy and loaded the other (an 88 KB file reached 2.1 GB,
    or a swapped kernel loaded silently); of two members with one name the last one won."""
    _, path = trained
    alias, twice = tmp_path / "alias.npz", tmp_path / "twice.npz"
    for target, extra_name in ((alias, "weight_0000"), (twice, "weight_0000.npy")):
        target.write_bytes(Path(path).read_bytes())
        with zipfile.ZipFile(target, "a") as archive, warnings.catch_warnings():
            warnings.simplefilter("ignore")   # "Duplicate name"
            buffer = io.BytesIO()
            np.save(buffer, np.full((3, 2, 1, 3), 9.0, np.float32))
            archive.writestr(extra_name, buffer.getvalue())
    with pytest.raises(ModelFileError, match=r"has an entry that is not a .npy array \('weight_0000'\)"):
        minicnn.load_model(alias)
    with pytest.raises(ModelFileError, match="has two entries with one name"):
        minicnn.load_model(twice)


def test_shapes_and_layer_counts_a_file_may_declare_are_bounded():
    """Bugs: an input shape (13, 1418980313362273202, 1) wrapped around in np.prod and loaded as
    a 110-parameter model; 40,000 layers (a 129 KB file) took 279 s to build."""
    with pytest.raises(ValueError, match=r"dimensions of at most 16,777,216"):
        Sequential([Flatten(input_shape=(13, 1418980313362273202, 1)), Dense(10)])
    with pytest.raises(ValueError, match=r"flattening \(16777216, 16777216, 16777216\) gives .* features"):
        Flatten().build((2**24, 2**24, 2**24))
    config = {"name": "many", "layers": [{"class_name": "ReLU", "config": {"name": f"r{i}"}} for i in range(4097)]}
    with pytest.raises(ValueError, match="4,097 layers, more than the 4,096 a model file may hold"):
        Sequential.from_config(config)
