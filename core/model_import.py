"""Importing a model the user already trained: ``.keras``, ``.h5`` or a SavedModel folder.

Loading is safe: the saved configuration is inspected first and a model holding a ``Lambda`` layer
(or any layer that would run stored Python code) is refused without being deserialised; then Keras
loads with ``safe_mode=True``. The user's model is wrapped so that the run's model takes pixels 0-255:
``pixels -> PixelPreprocessing(declared mode) -> [grey conversion] -> user model -> [softmax]``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

import keras
import numpy as np
from keras import layers

from core.models import PREPROCESSING_MODES, ModelError, PixelPreprocessing
from core.runs import SAVEDMODEL_DIR

UNSAFE_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda", "__lambda__"}  # __lambda__: a lambda activation
# A SavedModel op whose type contains one of these reaches outside the computation (files, datasets,
# Python, logs, checkpoints). Only the checkpoint's own save/restore functions may hold such ops.
UNSAFE_OP_PATTERNS = (
    "Dataset",
    "Iterator",
    "Reader",
    "Writer",
    "File",
    "TFRecord",
    "PyFunc",
    "Print",
    "Summary",
    "Save",
    "Restore",
    "Checkpoint",
    "Table",
    "Debug",
    "Immutable",
    "Socket",
    "Rpc",
    "Send",
    "Recv",
    "Shell",
)
# What restoring variables from the SavedModel's own checkpoint needs, and nothing more.
RESTORE_OPS = {
    "StatefulPartitionedCall",
    "PartitionedCall",
    "RestoreV2",
    "AssignVariableOp",
    "Identity",
    "IdentityN",
    "NoOp",
    "Const",
    "DisableCopyOnRead",
    "StringJoin",
    "ShardedFilename",
    "StaticRegexFullMatch",
    "Select",
}
MAX_CONFIG_BYTES = 64 * 2**20
# What a model file may unpack to. Checked from the archive's directory, the HDF5 dataset headers and the
# configuration before anything is extracted, decompressed or built, so a bomb is refused in milliseconds.
MAX_ARCHIVE_MEMBERS = 1000
MAX_MEMBER_BYTES = 2**30  # one member of a .keras archive, unpacked
MAX_TOTAL_BYTES = 2**30  # all members together, unpacked
MAX_COMPRESSION_RATIO = 100  # Keras stores .keras members uncompressed (1:1); weights barely compress
RATIO_FLOOR_BYTES = 2**20  # smaller members may compress as well as they like
MAX_WEIGHT_BYTES = 2**30  # every weight array of the model: declared in the HDF5 file or implied by the config
WEIGHTS_MEMBER = "model.weights.h5"
PREPROCESSING_FILE = "preprocessing.json"


class UnsafeModelError(ModelError):
    """The model file holds code that would run on load; it is refused."""


@keras.saving.register_keras_serializable(package="xai_dashboard")
class RGBToGrayscale(layers.Layer):
    """RGB (..., 3) -> one channel (..., 1) by the ITU-R 601 luma weights, for single-channel models."""

    is_input_adapter = True  # not a learned layer: explanations do not offer it as a target

    def call(self, inputs):
        weights = keras.ops.convert_to_tensor([0.299, 0.587, 0.114], dtype=inputs.dtype)
        return keras.ops.sum(inputs * weights, axis=-1, keepdims=True)

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], 1)


def _walk(config):
    if isinstance(config, dict):
        yield config
        for value in config.values():
            yield from _walk(value)
    elif isinstance(config, list):
        for value in config:
            yield from _walk(value)


def _size(n: float) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def check_archive(path: Path) -> None:
    """Refuses a ``.keras`` archive that would unpack to too much, reading only its directory.

    Raises:
        ModelError: not a zip archive; more than MAX_ARCHIVE_MEMBERS members; a member name that leaves
            the archive (absolute or ``..``); a member over MAX_MEMBER_BYTES or a total over
            MAX_TOTAL_BYTES unpacked; a member over 1 MiB compressed more than MAX_COMPRESSION_RATIO
            times. The message names the member and the limit.
    """
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise ModelError(f"{path.name} is not a readable Keras model file: {type(exc).__name__}: {exc}") from exc
    refused = f"{path.name} was refused before anything in it was unpacked:"
    if len(infos) > MAX_ARCHIVE_MEMBERS:
        raise ModelError(f"{refused} it holds {len(infos)} files; the limit is {MAX_ARCHIVE_MEMBERS}.")
    total = 0
    for info in infos:
        name = info.filename
        if name.startswith(("/", "\\")) or ".." in Path(name).parts:
            raise ModelError(f"{refused} its member {name!r} would unpack outside the archive's folder.")
        if info.file_size > MAX_MEMBER_BYTES:
            raise ModelError(
                f"{refused} its member {name} declares {_size(info.file_size)} unpacked; the limit is "
                f"{_size(MAX_MEMBER_BYTES)} per member (MAX_MEMBER_BYTES)."
            )
        if info.file_size > RATIO_FLOOR_BYTES and info.file_size > MAX_COMPRESSION_RATIO * max(info.compress_size, 1):
            raise ModelError(
                f"{refused} its member {name} unpacks from {_size(info.compress_size)} to {_size(info.file_size)}, "
                f"{info.file_size / max(info.compress_size, 1):,.0f} times its size; the limit is "
                f"{MAX_COMPRESSION_RATIO} times (MAX_COMPRESSION_RATIO): real weights barely compress."
            )
        total += info.file_size
    if total > MAX_TOTAL_BYTES:
        raise ModelError(
            f"{refused} its {len(infos)} files declare {_size(total)} unpacked together; the limit is "
            f"{_size(MAX_TOTAL_BYTES)} (MAX_TOTAL_BYTES)."
        )


def _h5_weight_bytes(source) -> tuple[int, str, int]:
    """(total bytes, largest dataset's name, its bytes) of every dataset an HDF5 file declares, read from
    the dataset headers only (an HDF5 file can declare a huge array in a few compressed chunks)."""
    import h5py

    found = {"total": 0, "name": "", "largest": 0}

    def visit(name, item):
        if isinstance(item, h5py.Dataset):
            size = int(np.prod(item.shape, dtype=np.float64)) * item.dtype.itemsize if item.shape else 0
            found["total"] += size
            if size > found["largest"]:
                found["name"], found["largest"] = name, size

    with h5py.File(source, "r") as handle:
        handle.visititems(visit)
    return found["total"], found["name"], found["largest"]


def check_weight_sizes(path: Path) -> None:
    """Refuses a model whose HDF5 weights declare more than MAX_WEIGHT_BYTES (a ``.h5`` file, or the
    weights member of a ``.keras`` archive, read through the archive without unpacking it to disk)."""
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                if WEIGHTS_MEMBER not in archive.namelist():
                    return
                with archive.open(WEIGHTS_MEMBER) as member:
                    total, name, largest = _h5_weight_bytes(member)
        else:
            total, name, largest = _h5_weight_bytes(path)
    except Exception as exc:  # h5py raises OSError, KeyError, ValueError... on damaged files
        raise ModelError(f"{path.name} is not a readable Keras model file: its weights cannot be read ({exc})") from exc
    if total > MAX_WEIGHT_BYTES:
        raise ModelError(
            f"{path.name} was refused before loading: its weights declare {_size(total)} (the largest, {name}, "
            f"{_size(largest)}); the limit is {_size(MAX_WEIGHT_BYTES)} (MAX_WEIGHT_BYTES)."
        )


def _positive_int(value) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def _declared_params(node: dict) -> int:
    """Weights a layer's configuration implies (Dense, convolutions, Embedding); 0 when it cannot tell."""
    config = node.get("config")
    if not isinstance(config, dict):
        return 0
    if node.get("class_name") == "Embedding":
        return (_positive_int(config.get("input_dim")) or 0) * (_positive_int(config.get("output_dim")) or 0)
    build = node.get("build_config")
    shape = build.get("input_shape") if isinstance(build, dict) else None
    inputs = _positive_int(shape[-1]) if isinstance(shape, list) and shape else None
    if inputs is None:
        return 0
    units, filters, kernel = config.get("units"), config.get("filters"), config.get("kernel_size")
    if _positive_int(units):
        return units * inputs
    if _positive_int(filters) and isinstance(kernel, list) and kernel and all(_positive_int(k) for k in kernel):
        return filters * inputs * int(np.prod(kernel))
    return 0


def check_declared_size(path: Path, config: dict) -> None:
    """Refuses a configuration whose layers imply more than MAX_WEIGHT_BYTES of float32 weights: Keras
    would allocate them while building the model, before reading a single stored weight."""
    try:
        sized = [
            (node.get("name") or node.get("config", {}).get("name"), _declared_params(node)) for node in _walk(config)
        ]
    except (RecursionError, AttributeError, TypeError, OverflowError):
        return  # check_safe reports what cannot be walked
    total = 4 * sum(n for _, n in sized)
    if total > MAX_WEIGHT_BYTES:
        name, largest = max(sized, key=lambda item: item[1])
        raise ModelError(
            f"{path.name} was refused before loading: its configuration implies {_size(total)} of weights "
            f"(layer {name!r} alone {_size(4 * largest)}); the limit is {_size(MAX_WEIGHT_BYTES)} (MAX_WEIGHT_BYTES)."
        )


def saved_config(path: Path) -> dict | None:
    """The model configuration stored in a .keras or .h5 file, read without deserialising anything."""
    try:
        if path.suffix == ".keras":
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo("config.json")
                if info.file_size > MAX_CONFIG_BYTES:
                    raise ModelError(
                        f"{path.name}: its config.json unpacks to {info.file_size} bytes; refused as too large"
                    )
                return json.loads(archive.read(info))
        if path.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get("model_config")
            if raw is None:
                raise ModelError(f"{path.name} holds weights only (no model configuration): save the whole model")
            return json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    except ModelError:
        raise
    except (zipfile.BadZipFile, KeyError, OSError, ValueError, TypeError, RecursionError) as exc:
        raise ModelError(f"{path.name} is not a readable Keras model file: {type(exc).__name__}: {exc}") from exc
    return None


def _is_serialized_function(node: dict) -> bool:
    """Keras stores a Python function (a lambda activation, say) as {"value": [bytecode, defaults, closure]}."""
    import base64
    import binascii

    value = node.get("value")
    if not (isinstance(value, list) and len(value) == 3 and isinstance(value[0], str) and len(value[0]) > 16):
        return False
    try:
        base64.b64decode(value[0], validate=False)
    except (binascii.Error, ValueError):
        return False
    return True


def check_safe(path: Path) -> None:
    """Refuses a model file that would unpack to too much (see `check_archive`, `check_weight_sizes`,
    `check_declared_size`) or whose configuration holds layers or functions that would run stored code
    on load. Reads the archive's directory, the configuration and the HDF5 headers only."""
    if path.suffix == ".keras":
        check_archive(path)
    config = saved_config(path)
    if config is None:
        return
    check_declared_size(path, config)
    check_weight_sizes(path)
    try:
        nodes = list(_walk(config))
        unsafe = sorted({node.get("class_name") for node in nodes if node.get("class_name") in UNSAFE_LAYERS})
        if any(_is_serialized_function(node) for node in nodes):
            unsafe.append("__lambda__ (a Python function)")
    except RecursionError as exc:
        raise ModelError(f"{path.name}: its configuration is nested too deeply to check; refused") from exc
    if unsafe:
        raise UnsafeModelError(
            f"{path.name} contains {', '.join(unsafe)} layer(s), which run Python code stored in the file "
            "when the model is loaded. It was refused and nothing in it was executed. Rebuild the model "
            "without Lambda layers (use built-in or registered custom layers) and save it again."
        )


def _read_savedmodel(path: Path):
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise ModelError(f"{path} holds no readable saved_model.pb: {exc}") from exc
    return proto


def _called_functions(nodes) -> set[str]:
    """Names of the functions that graph nodes call (through any function-valued attribute)."""
    names = set()
    for node in nodes:
        for value in node.attr.values():
            if value.func.name:
                names.add(value.func.name)
            names.update(f.name for f in value.list.func)
    return names


def savedmodel_ops(path: Path) -> dict[str, set[str]]:
    """Op types of a SavedModel, read from saved_model.pb without running anything, in three groups:
    ``restore`` (run when loading: reads the variables), ``save`` (run only when saving: never, here)
    and ``model`` (everything else, the computation itself)."""
    proto = _read_savedmodel(path)
    groups = {"model": set(), "restore": set(), "save": set()}
    for meta_graph in proto.meta_graphs:
        functions = {f.signature.name: f for f in meta_graph.graph_def.library.function}
        nodes = {n.name: n for n in meta_graph.graph_def.node}
        saver = meta_graph.saver_def
        save_node, restore_node = saver.save_tensor_name.split(":")[0], saver.restore_op_name.split(":")[0]

        def closure(start: set[str], functions=functions) -> set[str]:
            seen, todo = set(), list(start)
            while todo:
                name = todo.pop()
                if name in seen or name not in functions:
                    continue
                seen.add(name)
                todo.extend(_called_functions(functions[name].node_def))
            return seen

        main = [n for name, n in nodes.items() if name not in (save_node, restore_node)]
        model_fns = closure(_called_functions(main))
        restore_fns = closure(_called_functions([nodes[restore_node]] if restore_node in nodes else [])) - model_fns
        save_fns = (
            closure(_called_functions([nodes[save_node]] if save_node in nodes else [])) - model_fns - restore_fns
        )
        groups["model"].update(n.op for n in main)
        for group, names in (("restore", restore_fns), ("save", save_fns)):
            groups[group].update(n.op for name in names for n in functions[name].node_def)
        for name in set(functions) - restore_fns - save_fns:  # reached from the model, or from nowhere
            groups["model"].update(n.op for n in functions[name].node_def)
        if restore_node in nodes:
            groups["restore"].add(nodes[restore_node].op)
    return groups


def check_safe_savedmodel(path: Path) -> None:
    """Refuses a SavedModel whose computation reaches outside itself, or whose variable restoring does
    more than read its own checkpoint."""
    ops = savedmodel_ops(path)
    unsafe = sorted(op for op in ops["model"] if any(p in op for p in UNSAFE_OP_PATTERNS))
    unsafe += sorted(ops["restore"] - RESTORE_OPS)
    if unsafe:
        raise UnsafeModelError(
            f"The SavedModel at {path} contains ops that reach outside the computation (files, datasets, "
            f"Python, logs: {', '.join(unsafe)}). It was refused and nothing in it was run."
        )


MAX_SAVEDMODEL_BYTES = 2 * 2**30  # a SavedModel folder, all files together
MAX_SAVEDMODEL_FILES = 10_000


def check_savedmodel_folder(path: Path) -> None:
    """Refuses a SavedModel folder holding links, pipes or devices (copying one could read forever or
    outside the folder), or more than MAX_SAVEDMODEL_FILES files or MAX_SAVEDMODEL_BYTES in all."""
    total, count = 0, 0
    for folder, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            item = Path(folder) / name
            info = item.lstat()
            if stat.S_ISLNK(info.st_mode):
                raise ModelError(f"The SavedModel at {path} contains a symbolic link ({item}); refused.")
            if not (stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode)):
                raise ModelError(f"The SavedModel at {path} contains {item}, which is not a regular file; refused.")
            if stat.S_ISREG(info.st_mode):
                total, count = total + info.st_size, count + 1
        if count > MAX_SAVEDMODEL_FILES or total > MAX_SAVEDMODEL_BYTES:
            raise ModelError(
                f"The SavedModel at {path} holds more than {MAX_SAVEDMODEL_FILES} files or "
                f"{_size(MAX_SAVEDMODEL_BYTES)} (MAX_SAVEDMODEL_FILES, MAX_SAVEDMODEL_BYTES); refused."
            )


