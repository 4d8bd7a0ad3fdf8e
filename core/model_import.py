"""Importing a model the user already trained: ``.keras``, ``.h5`` or a SavedModel folder.

Loading is safe: the saved configuration is inspected first and a model holding a ``Lambda`` layer
(or any layer that would run stored Python code) is refused without being deserialised; then Keras
loads with ``safe_mode=True``. The user's model is wrapped so that the run's model takes pixels 0-255:
``pixels -> PixelPreprocessing(declared mode) -> [grey conversion] -> user model -> [softmax]``.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import keras
import numpy as np
from keras import layers

from core.models import PREPROCESSING_MODES, ModelError, PixelPreprocessing

if TYPE_CHECKING:
    from core.runs import Run

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
SAVEDMODEL_DIR = "savedmodel"
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
    """Refuses a model whose configuration holds layers or functions that would run stored code on load."""
    config = saved_config(path)
    if config is None:
        return
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


def load_user_model(path, workdir=None) -> keras.Model:
    """Loads ``.keras``/``.h5`` safely, or a SavedModel folder as an inference-only layer.

    A SavedModel is copied into ``workdir`` (the run folder) so that the run does not depend on the
    original location.
    """
    path = Path(path)
    if not path.exists():
        raise ModelError(f"No model at {path}")
    if path.is_dir():
        if not (path / "saved_model.pb").exists():
            raise ModelError(f"{path} is a folder but not a SavedModel (it has no saved_model.pb)")
        if workdir is not None:
            target = Path(workdir) / SAVEDMODEL_DIR
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(path, target, symlinks=False)
            path = target
        check_safe_savedmodel(path)  # the files that will be loaded: the copy, when there is one
        errors = []
        for endpoint in ("serve", "serving_default"):  # Keras' export() / tf.saved_model.save()
            try:
                return layers.TFSMLayer(str(path), call_endpoint=endpoint, name="savedmodel")
            except Exception as exc:
                errors.append(f"{endpoint}: {exc}")
        raise ModelError(f"The SavedModel at {path} cannot be loaded: {'; '.join(errors)}")
    if path.suffix not in (".keras", ".h5", ".hdf5"):
        raise ModelError(f"Expected a .keras or .h5 file or a SavedModel folder. Received: {path.name}")
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


def import_run(
    workspace, model_path, data_dir, preprocess: str, class_names=None, name: str | None = None, seed: int = 0
) -> Run:
    """Creates a run from a model the user trained: safe load, shape/class checks, evaluation on the test split.

    ``class_names`` gives the model's output order; by default the dataset's class folders, sorted.
    """
    from core import data as data_lib
    from core import runs, system
    from core.models import input_size
    from core.training import evaluate, save_model_atomic, save_splits

    index = data_lib.scan_dataset(data_dir, seed=seed)
    if class_names:
        class_names = [c.strip() for c in class_names]
        if sorted(class_names) != sorted(index.class_names):
            raise ValueError(
                f"--class-names {class_names} do not match the dataset's class folders {index.class_names}"
            )
    else:
        class_names = index.class_names
    meta = {
        "name": name or f"imported-{Path(model_path).stem}",
        "source": "imported",
        "imported_from": str(Path(model_path).resolve()),
        "dataset": str(Path(data_dir).resolve()),
        "class_names": list(class_names),
        "architecture": "imported",
        "preprocessing": preprocess,
        "seed": seed,
        "library_versions": system.library_versions(),
        "split_counts": {s: int((index.records["split"] == s).sum()) for s in data_lib.SPLITS},
    }
    run = runs.create_run(workspace, meta["name"], meta)
    save_splits(run, index)
    started = time.monotonic()
    try:
        model = wrap_for_pixels(load_user_model(model_path, workdir=run.path), preprocess, len(class_names))
        run = runs.update_run(run, input_size=list(input_size(model)))
        if (run.path / SAVEDMODEL_DIR).is_dir():  # rebuilt around the SavedModel on load (see load_run_model)
            runs.atomic_write_json(
                run.file(PREPROCESSING_FILE), {"preprocess": preprocess, "num_classes": len(class_names)}
            )
        else:
            save_model_atomic(model, run.model_path)
        metrics = evaluate(run, model=model, index=index)
        return runs.update_run(
            run,
            status=runs.COMPLETE,
            finished_at=runs.utc_now(),
            durations={"total_seconds": round(time.monotonic() - started, 2)},
            test_accuracy=metrics["accuracy"],
            roc_auc_macro=metrics["roc_auc_macro"],
        )
    except BaseException as exc:
        runs.mark_stopped(run, f"{type(exc).__name__}: {exc}")
        if isinstance(exc, (ModelError, data_lib.DatasetError, data_lib.ImageError)) or not isinstance(exc, Exception):
            raise
        raise ModelError(f"The model could not be imported: {type(exc).__name__}: {exc}") from exc
