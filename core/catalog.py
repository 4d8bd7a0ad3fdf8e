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
