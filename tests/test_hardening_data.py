"""core.data against hostile folders: FIFOs and devices, directory links, EXIF rotation, errors that
name the file, and the folder signature that keys the Dataset page's cache."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from PIL import Image

from core.data import ImageError, folder_signature, image_header, load_images, scan_dataset


def _dataset(root: Path, per_class: int = 2, classes=("a", "b")) -> Path:
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.new("RGB", (6, 4), (40 * i, 90, 200)).save(root / name / f"{i}.png")
    return root


def _reasons(index) -> dict[str, str]:
    return {Path(path).name: reason for path, reason in index.skipped}


def test_fifo_and_device_named_png_are_not_regular_files_and_never_opened(tmp_path):
    root = _dataset(tmp_path / "ds")
    os.mkfifo(root / "a" / "pipe.png")  # opening it for reading would block forever
    (root / "a" / "null.png").symlink_to("/dev/null")
    started = time.monotonic()
    index = scan_dataset(root)
    assert time.monotonic() - started < 5
    reasons = _reasons(index)
    assert reasons["pipe.png"] == "Not a regular file: it is a named pipe (FIFO)."
    assert "outside the dataset" in reasons["null.png"]  # the scan does not even follow it
    assert len(index.records) == 4
    with pytest.raises(ImageError, match=r"^Not a regular file: it is a character device\.$"):
        image_header(root / "a" / "null.png")  # a file read directly is checked all the same


def test_a_class_folder_linking_to_its_parent_is_not_followed(tmp_path):
    root = _dataset(tmp_path / "ds")
    (root / "loop").symlink_to(root)  # a "class" that is the whole dataset again
    (root / "a" / "up").symlink_to(root / "a")  # a sub-folder that is its own class folder again
    index = scan_dataset(root)
    assert index.class_names == ["a", "b"]
    assert index.records["path"].is_unique and len(index.records) == 4
    reasons = _reasons(index)
    assert "back up the folder tree" in reasons["loop"] and "back up the folder tree" in reasons["up"]


def test_links_outside_the_dataset_and_duplicate_links_are_skipped_with_reasons(tmp_path):
    outside = _dataset(tmp_path / "elsewhere", classes=("c",))
    root = _dataset(tmp_path / "ds")
    (root / "c").symlink_to(outside / "c")
    (root / "a" / "secret.png").symlink_to(outside / "c" / "0.png")
    (root / "b2").symlink_to(root / "b")  # the same images under a second label
    index = scan_dataset(root)
    reasons = _reasons(index)
    assert "outside the dataset" in reasons["c"] and "outside the dataset" in reasons["secret.png"]
    assert "the same folder as" in reasons["b2"]
    assert index.class_names == ["a", "b"]
    assert sorted(index.records["class_name"]) == ["a", "a", "b", "b"]


def test_exif_rotation_gives_the_displayed_size(tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees: stored 30x20, displayed 20x30
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "photo.jpg", exif=exif)
    assert image_header(tmp_path / "photo.jpg")[:2] == (20, 30)
    Image.new("RGB", (30, 20), (1, 2, 3)).save(tmp_path / "plain.jpg")
    assert image_header(tmp_path / "plain.jpg")[:2] == (30, 20)


def test_load_images_names_the_file_that_fails(tmp_path):
    good = tmp_path / "good.png"
    Image.new("RGB", (4, 4)).save(good)
    corrupt, missing = tmp_path / "corrupt.png", tmp_path / "deleted.png"
    corrupt.write_text("not an image")
    with pytest.raises(ImageError, match=rf"^{corrupt}: The file is not an image"):
        load_images([good, corrupt], (4, 4))
    with pytest.raises(ImageError, match=rf"^{missing}: The file cannot be read: No such file or directory"):
        load_images([good, missing], (4, 4))


def test_folder_signature_changes_exactly_when_files_change(tmp_path):
    root = _dataset(tmp_path / "ds")
    first = folder_signature(root)
    assert folder_signature(root) == first
    (root / "a" / "0.png").unlink()
    removed = folder_signature(root)
    assert removed != first
    Image.new("RGB", (6, 4)).save(root / "a" / "0.png")
    os.utime(root / "a" / "0.png", ns=(1, 1))
    assert folder_signature(root) not in (first, removed)
    (root / "b" / ".hidden.png").write_bytes(b"x")  # the scan ignores hidden files: so does the signature
    os.utime(root / "a" / "0.png", ns=(1, 1))
    before_hidden = folder_signature(root)
    (root / "b" / ".other").write_bytes(b"y")
    assert folder_signature(root) == before_hidden


def test_read_idx_never_opens_a_fifo_and_stops_at_the_declared_size(tmp_path):
    import gzip

    from core.idx import MAX_IDX_BYTES, IdxError, read_idx

    os.mkfifo(tmp_path / "labels.idx")
    with pytest.raises(IdxError, match="is not a regular file"):
        read_idx(tmp_path / "labels.idx")
    huge = tmp_path / "huge.idx.gz"  # declares 65536 x 65536 bytes (4 GiB): refused from the header alone
    with gzip.open(huge, "wb") as handle:
        handle.write(bytes([0, 0, 0x08, 2]) + (65536).to_bytes(4, "big") * 2 + bytes(1000))
    with pytest.raises(IdxError, match=rf"4096 MiB\); the limit is {MAX_IDX_BYTES // 2**20} MiB"):
        read_idx(huge)
    trailing = tmp_path / "trailing.idx.gz"  # a valid header followed by 64 MiB of zeros: never all unpacked
    with gzip.open(trailing, "wb", compresslevel=1) as handle:
        handle.write(bytes([0, 0, 0x08, 1]) + (4).to_bytes(4, "big") + bytes(64 * 2**20))
    with pytest.raises(IdxError, match=r"declares shape \(4,\) \(4 bytes\) but holds more of data"):
        read_idx(trailing)