def _load_savedmodel(path: Path):
    errors = []
    for endpoint in ("serve", "serving_default"):  # Keras' export() / tf.saved_model.save()
        try:
            return layers.TFSMLayer(str(path), call_endpoint=endpoint, name="savedmodel")
        except Exception as exc:
            errors.append(f"{endpoint}: {exc}")
    raise ModelError(f"The SavedModel at {path} cannot be loaded: {'; '.join(errors)}")


def load_user_model(path, workdir=None) -> keras.Model:
    """Loads ``.keras``/``.h5`` safely, or a SavedModel folder as an inference-only layer.

    Everything is checked on the user's files first, so every message names the user's path. With
    ``workdir`` (the run folder) a SavedModel is then copied there, checked again and loaded from the
    copy, so that the run does not depend on the original location.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"No model at {path}")
    if path.is_dir():
        if not (path / "saved_model.pb").is_file():
            raise ModelError(f"{path} is a folder but not a SavedModel (it has no saved_model.pb)")
        check_savedmodel_folder(path)
        check_safe_savedmodel(path)
        if workdir is None:
            return _load_savedmodel(path)
        target = Path(workdir) / SAVEDMODEL_DIR
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(path, target, symlinks=True)
        try:
            check_safe_savedmodel(target)  # the files that will be loaded: the copy
            return _load_savedmodel(target)
        except ModelError as exc:
            raise type(exc)(str(exc).replace(str(target), str(path))) from exc
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ModelError(f"Expected a .keras or .h5 file or a SavedModel folder. Received: {path.name}")
    if not path.is_file():
        raise ModelError(f"{path} is not a regular file.")
    check_safe(path)
    try:
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except Exception as exc:
        raise ModelError(f"{path.name} cannot be loaded: {type(exc).__name__}: {exc}") from exc


def _signature_shape(layer) -> tuple:
    """Input shape of a TFSMLayer's serving signature."""
    fn = layer.call_endpoint_fn
    if not hasattr(fn, "structured_input_signature"):  # a restored tf.function: look at its first trace
        fn = fn.concrete_functions[0]
    args, kwargs = fn.structured_input_signature
    specs = list(args) + list(kwargs.values())
    if len(specs) != 1:
        raise ModelError(f"Expected a SavedModel with one image input. Received {len(specs)} inputs")
    return tuple(specs[0].shape)


