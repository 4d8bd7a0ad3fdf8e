"""The feedback store: a real SQLite file, written by several processes at once."""

from __future__ import annotations

import csv
import hashlib
import io
import sqlite3

import numpy as np
import pytest
from PIL import Image

from core import feedback

PROCESSES, FLAGS_EACH = 4, 25


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((height, width, 3), 200, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


WRITER = """
import io, sys
import numpy as np
from PIL import Image
from core import feedback

workspace, worker, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
buffer = io.BytesIO()
Image.fromarray(np.full((8, 8 + worker, 3), 200, np.uint8)).save(buffer, format="PNG")
image = buffer.getvalue()  # one image per process: each stored once however often it is flagged
sys.stdin.readline()  # every writer waits here until all have started: they write at the same time
for k in range(count):
    feedback.add_flag(
        workspace,
        image,
        flag_type=list(feedback.FLAG_TYPES)[k % len(feedback.FLAG_TYPES)],
        run_id=f"run-{worker}",
        correct_class=["circle", "square"][k % 2],
        predicted_class="triangle",
        probabilities={"circle": 0.1, "square": 0.2, "triangle": np.float32(0.7)},
        comment=f"worker {worker} flag {k}",
        source="api" if worker % 2 else "dashboard",
    )
print(count)
"""


def test_concurrent_writers_lose_nothing(tmp_path):
    """PROCESSES separate Python processes (as the dashboard and API servers are) flag at the same time."""
    import subprocess
    import sys

    from conftest import PROJECT_ROOT

    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(tmp_path), str(w), str(FLAGS_EACH)],
            cwd=PROJECT_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for w in range(PROCESSES)
    ]
    written = []
    for writer in writers:
        writer.stdin.write("go\n")
        writer.stdin.flush()
    for writer in writers:
        out, err = writer.communicate(timeout=180)
        assert writer.returncode == 0, err[-2000:]
        written.append(int(out.strip()))
    assert sum(written) == PROCESSES * FLAGS_EACH
    assert feedback.count_flags(tmp_path) == PROCESSES * FLAGS_EACH
    flags = feedback.list_flags(tmp_path)
    assert len({f["id"] for f in flags}) == PROCESSES * FLAGS_EACH
    for worker in range(PROCESSES):
        mine = feedback.list_flags(tmp_path, run_id=f"run-{worker}")
        assert sorted(f["comment"] for f in mine) == sorted(f"worker {worker} flag {k}" for k in range(FLAGS_EACH))
    stored = sorted(p.name for p in feedback.images_dir(tmp_path).iterdir())
    assert len(stored) == PROCESSES and all(name.endswith(".png") for name in stored)
    with sqlite3.connect(feedback.db_path(tmp_path)) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA user_version").fetchone()[0] == feedback.SCHEMA_VERSION


def test_fields_counts_filters_csv_export_and_delete(tmp_path):
    red = np.zeros((6, 6, 3), np.uint8)
    red[..., 0] = 255
    data = png(10, 12)
    ids = [
        feedback.add_flag(
            tmp_path,
            data,
            flag_type="wrong_prediction",
            run_id="r1",
            correct_class="square",
            predicted_class="circle",
            probabilities={"circle": 0.6, "square": 0.4},
            explained_class="circle",
            method="gradcam",
            params={"layer_name": "conv2"},
        ),
        feedback.add_flag(tmp_path, data, flag_type="shortcut", run_id="r1", predicted_class="circle"),
        feedback.add_flag(tmp_path, red, flag_type="wrong_label", run_id="r2", correct_class="circle"),
    ]
    first = feedback.get_flag(tmp_path, ids[0])
    assert first["image_sha256"] == hashlib.sha256(data).hexdigest()
    assert feedback.image_path(tmp_path, first).read_bytes() == data
    assert first["params"] == {"layer_name": "conv2"} and first["probabilities"] == {"circle": 0.6, "square": 0.4}
    assert first["method"] == "gradcam" and first["explained_class"] == "circle" and first["app_version"]
    assert first["created_at"].endswith("+00:00")
    assert len(list(feedback.images_dir(tmp_path).iterdir())) == 2  # the same bytes twice: stored once

    assert [f["id"] for f in feedback.list_flags(tmp_path, run_id="r1")] == ids[1::-1]
    assert [f["id"] for f in feedback.list_flags(tmp_path, flag_type="wrong_label")] == [ids[2]]
    assert feedback.counts(tmp_path) == {
        "by_type": {"shortcut": 1, "wrong_label": 1, "wrong_prediction": 1},
        "by_class": {"(none)": 1, "circle": 2},
        "by_correct_class": {"(none)": 1, "circle": 1, "square": 1},
    }
    rows = list(csv.DictReader(io.StringIO(feedback.export_csv(feedback.list_flags(tmp_path)))))
    assert [int(r["id"]) for r in rows] == ids[::-1] and rows[-1]["params"] == '{"layer_name": "conv2"}'

    result = feedback.export_image_folder(tmp_path, tmp_path / "export")
    assert result["per_class"] == {"circle": 1, "square": 1} and result["skipped"] == 1
    assert sorted(p.parent.name for p in (tmp_path / "export").rglob("*.png")) == ["circle", "square"]

    assert feedback.delete_flag(tmp_path, ids[0])
    assert feedback.image_path(tmp_path, first).exists()  # still used by the shortcut flag
    assert feedback.delete_flag(tmp_path, ids[1])
    assert not feedback.image_path(tmp_path, first).exists()  # its last flag is gone: so is the image
    assert not feedback.delete_flag(tmp_path, ids[1])
    assert feedback.count_flags(tmp_path) == 1


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"flag_type": "meh", "run_id": "r"}, "flag type"),
        ({"flag_type": "shortcut", "run_id": ""}, "run"),
        ({"flag_type": "shortcut", "run_id": "r", "source": "fax"}, "source"),
        ({"flag_type": "shortcut", "run_id": "r", "image": b"not an image"}, "not an image"),
        ({"flag_type": "shortcut", "run_id": "r", "params": {"x": object()}}, "params"),
    ],
)
def test_refuses_bad_flags(tmp_path, kwargs, words):
    image = kwargs.pop("image", png(4, 4))
    with pytest.raises(feedback.FeedbackError, match=f"(?i){words}"):
        feedback.add_flag(tmp_path, image, **kwargs)
    assert feedback.count_flags(tmp_path) == 0


def test_migrates_a_version_1_database(tmp_path):
    old = feedback.connect(tmp_path, target=1)
    old.execute(
        "INSERT INTO flags (created_at, flag_type, run_id, image_sha256, image_file, app_version) "
        "VALUES ('2026-01-01T00:00:00+00:00', 'shortcut', 'old-run', 'abc', 'abc.png', '0.0.1')"
    )
    assert feedback.schema_version(old) == 1
    assert "source" not in [row[1] for row in old.execute("PRAGMA table_info(flags)")]
    old.close()
    flags = feedback.list_flags(tmp_path)  # opening it migrates
    assert len(flags) == 1 and flags[0]["run_id"] == "old-run" and flags[0]["source"] == "dashboard"
    with feedback.connect(tmp_path) as conn:
        assert feedback.schema_version(conn) == feedback.SCHEMA_VERSION == 2
        indexes = {row[1] for row in conn.execute("PRAGMA index_list(flags)")}
        assert {"flags_run", "flags_image"} <= indexes


def test_refuses_a_newer_schema(tmp_path):
    conn = feedback.connect(tmp_path)
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(feedback.FeedbackError, match="newer"):
        feedback.list_flags(tmp_path)
