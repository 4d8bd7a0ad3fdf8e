"""Importing hostile or broken model files: refused before a run exists, fast, with the limit named;
a failed import leaves no run folder; messages name the user's path; an upload keeps its own name."""

from __future__ import annotations

import json
import struct
import time
import zipfile
import zlib
from pathlib import Path

import keras
import pytest
from keras import layers

from core import finishing, runs
from core.data import ImageError
from core.importing import import_run
from core.model_import import MAX_WEIGHT_BYTES, check_safe
from core.models import ModelError
from core.shapes import generate_shapes_dataset

SIZE = 16


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return generate_shapes_dataset(tmp_path_factory.mktemp("data") / "shapes", per_class=6, image_size=SIZE, seed=2)


@pytest.fixture(scope="module")
def small_keras(tmp_path_factory) -> Path:
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.GlobalAveragePooling2D()(layers.Conv2D(2, 3, name="conv")(inputs))
    path = tmp_path_factory.mktemp("model") / "small.keras"
    keras.Model(inputs, layers.Dense(3, activation="softmax", name="out")(x)).save(path)
    return path


def _no_run_left(workspace: Path) -> None:
    folder = runs.runs_dir(workspace)
    assert not folder.exists() or list(folder.iterdir()) == []


def _zeros_deflated(mib: int) -> bytes:
    """A raw deflate stream of ``mib`` MiB of zeros, built from one flushed 16 MiB block repeated."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    block = compressor.compress(bytes(16 * 2**20)) + compressor.flush(zlib.Z_FULL_FLUSH)
    assert mib % 16 == 0
    return block * (mib // 16) + compressor.flush(zlib.Z_FINISH)


def _zip_with_deflated_member(path: Path, members: dict[str, bytes], name: str, raw: bytes, size: int) -> None:
    """A zip archive with ``members`` stored normally plus ``name`` whose deflated data is ``raw``,
    declaring ``size`` bytes unpacked (a zip bomb, written without ever holding the unpacked bytes)."""
    with zipfile.ZipFile(path, "w") as archive:
        for member, content in members.items():
            archive.writestr(member, content)
    body = path.read_bytes()
    end = body.rindex(b"PK\x05\x06")
    count, directory_size, directory_offset = struct.unpack("<HLL", body[end + 10 : end + 20])
    entries, offset = body[directory_offset : directory_offset + directory_size], directory_offset
    encoded = name.encode()
    local = struct.pack("<4s2B4HL2L2H", b"PK\x03\x04", 20, 0, 0, 8, 0, 0, 0, len(raw), size, len(encoded), 0)
    central = struct.pack(
        "<4s4B4HL2L5H2L",
        b"PK\x01\x02",
        20,
        3,
        20,
        0,
        0,
        8,
        0,
        0,
        0,
        len(raw),
        size,
        len(encoded),
        0,
        0,
        0,
        0,
        0,
        offset,
    )
    directory = entries + central + encoded
    record = struct.pack(
        "<4s4H2LH",
        b"PK\x05\x06",
        0,
        0,
        count + 1,
        count + 1,
        len(directory),
        offset + len(local) + len(encoded) + len(raw),
        0,
    )
    path.write_bytes(body[:offset] + local + encoded + raw + directory + record)


def _members(model: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(model) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def test_a_text_file_named_keras_leaves_no_run(tmp_path, shapes):
    fake = tmp_path / "notes.keras"
    fake.write_text("just some text")
    with pytest.raises(ModelError, match="notes.keras is not a readable Keras model file"):
        import_run(tmp_path / "ws", fake, shapes, "unit")
    _no_run_left(tmp_path / "ws")


def test_a_weights_bomb_is_refused_in_well_under_a_second(tmp_path, shapes, small_keras):
    members = {k: v for k, v in _members(small_keras).items() if k != "model.weights.h5"}
    bomb = tmp_path / "bomb.keras"
    _zip_with_deflated_member(bomb, members, "model.weights.h5", _zeros_deflated(1536), 1536 * 2**20)
    assert bomb.stat().st_size < 2 * 2**20  # 1.5 GiB of weights in under 2 MB
    started = time.monotonic()
    with pytest.raises(ModelError, match=r"model.weights.h5 declares 1.50 GiB unpacked; the limit is 1.00 GiB"):
        check_safe(bomb)
    assert time.monotonic() - started < 0.5  # measured: under 1 ms (it was 26 s and 3.9 GB)
    with pytest.raises(ModelError, match="MAX_MEMBER_BYTES"):
        import_run(tmp_path / "ws", bomb, shapes, "unit")
    _no_run_left(tmp_path / "ws")


def test_a_member_compressed_beyond_any_real_model_is_refused(tmp_path, small_keras):
    members = {k: v for k, v in _members(small_keras).items() if k != "model.weights.h5"}
    ratio = tmp_path / "ratio.keras"
    _zip_with_deflated_member(ratio, members, "model.weights.h5", _zeros_deflated(128), 128 * 2**20)
    with pytest.raises(ModelError, match=r"times its size; the limit is 100 times"):
        check_safe(ratio)
    traversal = tmp_path / "traversal.keras"
    with zipfile.ZipFile(traversal, "w") as archive:
        archive.writestr("../../evil.txt", "x")
    with pytest.raises(ModelError, match="would unpack outside"):
        check_safe(traversal)


def test_a_configuration_that_implies_huge_weights_is_refused_before_building(tmp_path, small_keras):
    members = _members(small_keras)
    config = json.loads(members["config.json"])
    (dense,) = [layer for layer in config["config"]["layers"] if layer["class_name"] == "Dense"]
    dense["config"]["units"] = 5_000_000  # 2 inputs x 5e6 units x 4 bytes = 40 MB: allowed ...
    assert dense["build_config"]["input_shape"][-1] == 2
    dense["build_config"]["input_shape"][-1] = 100_000  # ... on 100,000 inputs it is 2 TB
    members["config.json"] = json.dumps(config).encode()
    path = tmp_path / "wide.keras"
    with zipfile.ZipFile(path, "w") as archive:
        for name, content in members.items():
            archive.writestr(name, content)
    started = time.monotonic()
    with pytest.raises(ModelError, match=r"configuration implies .* \(layer 'out' alone .* the limit is 1.00 GiB"):
        check_safe(path)
    assert time.monotonic() - started < 1.0


def test_an_h5_declaring_huge_weights_in_tiny_chunks_is_refused(tmp_path):
    import h5py

    inputs = keras.Input((SIZE, SIZE, 3))
    model = keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(inputs)))
    path = tmp_path / "chunks.h5"
    model.save(path)
    with h5py.File(path, "a") as handle:  # 40,000 x 10,000 float32 = 1.5 GB, never written: a few KB on disk
        handle["model_weights"].create_dataset("huge", shape=(40_000, 10_000), dtype="f4", chunks=(1000, 1000))
    assert path.stat().st_size < 2**20 and MAX_WEIGHT_BYTES < 40_000 * 10_000 * 4
    with pytest.raises(ModelError, match=r"weights declare 1.49 GiB \(the largest, model_weights/huge"):
        check_safe(path)


def test_a_corrupt_savedmodel_is_reported_under_the_users_path(tmp_path, shapes):
    folder = tmp_path / "my_savedmodel"
    folder.mkdir()
    (folder / "saved_model.pb").write_bytes(b"\x08\x96\x01 garbage that is not a protobuf \xff\xff")
    with pytest.raises(ModelError) as caught:
        import_run(tmp_path / "ws", folder, shapes, "unit")
    assert str(folder) in str(caught.value) and "runs" not in str(caught.value)
    _no_run_left(tmp_path / "ws")
    (folder / "variables").mkdir()
    (folder / "variables" / "endless").symlink_to("/dev/zero")
    with pytest.raises(ModelError, match="contains a symbolic link"):
        import_run(tmp_path / "ws", folder, shapes, "unit")


def test_an_upload_keeps_its_name_and_a_late_failure_removes_the_run(tmp_path, shapes, small_keras, monkeypatch):
    temporary = tmp_path / "tmpabc123" / "small.keras"
    temporary.parent.mkdir()
    temporary.write_bytes(small_keras.read_bytes())
    run = import_run(tmp_path / "ws", temporary, shapes, "unit", source_name="my model.keras")
    assert run.is_complete and run.meta["imported_from"] == "my model.keras" and run.meta["name"] == "imported-small"

    def unreadable(*args, **kwargs):
        raise ImageError("/data/test/circle/0.png: The file cannot be read: No such file or directory.")

    monkeypatch.setattr(finishing, "evaluate", unreadable)
    with pytest.raises(ImageError, match="0.png"):
        import_run(tmp_path / "ws2", small_keras, shapes, "unit")
    _no_run_left(tmp_path / "ws2")
