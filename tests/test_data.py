"""core.data: decoding every colour mode safely, refusing bad input, scanning folders, the demo set."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import data, shapes
from core.data import DatasetError, ImageError, load_image, scan_dataset


def encode(image: Image.Image, fmt: str = "PNG", **params) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **params)
    return buffer.getvalue()


def png_with_size(width: int, height: int) -> bytes:
    """A tiny real PNG whose IHDR claims width x height (CRC recomputed): a cheap decompression bomb."""
    raw = bytearray(encode(Image.new("L", (4, 4), 0)))
    assert raw[12:16] == b"IHDR"
    raw[16:24] = struct.pack(">II", width, height)
    raw[29:33] = struct.pack(">I", zlib.crc32(bytes(raw[12:29])))
    return bytes(raw)


def save_rgb(path: Path, colour=(10, 200, 30), size=(8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


# ---------------------------------------------------------------------------------------------------
# load_image: every colour mode -> uint8 RGB with the right values


def _mode_cases():
    grey = Image.new("L", (3, 2), 0)
    grey.putpixel((1, 0), 77)

    la = Image.new("LA", (3, 2), (0, 255))
    la.putpixel((1, 0), (100, 255))  # opaque
    la.putpixel((2, 0), (100, 0))  # fully transparent -> white background
    la.putpixel((0, 1), (100, 128))  # half transparent -> between 100 and 255

    palette = Image.new("P", (3, 2), 1)
    palette.putpalette([10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6))
    palette.putpixel((1, 0), 0)  # index 0 is the transparent one

    rgb = Image.new("RGB", (3, 2), (0, 0, 0))
    rgb.putpixel((1, 0), (12, 34, 56))

    rgba = Image.new("RGBA", (3, 2), (0, 0, 0, 255))
    rgba.putpixel((1, 0), (12, 34, 56, 255))
    rgba.putpixel((2, 0), (12, 34, 56, 0))

    cmyk = Image.new("CMYK", (3, 2), (0, 0, 0, 0))
    cmyk.putpixel((1, 0), (255, 0, 0, 0))  # pure cyan

    deep = Image.fromarray(np.array([[0, 32896, 65535], [0, 0, 0]], dtype=np.uint16))
    assert deep.mode == "I;16"

    return [
        ("L", encode(grey), {(0, 1): (77, 77, 77), (0, 0): (0, 0, 0)}),
        ("LA", encode(la), {(0, 1): (100, 100, 100), (0, 2): (255, 255, 255), (1, 0): (177, 177, 177)}),
        ("P+transparency", encode(palette, transparency=0), {(0, 1): (255, 255, 255), (0, 0): (200, 100, 50)}),
        ("RGB", encode(rgb), {(0, 1): (12, 34, 56), (0, 0): (0, 0, 0)}),
        ("RGBA", encode(rgba), {(0, 1): (12, 34, 56), (0, 2): (255, 255, 255)}),
        ("CMYK", encode(cmyk, "TIFF"), {(0, 1): (0, 255, 255), (0, 0): (255, 255, 255)}),
        ("I;16", encode(deep), {(0, 0): (0, 0, 0), (0, 1): (128, 128, 128), (0, 2): (255, 255, 255)}),
    ]


@pytest.mark.parametrize("mode, payload, expected", _mode_cases(), ids=[c[0] for c in _mode_cases()])
@pytest.mark.parametrize("as_path", [False, True], ids=["bytes", "path"])
def test_load_image_converts_every_mode_to_uint8_rgb(mode, payload, expected, as_path, tmp_path):
    source = payload
    if as_path:
        source = tmp_path / "image.bin"
        source.write_bytes(payload)
    array = load_image(source)
    assert array.dtype == np.uint8
    assert array.shape == (2, 3, 3)
    for (row, col), colour in expected.items():
        assert tuple(int(v) for v in array[row, col]) == colour, (mode, row, col)


def test_load_image_applies_exif_orientation():
    image = Image.new("RGB", (40, 20), (0, 0, 0))
    image.paste((255, 255, 255), (0, 0, 10, 20))  # white on the left edge
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    plain = load_image(encode(image, "JPEG", quality=95))
    rotated = load_image(encode(image, "JPEG", quality=95, exif=exif))
    assert plain.shape == (20, 40, 3)
    assert rotated.shape == (40, 20, 3)
    # the left edge is now the top edge
    assert rotated[:8].mean() > 200 and rotated[-20:].mean() < 50


def test_load_image_resizes_to_height_width_not_square():
    array = load_image(encode(Image.new("RGB", (10, 10), (5, 6, 7))), size=(12, 30))
    assert array.shape == (12, 30, 3)
    assert array.dtype == np.uint8
    assert np.all(array == np.array([5, 6, 7], dtype=np.uint8))


def test_load_images_is_a_float32_batch_of_pixels(tmp_path):
    a = save_rgb(tmp_path / "a.png", (255, 0, 0))
    b = save_rgb(tmp_path / "b.png", (0, 0, 255))
    batch = data.load_images([a, b], (5, 7))
    assert batch.dtype == np.float32 and batch.shape == (2, 5, 7, 3)
    np.testing.assert_array_equal(batch[0, 0, 0], [255.0, 0.0, 0.0])
    np.testing.assert_array_equal(batch[1, 4, 6], [0.0, 0.0, 255.0])


def test_image_header_reads_size_and_mode(tmp_path):
    path = tmp_path / "x.png"
    Image.new("LA", (9, 4)).save(path)
    assert data.image_header(path) == (9, 4, "LA")


# ---------------------------------------------------------------------------------------------------
# load_image: bad input -> ImageError with a clear message

_PNG = encode(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)))


def _corrupt_png() -> bytes:
    raw = bytearray(_PNG)
    start = raw.index(b"IDAT") + 8
    raw[start : start + 200] = bytes(200)  # zeroed compressed data inside an intact header
    return bytes(raw)


@pytest.mark.parametrize(
    "payload, message",
    [
        (b"", r"empty \(0 bytes\)"),
        (b"This is a text file, not an image.\n", "not an image"),
        (_PNG[: len(_PNG) // 2], "truncated"),
        (_corrupt_png(), "corrupt"),
        (png_with_size(20000, 20000), "decompression bomb"),  # past Pillow's own limit
        (png_with_size(7000, 7000), "7000x7000"),  # under Pillow's limit, over ours (40 megapixels)
        (png_with_size(0, 5), "not an image"),
    ],
    ids=["empty", "text", "truncated", "corrupt", "bomb-pillow", "bomb-ours", "zero-width"],
)
@pytest.mark.parametrize("as_path", [False, True], ids=["bytes", "path"])
def test_load_image_refuses_bad_input(payload, message, as_path, tmp_path):
    source = payload
    if as_path:
        source = tmp_path / "bad.png"
        source.write_bytes(payload)
    with pytest.raises(ImageError, match=message):
        load_image(source)


def test_load_image_refuses_oversize_bytes():
    payload = b"\x89PNG" + bytes(data.MAX_UPLOAD_BYTES)
    with pytest.raises(ImageError, match=r"^The file is \d+\.\d MiB; the limit is 50 MiB\.$"):
        load_image(payload)


def test_a_real_image_just_under_the_pixel_limit_loads():
    # 6000 x 6000 = 36 megapixels: the header check allows it (only the header is read here)
    assert data._open_checked(png_with_size(6000, 6000)).size == (6000, 6000)


# ---------------------------------------------------------------------------------------------------
# scan_dataset


def make_class_folders(root: Path, counts: dict[str, int]) -> Path:
    for name, n in counts.items():
        for i in range(n):
            save_rgb(root / name / f"{i:03d}.png", (i % 256, 0, 0))
    return root


def test_scan_splits_layout_with_aliases(tmp_path):
    for split, n in (("train", 3), ("valid", 2), ("test", 1)):
        for cls in ("cat", "dog"):
            for i in range(n):
                save_rgb(tmp_path / split / cls / f"{i}.png", size=(8, 6))
    index = scan_dataset(tmp_path)
    assert index.layout == "splits"
    assert index.class_names == ["cat", "dog"]
    counts = index.counts()
    assert counts.to_dict(orient="index") == {
        "cat": {"train": 3, "val": 2, "test": 1},
        "dog": {"train": 3, "val": 2, "test": 1},
    }
    assert set(index.records.columns) >= {"path", "split", "label", "class_name", "width", "height", "mode"}
    dogs = index.records[index.records["class_name"] == "dog"]
    assert set(dogs["label"]) == {1}
    assert set(index.split("val")["path"].map(lambda p: Path(p).parent.parent.name)) == {"valid"}


def test_scan_validation_alias_and_carves_missing_test_from_train(tmp_path):
    for split, n in (("Train", 10), ("validation", 2)):
        for cls in ("a", "b"):
            for i in range(n):
                save_rgb(tmp_path / split / cls / f"{i}.png")
    index = scan_dataset(tmp_path, test_fraction=0.2, seed=3)
    counts = index.counts()
    assert list(counts["val"]) == [2, 2]  # given on disk: untouched
    assert list(counts["test"]) == [2, 2]  # 20% of each class's 10 train images
    assert list(counts["train"]) == [8, 8]
    test_paths = set(index.split("test")["path"])
    assert all(Path(p).parts[-3] == "Train" for p in test_paths)


def test_scan_class_layout_stratified_seeded_split(tmp_path):
    root = make_class_folders(tmp_path / "ds", {"ants": 20, "bees": 10, "wasps": 7})
    (root / "bees" / "deep" / "deeper").mkdir(parents=True)
    save_rgb(root / "bees" / "deep" / "deeper" / "nested.png")  # nested files belong to the class
    index = scan_dataset(root, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert index.layout == "classes"
    assert index.class_names == ["ants", "bees", "wasps"]
    counts = index.counts()
    assert counts.sum(axis=1).to_dict() == {"ants": 20, "bees": 11, "wasps": 7}
    for cls, n in (("ants", 20), ("bees", 11), ("wasps", 7)):
        assert counts.loc[cls, "val"] == round(n * 0.2)
        assert counts.loc[cls, "test"] == round(n * 0.1)
        assert counts.loc[cls, "train"] == n - round(n * 0.2) - round(n * 0.1)
    nested = index.records[index.records["path"].str.endswith("nested.png")]
    assert list(nested["class_name"]) == ["bees"]
    assert len(index.records) == len(set(index.records["path"])) == 38

    again = scan_dataset(root, val_fraction=0.2, test_fraction=0.1, seed=1)
    assert again.records.equals(index.records)
    other = scan_dataset(root, val_fraction=0.2, test_fraction=0.1, seed=2)
    assert set(other.split("test")["path"]) != set(index.split("test")["path"])


def test_scan_keeps_at_least_one_training_image_per_class(tmp_path):
    root = make_class_folders(tmp_path, {"a": 2, "b": 1})
    counts = scan_dataset(root, val_fraction=0.45, test_fraction=0.45).counts()
    assert counts.loc["a"].to_dict() == {"train": 1, "val": 0, "test": 1}
    assert counts.loc["b"].to_dict() == {"train": 1, "val": 0, "test": 0}


def test_scan_group_split_keeps_each_sub_folder_in_one_split(tmp_path):
    for cls in ("a", "b"):
        for patient in range(5):
            for i in range(3):
                save_rgb(tmp_path / cls / f"{cls}-patient{patient}" / f"{i}.png")
    index = scan_dataset(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=4, group_split=True)
    records = index.records
    patient = records["path"].map(lambda p: Path(p).parent.name)
    assert (records.groupby(patient)["split"].nunique() == 1).all()
    assert set(records["split"]) == {"train", "val", "test"}
    assert len(records) == 30
    again = scan_dataset(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=4, group_split=True)
    assert again.records["split"].tolist() == records["split"].tolist()
    # without group_split the same folders are split image by image, patients straddle splits
    plain = scan_dataset(tmp_path, val_fraction=0.2, test_fraction=0.2, seed=4).records
    assert (plain.groupby(patient)["split"].nunique() > 1).any()


@pytest.mark.parametrize(
    "fractions, message",
    [((1.0, 0.1), "val_fraction must be in"), ((0.1, -0.1), "test_fraction must be in"), ((0.5, 0.5), "below 1")],
)
def test_scan_refuses_bad_fractions(tmp_path, fractions, message):
    root = make_class_folders(tmp_path, {"a": 2, "b": 2})
    with pytest.raises(DatasetError, match=message):
        scan_dataset(root, val_fraction=fractions[0], test_fraction=fractions[1])


def test_scan_skips_bad_files_with_reasons(tmp_path):
    root = make_class_folders(tmp_path, {"a": 3, "b": 3})
    (root / "a" / "empty.png").write_bytes(b"")
    (root / "a" / "notes.txt").write_text("hello")
    (root / "b" / "garbage.jpg").write_bytes(b"\xff\xd8 not really a jpeg" * 10)
    (root / "b" / "noext").write_bytes(_PNG)
    (root / "b" / ".hidden.png").write_bytes(b"")  # hidden files are ignored, not listed
    index = scan_dataset(root)
    reasons = {Path(p).name: r for p, r in index.skipped}
    assert set(reasons) == {"empty.png", "notes.txt", "garbage.jpg", "noext"}
    assert "empty" in reasons["empty.png"]
    assert ".txt" in reasons["notes.txt"]
    assert "not an image" in reasons["garbage.jpg"]
    assert "none" in reasons["noext"]
    assert len(index.records) == 6
    summary = index.summary()
    assert {Path(item["path"]).name for item in summary["skipped"]} == set(reasons)


def test_scan_skips_truncated_images(tmp_path):
    root = make_class_folders(tmp_path, {"a": 3, "b": 3})
    (root / "a" / "truncated.png").write_bytes(_PNG[: len(_PNG) // 2])
    index = scan_dataset(root)
    assert [Path(p).name for p, _ in index.skipped] == ["truncated.png"]


def test_scan_error_not_a_folder(tmp_path):
    file = tmp_path / "file.png"
    save_rgb(file)
    for target in (file, tmp_path / "missing"):
        with pytest.raises(DatasetError, match=r"Expected a folder of images.*not a folder"):
            scan_dataset(target)


def test_scan_error_no_class_folders(tmp_path):
    save_rgb(tmp_path / "a.png")
    save_rgb(tmp_path / "b.png")
    with pytest.raises(DatasetError, match=r"one sub-folder per class.*no sub-folders \(2 files at the top level\)"):
        scan_dataset(tmp_path)


def test_scan_error_one_class(tmp_path):
    make_class_folders(tmp_path, {"only": 4})
    with pytest.raises(DatasetError, match=r"at least two classes. Found one: 'only'"):
        scan_dataset(tmp_path)


def test_scan_error_empty_class_folder(tmp_path):
    make_class_folders(tmp_path, {"a": 2, "b": 2})
    (tmp_path / "c").mkdir()
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "broken.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"contain no readable image: c, d\."):
        scan_dataset(tmp_path)


def test_scan_error_no_readable_images(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        (tmp_path / cls / "x.txt").write_text("x")
        (tmp_path / cls / "y.png").write_bytes(b"")
    with pytest.raises(DatasetError, match=r"no readable image in .* \(4 files skipped\)"):
        scan_dataset(tmp_path)


def test_summary_counts_sizes_modes_imbalance(tmp_path):
    for i in range(6):
        save_rgb(tmp_path / "big" / f"{i}.png", size=(8, 6))
    for i in range(2):
        path = tmp_path / "small" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("L", (5, 5)).save(path)
    (tmp_path / "small" / "bad.png").write_bytes(b"")
    index = scan_dataset(tmp_path, val_fraction=0.0, test_fraction=0.5, seed=0)
    summary = index.summary()
    assert summary["layout"] == "classes"
    assert summary["classes"] == ["big", "small"]
    assert summary["images"] == 8
    assert summary["counts"] == {
        "train": {"big": 3, "small": 1},
        "val": {"big": 0, "small": 0},
        "test": {"big": 3, "small": 1},
    }
    assert summary["image_sizes"] == {"8x6": 6, "5x5": 2}
    assert summary["colour_modes"] == {"RGB": 6, "L": 2}
    assert summary["imbalance_ratio"] == 3.0
    assert [Path(s["path"]).name for s in summary["skipped"]] == ["bad.png"]
    assert summary["root"] == str(tmp_path)


# ---------------------------------------------------------------------------------------------------
# The demo shapes dataset


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*.png"))}


def test_generate_shapes_dataset_is_deterministic(tmp_path):
    first = _files(shapes.generate_shapes_dataset(tmp_path / "a", per_class=6, image_size=24, seed=7))
    second = _files(shapes.generate_shapes_dataset(tmp_path / "b", per_class=6, image_size=24, seed=7))
    other = _files(shapes.generate_shapes_dataset(tmp_path / "c", per_class=6, image_size=24, seed=8))
    assert len(first) == 3 * 6 * 2  # images and masks
    assert first == second
    assert first.keys() == other.keys()
    assert sum(first[k] != other[k] for k in first) > len(first) // 2


def test_generate_shapes_dataset_layout_and_masks(tiny_shapes_dir):
    index = scan_dataset(tiny_shapes_dir)
    assert index.class_names == list(shapes.DEMO_CLASSES)
    assert index.counts().to_dict(orient="index") == {c: {"train": 8, "val": 2, "test": 2} for c in shapes.DEMO_CLASSES}
    assert index.skipped == []
    for path in index.records["path"]:
        mask_path = shapes.mask_path_for(path, tiny_shapes_dir)
        assert mask_path == tiny_shapes_dir / "masks" / Path(path).relative_to(tiny_shapes_dir)
        image = np.asarray(Image.open(path).convert("RGB"), dtype=np.float64)
        mask = np.asarray(Image.open(mask_path))
        assert image.shape[:2] == mask.shape == (32, 32)
        assert set(np.unique(mask)) <= {0, 255}
        inside, outside = mask == 255, mask == 0
        assert 0.05 < inside.mean() < 0.6  # a shape of radius 0.22-0.38 of the size
        # the shape's colour differs from the background around it
        gap = np.abs(image[inside].mean(axis=0) - image[outside].mean(axis=0)).max()
        assert gap > 40, (path, gap)


def test_mask_path_for_relative_paths(tmp_path):
    root = tmp_path / "ds"
    image = root / "test" / "circle" / "circle_0001.png"
    assert shapes.mask_path_for(image, root) == root / "masks" / "test" / "circle" / "circle_0001.png"
    with pytest.raises(ValueError):
        shapes.mask_path_for(tmp_path / "elsewhere.png", root)


def test_16_bit_values_map_to_the_same_grey_in_every_image(tmp_path):
    """A fixed scale (255/65535), not a per-image stretch: a uniform image keeps its brightness."""
    for value, grey in ((65535, 255), (1000, 4), (0, 0)):
        path = tmp_path / f"v{value}.png"
        Image.fromarray(np.full((4, 4), value, dtype=np.uint16)).save(path)
        assert np.unique(load_image(path)).tolist() == [grey]


def _ico_with_bad_ihdr() -> bytes:
    """A 16x16 ICO whose embedded PNG header is cut short: Pillow raises a bare ValueError on it."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(buffer, format="ICO")
    raw = bytearray(buffer.getvalue())
    raw[33] = 0
    return bytes(raw)


def test_any_decoder_error_becomes_an_image_error(tmp_path):
    with pytest.raises(ImageError, match="Truncated IHDR chunk"):
        load_image(_ico_with_bad_ihdr())
    root = tmp_path / "ds"
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        Image.new("RGB", (8, 8)).save(root / name / "ok.png")
    (root / "a" / "evil.png").write_bytes(_ico_with_bad_ihdr())
    index = scan_dataset(root)
    assert len(index.records) == 2
    assert [Path(p).name for p, _ in index.skipped] == ["evil.png"]