def wrap_for_pixels(user_model, preprocess: str, num_classes: int | None = None) -> keras.Model:
    """The run's model: pixels 0-255 (H, W, 3) -> declared preprocessing -> user model -> probabilities.

    Raises:
        ModelError: unknown preprocessing, an input that is not (H, W, 1|3) with a fixed size, an output
            that is not (C,) or a class count that does not match ``num_classes``.
    """
    if preprocess not in PREPROCESSING_MODES:
        raise ModelError(f"Unknown preprocessing. Expected one of {PREPROCESSING_MODES}. Received: {preprocess!r}")
    if isinstance(user_model, keras.Model):
        shape = tuple(user_model.inputs[0].shape)
    else:
        shape = _signature_shape(user_model)
    if len(shape) != 4 or shape[1] is None or shape[2] is None or shape[3] not in (1, 3):
        raise ModelError(
            f"Expected a model taking images of a fixed size (N, H, W, 1 or 3). Received input shape {shape}"
        )
    height, width, channels = (int(v) for v in shape[1:])
    inputs = keras.Input(shape=(height, width, 3), name="pixels")
    x = PixelPreprocessing(preprocess, name="preprocessing")(inputs)
    if channels == 1:
        x = RGBToGrayscale(name="to_grayscale")(x)
    outputs = user_model(x)
    if isinstance(outputs, dict):
        outputs = list(outputs.values())
    if isinstance(outputs, (list, tuple)):
        if len(outputs) != 1:
            raise ModelError(f"Expected a model with one output (class scores). Received {len(outputs)} outputs")
        outputs = outputs[0]
    if len(outputs.shape) != 2:
        raise ModelError(f"Expected an output of shape (N, classes). Received {tuple(outputs.shape)}")
    units = int(outputs.shape[-1])
    classes = 2 if units == 1 else units
    if num_classes is not None and classes != num_classes:
        raise ModelError(
            f"The model predicts {classes} classes but the data has {num_classes}. "
            "Check --class-names or the dataset folder."
        )
    if _outputs_logits(user_model, keras.Model(inputs, outputs), units):
        outputs = layers.Activation("sigmoid" if units == 1 else "softmax", name="predictions")(outputs)
    return keras.Model(inputs, outputs, name="imported_classifier")


