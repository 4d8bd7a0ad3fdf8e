"""IDX files (the format of MNIST and Fashion-MNIST, also read by Keras' loaders) -> arrays -> image folders."""

from __future__ import annotations

import gzip
import os
import stat
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "t-shirt_top",
    "trouser",
    "pullover",
    "dress",
    "coat",
    "sandal",
    "shirt",
    "sneaker",
    "bag",
    "ankle_boot",
)
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxError(ValueError):
    """A file is not a valid IDX file; the message says why."""


MAX_IDX_BYTES = 2**30  # the data an IDX header may declare (Fashion-MNIST's largest file holds 47 MB)


def read_idx(path) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed) into an array of its declared type and shape.

    Only a regular file is opened (a FIFO would block), and no more than the header declares is read or
    decompressed, so a gzip bomb or a header declaring more than MAX_IDX_BYTES is refused early.
    """
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as exc:
        raise IdxError(f"{path} cannot be read: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise IdxError(f"{path} is not a regular file")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            magic = handle.read(4)
            if len(magic) < 4 or magic[0] != 0 or magic[1] != 0:
                raise IdxError(f"{path} is not an IDX file: it must start with two zero bytes")
            type_code, ndim = magic[2], magic[3]
            if type_code not in _DTYPES:
                raise IdxError(f"{path} has unknown IDX data type 0x{type_code:02x}")
            dims = handle.read(4 * ndim)
            if len(dims) < 4 * ndim:
                raise IdxError(f"{path} is truncated inside its header")
            shape = struct.unpack(f">{ndim}I", dims)
            dtype = np.dtype(_DTYPES[type_code])
            expected = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
            if expected > MAX_IDX_BYTES:
                raise IdxError(
                    f"{path} declares shape {shape} ({expected / 2**20:.0f} MiB); the limit is "
                    f"{MAX_IDX_BYTES / 2**20:.0f} MiB (MAX_IDX_BYTES)"
                )
            raw = handle.read(expected + 1)  # one byte more: trailing data is an error too
    except (OSError, EOFError, zlib.error) as exc:
        raise IdxError(f"{path} cannot be read: {exc}") from exc
    if len(raw) != expected:
        held = f"{len(raw)} bytes" if len(raw) <= expected else "more"
        raise IdxError(f"{path} declares shape {shape} ({expected} bytes) but holds {held} of data")
    return np.frombuffer(raw, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def export_image_folder(
    images: np.ndarray,
    labels: np.ndarray,
    class_names,
    root,
    split: str | None = None,
    limit_per_class: int | None = None,
) -> Path:
    """Writes images (N, H, W) or (N, H, W, 3) as PNG files into ``root/[split/]<class>/NNNNN.png``."""
    root = Path(root)
    if len(images) != len(labels):
        raise ValueError(f"{len(images)} images but {len(labels)} labels")
    written = dict.fromkeys(range(len(class_names)), 0)
    for i, (image, label) in enumerate(zip(images, labels)):
        label = int(label)
        if limit_per_class is not None and written[label] >= limit_per_class:
            continue
        folder = root / split / class_names[label] if split else root / class_names[label]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.asarray(image, dtype=np.uint8)).save(folder / f"{i:05d}.png")
        written[label] += 1
    return root


def export_fashion_mnist(root, per_class_train: int = 100, per_class_test: int = 20, source=FASHION_MNIST_DIR) -> Path:
    """Exports a class-balanced subset of Fashion-MNIST (Debian's dataset-fashion-mnist) as train/test folders."""
    source = Path(source)
    parts = {
        "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", per_class_train),
        "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", per_class_test),
    }
    for split, (images_file, labels_file, limit) in parts.items():
        images, labels = read_idx(source / images_file), read_idx(source / labels_file)
        export_image_folder(images, labels, FASHION_MNIST_CLASSES, root, split, limit)
    return Path(root)
