"""Names the command line and the pages offer, without importing TensorFlow: architectures (with the
preprocessing each expects and its default input size) and preprocessing modes. `core.models` builds them."""

PREPROCESSING_DESCRIPTIONS = {
    "raw": "pixels 0-255 as they are",
    "unit": "pixels / 255 (0-1)",
    "symmetric": "pixels / 127.5 - 1 (-1..1)",
    "caffe": "BGR, ImageNet mean subtracted (Keras ResNet50, VGG16)",
    "torch": "0-1, then ImageNet mean/std per channel (PyTorch style)",
}
PREPROCESSING_MODES = tuple(PREPROCESSING_DESCRIPTIONS)

# name: (Keras application class or None for our own, preprocessing, default input size)
# Keras' EfficientNets rescale and normalise pixels 0-255 themselves (preprocessing 'raw');
# ResNet50 and VGG16 expect 'caffe' inputs, MobileNetV2 expects -1..1.
ARCHITECTURE_SPECS = {
    "efficientnetb0": ("EfficientNetB0", "raw", 224),
    "efficientnetb1": ("EfficientNetB1", "raw", 240),
    "efficientnetb2": ("EfficientNetB2", "raw", 260),
    "efficientnetb3": ("EfficientNetB3", "raw", 300),
    "resnet50": ("ResNet50", "caffe", 224),
    "vgg16": ("VGG16", "caffe", 224),
    "mobilenetv2": ("MobileNetV2", "symmetric", 224),
    "compact_cnn": (None, "unit", 64),
}
ARCHITECTURE_NAMES = tuple(ARCHITECTURE_SPECS)

# Where Keras keeps downloaded weights ($KERAS_HOME or ~/.keras, then models/), and the no-top file name
# each application asks for: read from keras/src/applications/*.py (Keras 3).
MOBILENET_V2_SIZES = (96, 128, 160, 192, 224)


def imagenet_weights_file(arch: str, image_size: int | None = None) -> str | None:
    """The file name Keras looks for in its models cache for ``arch``'s ImageNet weights without the
    top (None for an architecture without pre-trained weights)."""
    keras_name = ARCHITECTURE_SPECS.get(arch, (None,))[0]
    if keras_name is None:
        return None
    if arch.startswith("efficientnet"):
        return f"{arch}_notop.h5"
    if arch in ("resnet50", "vgg16"):
        return f"{arch}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    if arch == "mobilenetv2":
        rows = image_size if image_size in MOBILENET_V2_SIZES else 224
        return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5"
    return None


def keras_models_dirs() -> list:
    """The folders Keras reads cached weights from, in its own order: $KERAS_HOME (or ~/.keras, or
    /tmp/.keras when that is not writable), each with ``models/``."""
    import os
    from pathlib import Path

    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    return [Path(home) / "models", Path("/tmp/.keras/models")]


def imagenet_weights_status(arch: str, image_size: int | None = None) -> tuple[bool, str]:
    """Whether ``arch``'s ImageNet weights are already on this machine (nothing is downloaded).

    Returns:
        ``(available, message)``: True with the file's path, or False with what to do.
    """
    file_name = imagenet_weights_file(arch, image_size)
    if file_name is None:
        return False, f"{arch} has no pre-trained ImageNet weights: train it from scratch (weights none)."
    for folder in keras_models_dirs():
        path = folder / file_name
        if path.is_file() and path.stat().st_size > 0:
            return True, f"ImageNet weights for {arch} found in {path}."
    return False, (
        f"ImageNet weights for {arch} are not on this machine ({file_name} is not in {keras_models_dirs()[0]}). "
        "Training would download them (internet needed); offline, copy the file there or use weights none."
    )