def _outputs_logits(user_model, pixels_model, units: int) -> bool:
    """True when the model outputs raw scores rather than probabilities.

    The last layer's declared activation decides when there is one; otherwise (a SavedModel, a last
    layer without activation) a probe batch decides: values outside [0, 1], or rows of several classes
    that do not sum to 1, are logits.
    """
    last = user_model.layers[-1] if isinstance(user_model, keras.Model) and user_model.layers else None
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if activation in ("softmax", "sigmoid"):
        return False
    if activation == "linear":
        return True
    height, width = (int(v) for v in pixels_model.inputs[0].shape[1:3])
    rng = np.random.default_rng(0)
    probe = np.concatenate(
        [
            rng.uniform(0, 255, (4, height, width, 3)),
            np.zeros((1, height, width, 3)),
            np.full((1, height, width, 3), 255.0),
        ]
    ).astype(np.float32)
    values = np.asarray(pixels_model(probe, training=False), dtype=np.float64)
    if values.min() < -1e-6 or values.max() > 1 + 1e-6:
        return True
    return units > 1 and bool(np.abs(values.sum(axis=1) - 1.0).max() > 1e-3)


def load_run_model(run_dir) -> keras.Model:
    """The model of a run folder: ``model.keras`` (safe mode), or for an imported SavedModel the
    checked SavedModel wrapped again with the run's preprocessing (never deserialised by Keras' unsafe path)."""
    from core.models import load_model

    run_dir = Path(run_dir)
    savedmodel = run_dir / SAVEDMODEL_DIR
    if savedmodel.is_dir():
        try:
            settings = json.loads((run_dir / PREPROCESSING_FILE).read_text())
            preprocess, num_classes = settings["preprocess"], settings.get("num_classes")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelError(f"Run {run_dir.name}: its {PREPROCESSING_FILE} is missing or unreadable ({exc})") from exc
        return wrap_for_pixels(load_user_model(savedmodel), preprocess, num_classes)
    return load_model(run_dir / "model.keras")


def import_run(*args, **kwargs):
    """Moved to `core.importing.import_run`; kept here until every caller imports it from there."""
    from core.importing import import_run as moved

    return moved(*args, **kwargs)
