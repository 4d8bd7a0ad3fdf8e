"""IDX reading (Fashion-MNIST from Debian's dataset-fashion-mnist) and the data-root guard."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from core.idx import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, IdxError, export_fashion_mnist, read_idx
from core.paths import DataRootError, data_roots, resolve_within


def _write_idx(path, array: np.ndarray, type_code=0x08, compress=False):
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(array.dtype.newbyteorder(">")).tobytes()
    (gzip.open if compress else open)(path, "wb").write(payload)


def test_read_idx_round_trip_uint8_and_int32(tmp_path):
    images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.idx", images)
    assert np.array_equal(read_idx(tmp_path / "a.idx"), images)
    values = np.array([[-5, 70000], [3, -1]], dtype=np.int32)
    _write_idx(tmp_path / "b.idx.gz", values, type_code=0x0C, compress=True)
    assert np.array_equal(read_idx(tmp_path / "b.idx.gz"), values)


def test_fashion_mnist_from_debian_package():
    images = read_idx(FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and set(np.unique(labels)) == set(range(10))
    assert np.bincount(labels).tolist() == [1000] * 10  # the test set is balanced
    assert labels[:5].tolist() == [9, 2, 1, 1, 6]  # ankle boot, pullover, trouser, trouser, shirt


@pytest.mark.parametrize(
    "content, message",
    [
        (b"\x01\x00\x08\x01", "two zero bytes"),
        (b"\x00\x00\x42\x01\x00\x00\x00\x01", "unknown IDX data type"),
        (b"\x00\x00\x08\x02\x00\x00", "truncated inside its header"),
        (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "declares shape (5,)"),
    ],
)
def test_read_idx_refuses_bad_files(tmp_path, content, message):
    path = tmp_path / "bad.idx"
    path.write_bytes(content)
    with pytest.raises(IdxError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_idx(path)


def test_export_fashion_mnist_subset(tmp_path):
    root = export_fashion_mnist(tmp_path / "fm", per_class_train=3, per_class_test=2)
    for split, n in (("train", 3), ("test", 2)):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == sorted(FASHION_MNIST_CLASSES)
        assert all(len(list((root / split / c).glob("*.png"))) == n for c in folders)


def test_data_roots_default_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("XAI_DATA_ROOTS", raising=False)
    monkeypatch.chdir(tmp_path)
    assert data_roots(tmp_path / "ws") == [(tmp_path / "ws").resolve(), tmp_path.resolve()]
    monkeypatch.setenv("XAI_DATA_ROOTS", f"/data{':'}/srv/images")
    assert [str(p) for p in data_roots(tmp_path)] == ["/data", "/srv/images"]


def test_resolve_within_refuses_outside_and_symlink_escapes(tmp_path):
    root = tmp_path / "root"
    (root / "ok").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    assert resolve_within(root / "ok", [root]) == (root / "ok").resolve()
    assert resolve_within(str(root / "ok" / ".." / "ok"), [root]) == (root / "ok").resolve()
    for bad in (tmp_path / "secret", root / "escape", root / ".." / "secret", "/etc"):
        with pytest.raises(DataRootError, match="outside the folders this dashboard may read"):
            resolve_within(bad, [root])
    with pytest.raises(DataRootError, match="No folder given"):
        resolve_within("  ", [root])
