"""Names the command line and the pages offer, without importing TensorFlow: architectures (with the
preprocessing each expects and its default input size) and preprocessing modes. `core.models` builds them."""

PREPROCESSING_MODES = ("raw", "unit", "symmetric", "caffe", "torch")

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
