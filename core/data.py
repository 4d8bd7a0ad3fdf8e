"""Image folders: safe decoding, scanning into split/class file lists, summaries.

Two layouts are understood:
    DIR/{train,val|valid|validation,test}/<class>/...   splits given on disk
    DIR/<class>/...                                      split here, seeded and stratified
Files in nested sub-folders of a class belong to that class. Bad files are skipped and listed with
the reason; they never stop a scan. This module does not import TensorFlow.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
MAX_IMAGE_PIXELS = 40_000_000  # about 6,300 x 6,300: anything larger is refused as a likely bomb
MAX_UPLOAD_BYTES = 50 * 1024 * 1024


class ImageError(ValueError):
    """An image cannot be read or is not acceptable; the message says why."""


class DatasetError(ValueError):
    """A folder is not a usable dataset; the message says what was found."""


# ---------------------------------------------------------------------------------------------------
# Decoding


def _file_kind(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISFIFO, "a named pipe (FIFO)"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def _check_regular_file(path) -> None:
    """Refuses, before anything opens it, a path that is not a non-empty regular file (links followed).

    Opening a FIFO would block and a device can be endless, so only ``stat`` is used here.
    """
    try:
        info = os.stat(path)
    except OSError as exc:
        raise ImageError(f"The file cannot be read: {exc.strerror or exc}.") from exc
    if not stat.S_ISREG(info.st_mode):
        raise ImageError(f"Not a regular file: it is {_file_kind(info.st_mode)}.")
    if info.st_size == 0:
        raise ImageError("The file is empty (0 bytes).")


def _open_checked(source) -> Image.Image:
    """Opens an image lazily and refuses what is not an image, empty, or too large to decode."""
    if isinstance(source, (bytes, bytearray)):
        if len(source) == 0:
            raise ImageError("The file is empty (0 bytes).")
        if len(source) > MAX_UPLOAD_BYTES:
            raise ImageError(
                f"The file is {len(source) / 2**20:.1f} MiB; the limit is {MAX_UPLOAD_BYTES / 2**20:.0f} MiB."
            )
        source = io.BytesIO(source)
    else:
        _check_regular_file(source)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"The image is too large to decode safely (decompression bomb?): {exc}") from exc
    except UnidentifiedImageError as exc:
        raise ImageError("The file is not an image that Pillow can read.") from exc
    except Exception as exc:  # Pillow's decoders raise OSError, ValueError, SyntaxError, struct.error...
        raise ImageError(f"The image cannot be opened: {type(exc).__name__}: {exc}") from exc
    width, height = image.size
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageError(
            f"The image is {width}x{height} pixels ({width * height / 1e6:.0f} megapixels); the limit is "
            f"{MAX_IMAGE_PIXELS / 1e6:.0f} megapixels (a decompression bomb is refused)."
        )
    if width < 1 or height < 1:
        raise ImageError(f"The image has no pixels ({width}x{height}).")
    return image


def to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode (L, LA, P, RGB, RGBA, CMYK, I;16, I, F) -> RGB, EXIF orientation applied."""
    image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        # The same stored value always maps to the same grey: 16-bit ranges scale by 255/65535; 32-bit
        # integer or float images already within 0-255 are kept as they are.
        array = np.asarray(image, dtype=np.float64)
        if image.mode.startswith("I;16") or array.max() > 255:
            array = array * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.round(array), 0, 255).astype(np.uint8), mode="L")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(source, size: tuple[int, int] | None = None) -> np.ndarray:
    """Decodes a path or bytes into uint8 RGB (H, W, 3), resized to ``size`` = (height, width) if given.

    Raises:
        ImageError: empty, not an image, truncated or corrupt, or too large (decompression bomb).
    """
    image = _open_checked(source)
    try:
        image.load()
        image = to_rgb(image)
        if size is not None:
            height, width = size
            if image.size != (width, height):
                image = image.resize((width, height), Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)
    except ImageError:
        raise
    except Exception as exc:  # truncated or corrupt data, whatever the decoder raises
        raise ImageError(f"The image data is truncated or corrupt: {exc}") from exc


