"""core.pipeline: decoders per format, files that go bad after the scan, augmentation, the on-disk cache,
evaluation batches, and resident memory that does not grow with the dataset."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from core import data, pipeline, runs
from core.training import TrainingConfig, train

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def smooth_image(rng, height: int, width: int) -> np.ndarray:
    """A gradient with a blob: resizing it is a fair test (noise would be the worst case of aliasing)."""
    yy, xx = np.mgrid[0:height, 0:width] / max(height, width)
    image = rng.uniform(0, 255, 3) * (1 - xx[..., None]) + rng.uniform(0, 255, 3) * yy[..., None]
    image[(xx - 0.5) ** 2 + (yy - 0.5) ** 2 < 0.05] = rng.uniform(0, 255, 3)
    return np.clip(image, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def formats(tmp_path_factory):
    """One file per format and mode, with the decoder each should get."""
    folder = tmp_path_factory.mktemp("formats")
    rng = np.random.default_rng(0)
    rgb = Image.fromarray(smooth_image(rng, 40, 50))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated by 90 degrees: only Pillow applies it
    files = {
        "rgb.png": (lambda p: rgb.save(p), pipeline.ROUTE_TF),
        "grey.png": (lambda p: rgb.convert("L").save(p), pipeline.ROUTE_TF),
        "photo.jpg": (lambda p: rgb.save(p, quality=90), pipeline.ROUTE_JPEG),
        "bitmap.bmp": (lambda p: rgb.save(p), pipeline.ROUTE_TF),
        "palette.gif": (lambda p: rgb.convert("P").save(p), pipeline.ROUTE_TF),
        "alpha.png": (lambda p: rgb.convert("RGBA").save(p), pipeline.ROUTE_PILLOW),
        "cmyk.jpg": (lambda p: rgb.convert("CMYK").save(p), pipeline.ROUTE_PILLOW),
        "rotated.jpg": (lambda p: rgb.save(p, exif=exif), pipeline.ROUTE_PILLOW),
        "deep.png": (
            lambda p: Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257).save(p),
            pipeline.ROUTE_PILLOW,
        ),
        "scan.tif": (lambda p: rgb.save(p), pipeline.ROUTE_PILLOW),
        "web.webp": (lambda p: rgb.save(p, lossless=True), pipeline.ROUTE_PILLOW),
    }
    expected = {}
    for name, (save, route) in files.items():
        save(folder / name)
        expected[str(folder / name)] = route
    return expected


def test_each_format_gets_its_decoder(formats):
    assert dict(zip(formats, pipeline.plan_routes(list(formats)).tolist())) == formats


@pytest.mark.parametrize("size", [(40, 50), (32, 32), (64, 80)])
def test_decoded_pixels_match_the_pillow_decoder(formats, size):
    """TensorFlow's decoders and resize are at most one grey level away from `core.data.load_image`, and
    identical at the file's own size; the Pillow route is identical always."""
    paths = list(formats)
    decoded = list(pipeline.decoded_dataset(paths, None, size, pipeline.plan_routes(paths)).as_numpy_iterator())
    assert [index for _, _, index in decoded] == list(range(len(paths)))  # in order, none dropped
    for image, _, index in decoded:
        reference = data.load_image(paths[index], size).astype(int)
        difference = np.abs(image.astype(int) - reference).max()
        if formats[paths[index]] == pipeline.ROUTE_PILLOW or size == (40, 50):
            assert difference == 0, paths[index]
        else:
            assert difference <= 1, (paths[index], difference)


