"""Importing a model the user already trained: ``.keras``, ``.h5`` or a SavedModel folder.

Loading is safe: the saved configuration is inspected first and a model holding a ``Lambda`` layer
(or any layer that would run stored Python code) is refused without being deserialised; then Keras
loads with ``safe_mode=True``. The user's model is wrapped so that the run's model takes pixels 0-255:
``pixels -> PixelPreprocessing(declared mode) -> [grey conversion] -> user model -> [softmax]``.
"""

from __future__ import annotations

import json
import shutil
import zipfile
from pathlib import Path

import keras
from keras import layers

from core.models import PREPROCESSING_MODES, ModelError, PixelPreprocessing

UNSAFE_LAYERS = {"Lambda", "TFOpLambda", "SlicingOpLambda"}
# Graph ops of a SavedModel that reach outside the computation (files, Python). Variables are restored
# with RestoreV2, which is not listed; nothing legitimate in an image classifier needs these.
UNSAFE_OPS = {
    "WriteFile", "ReadFile", "MatchingFiles", "PyFunc", "PyFuncStateless", "EagerPyFunc", "PrintV2",
    "ImmutableConst", "DebugIdentityV2", "DebugNumericSummaryV2",
}
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
                return json.loads(archive.read("config.json"))
        if path.suffix in (".h5", ".hdf5"):
            import h5py

            with h5py.File(path, "r") as handle:
                raw = handle.attrs.get("model_config")
            if raw is None:
                raise ModelError(f"{path.name} holds weights only (no model configuration): save the whole model")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except (zipfile.BadZipFile, KeyError, OSError, ValueError) as exc:
        if isinstance(exc, ModelError):
            raise
        raise ModelError(f"{path.name} is not a readable Keras model file: {exc}") from exc
    return None


def check_safe(path: Path) -> None:
    """Refuses a model whose configuration holds layers that would run stored code on load."""
    config = saved_config(path)
    if config is None:
        return
    unsafe = sorted({node.get("class_name") for node in _walk(config) if node.get("class_name") in UNSAFE_LAYERS})
    if unsafe:
        raise UnsafeModelError(
            f"{path.name} contains {', '.join(unsafe)} layer(s), which run Python code stored in the file "
            "when the model is loaded. It was refused and nothing in it was executed. Rebuild the model "
            "without Lambda layers (use built-in or registered custom layers) and save it again."
        )


def savedmodel_ops(path: Path) -> set[str]:
    """Every op type in a SavedModel's graphs and functions, read from saved_model.pb (nothing is run)."""
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    try:
        proto.ParseFromString((Path(path) / "saved_model.pb").read_bytes())
    except Exception as exc:
        raise ModelError(f"{path} holds no readable saved_model.pb: {exc}") from exc
    ops = set()
    for meta_graph in proto.meta_graphs:
        ops.update(node.op for node in meta_graph.graph_def.node)
        for function in meta_graph.graph_def.library.function:
            ops.update(node.op for node in function.node_def)
    return ops


def check_safe_savedmodel(path: Path) -> None:
    unsafe = sorted(savedmodel_ops(path) & UNSAFE_OPS)
    if unsafe:
        raise UnsafeModelError(
            f"The SavedModel at {path} contains ops that read or write files or call Python ({', '.join(unsafe)}). "
            "It was refused and nothing in it was run."
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
        check_safe_savedmodel(path)
        if workdir is not None:
            target = Path(workdir) / SAVEDMODEL_DIR
            if target.exists():
                shutil.rmtree(target)
            shutil.copytree(path, target)
            path = target
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
        if len(outputs) != 1:
            raise ModelError(f"Expected a model with one output. Received outputs {sorted(outputs)}")
        outputs = next(iter(outputs.values()))
    if len(outputs.shape) != 2:
        raise ModelError(f"Expected an output of shape (N, classes). Received {tuple(outputs.shape)}")
    units = int(outputs.shape[-1])
    classes = 2 if units == 1 else units
    if num_classes is not None and classes != num_classes:
        raise ModelError(
            f"The model predicts {classes} classes but the data has {num_classes}. "
            "Check --class-names or the dataset folder."
        )
    last = user_model.layers[-1] if isinstance(user_model, keras.Model) and user_model.layers else None
    activation = getattr(getattr(last, "activation", None), "__name__", None)
    if units > 1 and activation == "linear":
        outputs = layers.Activation("softmax", name="predictions")(outputs)  # the model ends in logits
    return keras.Model(inputs, outputs, name="imported_classifier")


def load_run_model(run_dir) -> keras.Model:
    """The model of a run folder: ``model.keras`` (safe mode), or for an imported SavedModel the
    checked SavedModel wrapped again with the run's preprocessing (never deserialised by Keras' unsafe path)."""
    from core.models import load_model

    run_dir = Path(run_dir)
    savedmodel = run_dir / SAVEDMODEL_DIR
    if savedmodel.is_dir():
        settings = json.loads((run_dir / PREPROCESSING_FILE).read_text())
        return wrap_for_pixels(load_user_model(savedmodel), settings["preprocess"], settings.get("num_classes"))
    return load_model(run_dir / "model.keras")