def load_thumbnail(source, max_side: int = 160) -> np.ndarray:
    """A uint8 RGB preview no larger than ``max_side`` pixels per side (JPEGs decode at reduced size)."""
    image = _open_checked(source)
    try:
        image.draft("RGB", (max_side, max_side))
        image = to_rgb(image)
        image.thumbnail((max_side, max_side))
        return np.asarray(image, dtype=np.uint8)
    except Exception as exc:
        raise ImageError(f"The image data is truncated or corrupt: {exc}") from exc


def load_images(paths, size: tuple[int, int]) -> np.ndarray:
    """A float32 batch (N, H, W, 3) of pixel values 0-255.

    Raises:
        ImageError: one of the files cannot be read; the message starts with its path.
    """
    batch = np.zeros((len(paths), size[0], size[1], 3), dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            batch[i] = load_image(path, size)
        except ImageError as exc:
            raise ImageError(f"{path}: {exc}") from exc
    return batch


EXIF_ORIENTATION = 0x0112
_TRANSPOSED_ORIENTATIONS = (5, 6, 7, 8)  # rotated by 90 or 270 degrees: displayed width and height swap


def image_header(path) -> tuple[int, int, str]:
    """(width, height, mode) of an image as displayed (EXIF rotation applied), after the checks of
    `load_image`, decoding it fully so that truncated or corrupt files are caught when a folder is
    scanned, not in the middle of training."""
    image = _open_checked(path)
    width, height, mode = image.size[0], image.size[1], image.mode
    try:
        image.load()
        orientation = image.getexif().get(EXIF_ORIENTATION)
    except Exception as exc:
        raise ImageError(f"The image data is truncated or corrupt: {exc}") from exc
    if orientation in _TRANSPOSED_ORIENTATIONS:
        width, height = height, width
    return width, height, mode


# ---------------------------------------------------------------------------------------------------
# Scanning


@dataclass
class DatasetIndex:
    """A scanned dataset: the usable files with split and class, and the skipped ones with reasons."""

    root: Path
    class_names: list[str]
    records: pd.DataFrame  # columns: path, split, label, class_name, width, height, mode
    skipped: list[tuple[str, str]] = field(default_factory=list)
    layout: str = "splits"

    def split(self, name: str) -> pd.DataFrame:
        return self.records[self.records["split"] == name].reset_index(drop=True)

    def counts(self) -> pd.DataFrame:
        """Images per class (rows) and split (columns)."""
        table = pd.crosstab(self.records["class_name"], self.records["split"])
        table = table.reindex(index=self.class_names, columns=list(SPLITS), fill_value=0)
        table.index.name = "class"
        return table

    def summary(self) -> dict:
        """Counts, image sizes and colour modes, skipped files: what `python -m core dataset` prints."""
        sizes = Counter(zip(self.records["width"], self.records["height"]))
        modes = Counter(self.records["mode"])
        counts = self.counts()
        per_class = counts.sum(axis=1)
        smallest = int(per_class.min()) if len(per_class) else 0
        largest = int(per_class.max()) if len(per_class) else 0
        return {
            "root": str(self.root),
            "layout": self.layout,
            "classes": self.class_names,
            "images": int(len(self.records)),
            "counts": {split: {c: int(counts.loc[c, split]) for c in self.class_names} for split in SPLITS},
            "image_sizes": {f"{w}x{h}": n for (w, h), n in sizes.most_common()},
            "colour_modes": dict(modes.most_common()),
            "imbalance_ratio": (largest / smallest) if smallest else None,
            "skipped": [{"path": p, "reason": r} for p, r in self.skipped],
        }


def _link_problem(path: Path, root_real: Path) -> str | None:
    """Why the symbolic link ``path`` inside a dataset is not followed, or None when it may be.

    A link may point anywhere inside the dataset except back up the tree (its own folder or one of
    that folder's parents: following it would pull the tree in again, under another label).
    """
    try:
        target = path.resolve(strict=True)
    except (OSError, RuntimeError):
        return "a broken or looping symbolic link; not followed"
    if target != root_real and root_real not in target.parents:
        return f"a symbolic link to {target}, outside the dataset; not followed"
    here = path.parent.resolve()
    if target == here or target in here.parents:
        return f"a symbolic link back up the folder tree (to {target}); not followed"
    return None


class _Walker:
    """Lists a dataset's folders and files once each: hidden names ignored, unsafe links skipped with
    the reason, a folder or file reached twice (through links) counted once."""

    def __init__(self, root: Path):
        self.root_real = Path(root).resolve()
        self.skipped: list[tuple[str, str]] = []
        self.seen_dirs: dict[str, Path] = {}
        self.seen_files: dict[str, Path] = {}
        self.links: set[Path] = set()  # entries that are symbolic links (resolved one by one)

    def entries(self, folder: Path) -> tuple[list[Path], list[Path]]:
        """(sub-folders, other entries) of ``folder``, sorted by name."""
        try:
            listing = sorted(os.scandir(folder), key=lambda e: e.name)
        except OSError as exc:
            self.skipped.append((str(folder), f"the folder cannot be listed: {exc.strerror or exc}"))
            return [], []
        dirs, files = [], []
        for entry in listing:
            if entry.name.startswith("."):
                continue
            path = Path(entry.path)
            if entry.is_symlink():
                problem = _link_problem(path, self.root_real)
                if problem:
                    self.skipped.append((str(path), problem))
                    continue
                self.links.add(path)
            try:
                is_dir = entry.is_dir()
            except OSError:
                is_dir = False
            (dirs if is_dir else files).append(path)
        return dirs, files

    def enter(self, folder: Path) -> bool:
        """False (and the folder listed as skipped) when the folder was already scanned by another path."""
        real = os.path.realpath(folder)
        if real in self.seen_dirs:
            self.skipped.append((str(folder), f"the same folder as {self.seen_dirs[real]}; scanned once"))
            return False
        self.seen_dirs[real] = folder
        return True

    def files(self, folder: Path, entered: bool = False):
        """Every file under ``folder`` (depth first, files of a folder before its sub-folders);
        ``entered``: `enter` was already called for ``folder``."""
        stack = [folder]
        while stack:
            current = stack.pop()
            if not (entered and current is folder) and not self.enter(current):
                continue
            here = os.path.realpath(current)
            dirs, files = self.entries(current)
            for path in files:
                real = os.path.realpath(path) if path in self.links else os.path.join(here, path.name)
                if real in self.seen_files:
                    self.skipped.append((str(path), f"the same file as {self.seen_files[real]}; counted once"))
                    continue
                self.seen_files[real] = path
                yield path
            stack.extend(reversed(dirs))


def folder_signature(root) -> str:
    """A cheap fingerprint of a folder tree: every name, size and modification time (the same files the
    scan would see; nothing is opened). It changes when a file is added, removed, replaced or edited, so
    a cached scan can be keyed on it. About 0.1 ms per file (0.3 s for 3,000 files on 2 busy cores)."""
    root = Path(root)
    digest = hashlib.sha1(str(root.resolve()).encode())
    walker = _Walker(root)
    for path in walker.files(root):
        try:
            info = os.stat(path)
            digest.update(f"{path}\0{info.st_size}\0{info.st_mtime_ns}\0{info.st_mode}\n".encode())
        except OSError as exc:
            digest.update(f"{path}\0{exc.errno}\n".encode())
    for path, reason in walker.skipped:
        digest.update(f"{path}\0{reason}\n".encode())
    return digest.hexdigest()


def scan_dataset(
    root, val_fraction: float = 0.15, test_fraction: float = 0.15, seed: int = 0, group_split: bool = False
) -> DatasetIndex:
    """Scans an image folder into a `DatasetIndex`.

    Args:
        root: the dataset folder (either layout, see the module docstring).
        val_fraction, test_fraction: shares of each class split off when the layout does not give them.
        seed: the split's seed; the same seed gives the same split.
        group_split: keep all images of one sub-folder of a class (one patient, say) in the same split;
            groups are assigned whole, so class shares are then approximate.

    Raises:
        DatasetError: not a folder, no class folders, fewer than two classes, or no readable image.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"Expected a folder of images. Received: {root} (not a folder)")
    walker = _Walker(root)
    walker.enter(root)
    subdirs, top_files = walker.entries(root)
    split_dirs = {SPLIT_ALIASES[d.name.lower()]: d for d in subdirs if d.name.lower() in SPLIT_ALIASES}
    rows, skipped = [], walker.skipped

    def add_files(class_name: str, folder: Path, split: str | None):
        for path in walker.files(folder, entered=True):
            if path.suffix.lower() not in IMAGE_EXTENSIONS:
                skipped.append((str(path), f"not an image file (extension {path.suffix or 'none'})"))
                continue
            try:
                width, height, mode = image_header(path)
            except ImageError as exc:
                skipped.append((str(path), str(exc)))
                continue
            relative = path.relative_to(folder).parts
            group = relative[0] if len(relative) > 1 else str(path)  # one sub-folder = one patient
            rows.append((str(path), split, class_name, width, height, mode, group))

    all_class_dirs = set()
    if "train" in split_dirs:
        layout = "splits"
        for split, folder in split_dirs.items():
            if not walker.enter(folder):
                continue
            for class_dir in walker.entries(folder)[0]:
                if walker.enter(class_dir):
                    all_class_dirs.add(class_dir.name)
                    add_files(class_dir.name, class_dir, split)
    else:
        layout = "classes"
        for class_dir in subdirs:
            if walker.enter(class_dir):
                all_class_dirs.add(class_dir.name)
                add_files(class_dir.name, class_dir, None)

    found_dirs = {row[2] for row in rows}
    all_class_dirs = sorted(all_class_dirs)
    if not all_class_dirs:
        raise DatasetError(
            f"Expected one sub-folder per class in {root}. Found no sub-folders ({len(top_files)} files at the top level)."
        )
    for fraction, name in ((val_fraction, "val_fraction"), (test_fraction, "test_fraction")):
        if not 0 <= fraction < 1:
            raise DatasetError(f"{name} must be in [0, 1). Received: {name}={fraction}")
    if val_fraction + test_fraction >= 1:
        raise DatasetError(f"val_fraction + test_fraction must be below 1. Received: {val_fraction + test_fraction}")
    if not rows:
        raise DatasetError(f"Found no readable image in {root} ({len(skipped)} files skipped).")
    empty = [c for c in all_class_dirs if c not in found_dirs]
    if empty:
        raise DatasetError(f"These class folders contain no readable image: {', '.join(empty)}.")
    class_names = sorted(found_dirs)
    if len(class_names) < 2:
        raise DatasetError(f"A classifier needs at least two classes. Found one: {class_names[0]!r}.")

    records = pd.DataFrame(rows, columns=["path", "split", "class_name", "width", "height", "mode", "group"])
    records["label"] = records["class_name"].map({c: i for i, c in enumerate(class_names)}).astype(int)
    records = _assign_missing_splits(records, val_fraction, test_fraction, seed, group_split)
    return DatasetIndex(root, class_names, records, skipped, layout)


def _assign_missing_splits(records: pd.DataFrame, val_fraction, test_fraction, seed, group_split=False) -> pd.DataFrame:
    """Splits unassigned rows (class layout) or carves missing val/test out of train.

    Stratified per class; with ``group_split`` whole groups (sub-folders) are assigned instead.
    """
    records = records.copy()
    present = set(records["split"].dropna())
    records.loc[records["split"].isna(), "split"] = "pool"
    wanted = [(s, f) for s, f in (("test", test_fraction), ("val", val_fraction)) if s not in present and f > 0]
    if not wanted:
        return records[records["split"] != "pool"].reset_index(drop=True)
    source = "pool" if "pool" in set(records["split"]) else "train"
    rng = np.random.default_rng(seed)
    candidates = records[records["split"] == source]
    if group_split:
        sizes = candidates.groupby("group").size()
        groups = sizes.index.to_numpy()[rng.permutation(len(sizes))]
        total, start = len(candidates), 0
        for split, fraction in wanted:
            taken, chosen = 0, []
            while start < len(groups) - 1 and taken < fraction * total:
                chosen.append(groups[start])
                taken += int(sizes[groups[start]])
                start += 1
            records.loc[candidates.index[candidates["group"].isin(chosen)], "split"] = split
    else:
        for _, group in candidates.groupby("class_name"):
            order = rng.permutation(group.index.to_numpy())
            start = 0
            for split, fraction in wanted:
                n = int(round(len(order) * fraction))
                if len(order) - start - n < 1:
                    n = max(0, len(order) - start - 1)
                records.loc[order[start : start + n], "split"] = split
                start += n
    records.loc[records["split"] == "pool", "split"] = "train"
    return records.reset_index(drop=True)