def test_files_that_go_bad_after_the_scan_are_skipped_and_counted(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i in range(8):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(smooth_image(rng, 20, 20)).save(paths[-1])
    routes = pipeline.plan_routes(paths)
    tracker = pipeline.PassTracker(paths)
    dataset = pipeline.training_dataset(
        paths, list(range(8)), (16, 16), 3, routes=routes, tracker=tracker, shuffle=True
    )
    Path(paths[1]).unlink()  # deleted after the scan
    Path(paths[4]).write_bytes(b"not a png any more")  # changed: TensorFlow's decoder fails on it
    Path(paths[6]).write_bytes(Path(paths[6]).read_bytes()[:60])  # truncated
    routes_now = pipeline.plan_routes(paths)
    for _ in range(2):  # two epochs: each is complete, each skips the same three files
        labels = [int(v) for _, batch in dataset for v in batch.numpy()]
        assert sorted(labels) == [0, 2, 3, 5, 7]
        skipped = dict(tracker.end_pass())
        assert sorted(skipped) == sorted([paths[1], paths[4], paths[6]])
        assert skipped[paths[1]] == "the file was deleted after the scan"
    assert tracker.summary()["skipped_files"] == 3
    # Planned again after the damage, the damaged files go to Pillow, which says why it refuses them.
    tracker = pipeline.PassTracker(paths)
    list(pipeline.decoded_dataset(paths, None, (16, 16), routes_now, tracker))
    assert "not an image" in dict(tracker.end_pass())[paths[4]]


def test_a_training_run_survives_files_deleted_after_the_scan(tmp_path, tiny_shapes_dir):
    import shutil

    dataset = tmp_path / "shapes"
    shutil.copytree(tiny_shapes_dir, dataset)
    gone = []

    def delete_some(info):  # after the scan, before the pipeline opens anything
        if info.get("stage") == "loading" and not gone:
            for path in sorted((dataset / "train").glob("*/*.png"))[:2]:
                path.unlink()
                gone.append(str(path))

    config = TrainingConfig(epochs=1, image_size=32, batch_size=8)
    run = train(tmp_path / "ws", dataset, config, progress=delete_some)
    assert run.status == runs.COMPLETE
    record = run.meta["input_pipeline"]
    assert record["unreadable_files"] == 2
    assert sorted(e["path"] for e in record["unreadable_examples"]) == sorted(gone)
    assert record["decoders"] == {"tensorflow": 30 - 2, "pillow": 2}  # a file gone at planning goes to Pillow
    assert run.meta["distribution"]["global_batch_size"] == 8 and run.meta["distribution"]["replicas"] == 1


def test_augmentation_flips_and_zooms_each_image_on_its_own():
    import tensorflow as tf

    images = tf.constant(np.random.default_rng(2).uniform(0, 255, (16, 8, 10, 3)), tf.float32)
    flipped_only = pipeline.augment_batch(images, tf.constant([3, 4]), min_scale=1.0).numpy()
    mirrored = [np.allclose(out, img[:, ::-1], atol=1e-3) for out, img in zip(flipped_only, images.numpy())]
    kept = [np.allclose(out, img, atol=1e-3) for out, img in zip(flipped_only, images.numpy())]
    assert all(m or k for m, k in zip(mirrored, kept)) and 0 < sum(mirrored) < 16  # some flipped, some not
    zoomed = pipeline.augment_batch(images, tf.constant([3, 4])).numpy()
    again = pipeline.augment_batch(images, tf.constant([3, 4])).numpy()
    np.testing.assert_array_equal(zoomed, again)  # a seed gives the same augmentation
    assert zoomed.shape == images.shape and zoomed.min() >= 0 and zoomed.max() <= 255
    assert not np.allclose(zoomed, flipped_only)


def test_the_cache_is_read_instead_of_the_files(tmp_path):
    """Once built, the on-disk cache gives the decoded images even when the files are gone."""
    rng = np.random.default_rng(3)
    paths = []
    for i in range(10):
        paths.append(str(tmp_path / "images" / f"{i}.png"))
        Path(paths[-1]).parent.mkdir(exist_ok=True)
        Image.fromarray(smooth_image(rng, 24, 24)).save(paths[-1])
    routes = pipeline.plan_routes(paths)
    labels = list(range(10))
    prefix = pipeline.cache_prefix(tmp_path / "cache", paths, (16, 16), routes)
    assert prefix == pipeline.cache_prefix(tmp_path / "cache", paths, (16, 16), routes)  # keyed on the files
    assert prefix != pipeline.cache_prefix(tmp_path / "cache", paths, (20, 20), routes)  # and on the size
    assert not pipeline.build_cache(paths, labels, (16, 16), routes, prefix, cancelled=lambda: True)
    assert not pipeline.cache_exists(prefix) and not list((tmp_path / "cache").iterdir())  # nothing half-made
    assert pipeline.build_cache(paths, labels, (16, 16), routes, prefix)
    direct = {int(y): x for x, y, _ in pipeline.decoded_dataset(paths, labels, (16, 16), routes).as_numpy_iterator()}
    for path in paths:
        Path(path).unlink()
    cached = pipeline.training_dataset(paths, labels, (16, 16), 4, routes=routes, cache=prefix, shuffle=True)
    seen = {int(y): x for images, batch in cached for x, y in zip(images.numpy(), batch.numpy())}
    assert sorted(seen) == labels
    for label, image in seen.items():
        np.testing.assert_array_equal(image, direct[label].astype(np.float32))


def test_building_the_cache_counts_only_the_files_it_could_not_read(tmp_path):
    """The cache build is a pass: readable files are delivered, only the broken one is counted as skipped."""
    rng = np.random.default_rng(5)
    paths = []
    for i in range(6):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(smooth_image(rng, 24, 24)).save(paths[-1])
    routes = pipeline.plan_routes(paths)
    Path(paths[2]).write_bytes(b"not a png any more")  # changed after the scan
    tracker = pipeline.PassTracker(paths)
    prefix = pipeline.cache_prefix(tmp_path / "cache", paths, (16, 16), routes)
    assert pipeline.build_cache(paths, list(range(6)), (16, 16), routes, prefix, tracker)
    assert tracker.delivered() == 5
    assert [path for path, _ in tracker.end_pass()] == [paths[2]]
    assert tracker.summary()["skipped_files"] == 1


def test_image_batches_are_the_pillow_pixels_in_order(tmp_path, tiny_trained_run):
    paths = list(runs.load_predictions(tiny_trained_run)["path"])
    batches = list(pipeline.image_batches(paths, (32, 32), batch_size=4))
    assert [len(b) for b in batches] == [4, 2]
    np.testing.assert_array_equal(np.concatenate(batches), data.load_images(paths, (32, 32)))
    rows, images, labels = next(pipeline.split_batches(tiny_trained_run, "test", batch_size=6))
    assert list(rows["path"]) == paths and images.shape == (6, 32, 32, 3)
    assert [tiny_trained_run.class_names[i] for i in labels] == list(rows["class_name"])
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG broken")
    with pytest.raises(data.ImageError, match=f"^{broken}: "):
        list(pipeline.image_batches([paths[0], str(broken)], (32, 32)))


MEMORY_SCRIPT = r"""
import json, resource, sys
sys.path.insert(0, sys.argv[1])
import numpy as np
from core import pipeline

def rss_mb():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS")) / 1024

paths = json.loads(open(sys.argv[2]).read())
found = {}
for count in (500, len(paths)):
    chosen = paths[:count]
    tracker = pipeline.PassTracker(chosen)
    dataset = pipeline.training_dataset(chosen, [i % 3 for i in range(count)], (128, 128), 32,
                                        routes=pipeline.plan_routes(chosen), tracker=tracker, shuffle=True, augment=True)
    peak = 0.0
    for images, _ in dataset:
        peak = max(peak, rss_mb())
    found[count] = {"peak_mb": peak, "delivered": tracker.delivered()}
print(json.dumps(found))
"""


def test_memory_stays_bounded_as_the_dataset_grows(tmp_path):
    """An epoch over 2,000 files at 128 px peaks at about the memory of an epoch over 500 files: nothing holds
    the split (held in memory as float32, the 1,500 extra images alone would take 1,500 x 128 x 128 x 3 x 4
    bytes = 295 MB)."""
    rng = np.random.default_rng(4)
    paths = []
    for i in range(2000):
        path = tmp_path / "files" / f"{i:04d}.png"
        path.parent.mkdir(exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(path, compress_level=0)
        paths.append(str(path))
    listing = tmp_path / "paths.json"
    listing.write_text(json.dumps(paths))
    done = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, str(PROJECT_ROOT), str(listing)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = {int(k): v for k, v in json.loads(done.stdout.strip().splitlines()[-1]).items()}
    assert found[500]["delivered"] == 500 and found[2000]["delivered"] == 2000
    growth = found[2000]["peak_mb"] - found[500]["peak_mb"]
    print(f"peak RSS: 500 files {found[500]['peak_mb']:.0f} MB, 2000 files {found[2000]['peak_mb']:.0f} MB")
    assert growth < 60, found  # a held split would add about 295 MB
    assert found[2000]["peak_mb"] < 3000
