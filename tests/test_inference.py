"""Stage 4 inference (oid_retinanet.predict.inference, retinanet_inference_example.py) with the fixture model.

The model is ../shared/fixtures/keras_retinanet/ (ResNet50, 7 classes; .h5 files rebuilt by its materialize.py as in
test_model.py), run on its 5 images at min side 128, max side 160 to stay fast. Rules:
- cached rows against the model called directly on the preprocessed, resized image (and on its mirror), boxes
  divided by that resized image's width and height: labels exact, scores atol 1e-5, boxes atol 1e-3 px (the
  noise between a batch of 2 and a batch of 1, measured in test_model.py);
- CSVs: byte for byte for the same caches through the same merge. A resumed run against a clean one: same rows,
  labels and box count, numbers within 2e-6 (scores, 6 decimals) and 1.01e-4 (coordinates, 4 decimals): TF
  computes an image's detections up to ~5e-7 differently when it is the first one a process predicts.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, fixture_path

keras = pytest.importorskip("keras")

import retinanet_inference_example as script  # noqa: E402
from oid_retinanet.data.preprocess import prepare_image  # noqa: E402
from oid_retinanet.model.h5 import load_keras_retinanet  # noqa: E402
from oid_retinanet.oid.classes import read_class_descriptions  # noqa: E402
from oid_retinanet.predict.cache import cache_file, cache_ids, read_cache, recorded_classes  # noqa: E402
from oid_retinanet.predict.ensemble import write_mirror_merged_csv  # noqa: E402
from oid_retinanet.predict.inference import (  # noqa: E402
    FAILURES_FILE,
    image_id,
    list_images,
    model_num_classes,
    predict_images,
    shard,
    uncached,
    visualize,
)

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

STEMS = ["img_a_480x640.png", "img_b_gray_500x300.png", "img_c_wide_150x600.png", "img_d_333x500.jpg",
         "img_small_128x160.png"]
SIDES = ["--min-side", "128", "--max-side", "160"]
SCORE_ATOL = 1e-5
BOX_ATOL_PX = 1e-3


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict[str, Path]:
    """Model files, a 7-class labels CSV and an image folder (the 5 fixture images and one unreadable file)."""
    fx = fixture_path("keras_retinanet")
    spec = importlib.util.spec_from_file_location("kr_materialize", fx / "materialize.py")
    materialize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(materialize)
    layout = materialize.load_layout(str(fx / "layout.json.gz"))
    root = tmp_path_factory.mktemp("inference")
    files = {"root": root}
    for which in ("train", "inference"):
        files[which] = root / f"{which}.h5"
        materialize.materialize(layout, which, str(files[which]))
    files["labels"] = root / "labels.csv"
    files["labels"].write_text("".join(f"/m/0cls{i},Class {i}\n" for i in range(7)))
    files["images"] = root / "images"
    files["images"].mkdir()
    for name in STEMS:
        shutil.copyfile(fx / "images" / name, files["images"] / name)
    (files["images"] / "bad.jpg").write_bytes(b"not an image")
    return files


@pytest.fixture(scope="module")
def model(env):
    return load_keras_retinanet(env["inference"])


@pytest.fixture(scope="module")
def clean_run(env) -> dict[str, Path]:
    """The script on the image folder, in this process: cache folder and CSV."""
    cache, out = env["root"] / "clean_cache", env["root"] / "clean.csv"
    rc = script.main(["--weights", str(env["inference"]), "--images", str(env["images"]), "--labels",
                      str(env["labels"]), "--cache-dir", str(cache), "--output", str(out), *SIDES])
    assert rc == 0
    return {"cache": cache, "csv": out}


def _expected_rows(model, path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The model on the image and on its mirror, one call each; boxes / (resized width, height)."""
    x, _ = prepare_image(path, 128, 160)
    h, w = x.shape[:2]
    rows = [[np.asarray(v)[0] for v in model.predict_on_batch(img[None])] for img in (x, x[:, ::-1])]
    boxes = np.stack([r[0] for r in rows]).astype(np.float64) / np.array([w, h, w, h])
    labels = np.stack([r[2] for r in rows])
    boxes[labels < 0] = -1
    return boxes, np.stack([r[1] for r in rows]), labels, np.array([w, h, w, h])


def _run(*args: str, **kwargs) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(REPO / "retinanet_inference_example.py"), *args],
                          capture_output=True, text=True, env=env, cwd=REPO, timeout=300, **kwargs)


# ------------------------------------------------------------------------------------------------ library
def test_list_images_and_shard(env, tmp_path):
    folder = list_images(env["images"])
    assert [p.name for p in folder] == sorted(STEMS + ["bad.jpg"])
    assert [p.name for p in list_images(str(env["images"] / "img_*.png"))] == [s for s in STEMS if s.endswith("png")]
    listing = tmp_path / "list.txt"
    relative = os.path.relpath(env["images"] / STEMS[0], tmp_path)
    listing.write_text(f"# comment\n{env['images'] / STEMS[3]}\n\n{relative}\n")
    assert [p.resolve() for p in list_images(listing)] == [env["images"] / STEMS[3], env["images"] / STEMS[0]]
    paths = [f"p{i:02d}.jpg" for i in range(11)]
    parts = [shard(paths[::-1], i, 3) for i in range(3)]
    assert sorted(p for part in parts for p in part) == [Path(p) for p in paths]
    assert parts[1] == [Path(p) for p in paths[1::3]]  # deterministic: the sorted paths, every 3rd
    with pytest.raises(ValueError):
        shard(paths, 3, 3)


def test_uncached_images_are_those_without_a_finished_cache_file(tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    paths = [tmp_path / f"{stem}.jpg" for stem in ("a", "b", "c", "d")]
    cache_file(cache, "b").write_bytes(b"")
    cache_file(cache, "d").write_bytes(b"")
    (cache / f".{cache_file(cache, 'c').name}.tmp123").write_bytes(b"")  # a killed run's unfinished file
    assert uncached(paths, cache) == [paths[0], paths[2]]


def test_cached_rows_equal_the_model_on_image_and_mirror(env, model, clean_run):
    detections = 0
    for name in STEMS:
        cache = read_cache(cache_file(clean_run["cache"], image_id(name)), n_classes=7)
        boxes, scores, labels, size = _expected_rows(model, env["images"] / name)
        assert cache.rows == 2 and cache.boxes.dtype == np.float32
        np.testing.assert_array_equal(cache.labels, labels)
        np.testing.assert_allclose(cache.scores, scores, atol=SCORE_ATOL, rtol=0)
        np.testing.assert_allclose(cache.boxes, boxes, atol=BOX_ATOL_PX / size.min(), rtol=0)
        detections += int((labels >= 0).sum())
    assert detections > 100  # the fixture model does detect something at this size


def test_no_flip_has_one_row(env, model, clean_run, tmp_path):
    path = env["images"] / STEMS[3]
    report = predict_images(model, [path], tmp_path, 128, 160, flip=False, progress=False)
    assert report.predicted == 1
    one = read_cache(cache_file(tmp_path, image_id(path)))
    two = read_cache(cache_file(clean_run["cache"], image_id(path)))
    assert one.rows == 1
    np.testing.assert_array_equal(one.labels[0], two.labels[0])
    np.testing.assert_allclose(one.boxes[0], two.boxes[0], atol=1e-5, rtol=0)


def test_batched_images_equal_one_at_a_time(env, model, clean_run, tmp_path):
    """Two images of one resized shape share a model call with batch_size 2; their caches do not change."""
    names = ["img_d_333x500.jpg", "img_d_copy.jpg"]
    shutil.copyfile(env["images"] / names[0], tmp_path / names[1])
    paths = [env["images"] / names[0], tmp_path / names[1]]
    predict_images(model, paths, tmp_path / "cache", 128, 160, batch_size=2, progress=False)
    ref = read_cache(cache_file(clean_run["cache"], "img_d_333x500"))
    for name in names:
        got = read_cache(cache_file(tmp_path / "cache", image_id(name)))
        np.testing.assert_array_equal(got.labels, ref.labels)
        np.testing.assert_allclose(got.scores, ref.scores, atol=SCORE_ATOL, rtol=0)


def test_unreadable_image_is_listed_and_the_others_done(env, clean_run):
    assert cache_ids(clean_run["cache"]) == sorted(image_id(s) for s in STEMS)
    lines = (clean_run["cache"] / FAILURES_FILE).read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"{env['images'] / 'bad.jpg'}\t")
    assert "cannot read image" in lines[0]


def test_visualize_draws_boxes(env, clean_run, tmp_path):
    import cv2

    paths = [env["images"] / s for s in STEMS]
    written = visualize(paths, clean_run["cache"], tmp_path, 2, [f"Class {i}" for i in range(7)], score_thr=0.05)
    assert [p.name for p in written] == ["img_a_480x640.jpg", "img_b_gray_500x300.jpg"]
    drawn = cv2.imread(str(written[0]))
    cache = read_cache(cache_file(clean_run["cache"], "img_a_480x640"))
    x1, y1 = (cache.boxes[0, 0, :2] * [640, 480]).astype(int)
    assert drawn.shape == (480, 640, 3)
    assert abs(drawn[y1 + 8, x1 + 1].astype(int) - [0, 255, 0]).max() < 60  # the first box's left edge, green


def test_model_error_keeps_finished_work(env, model, tmp_path):
    """The model failing on the third image: the first two caches and failures.txt are written, the error raised."""

    class FailsThird:
        calls = 0

        def predict_on_batch(self, x):
            FailsThird.calls += 1
            if FailsThird.calls == 3:
                raise RuntimeError("out of memory")
            return model.predict_on_batch(x)

    paths = [env["images"] / s for s in sorted(STEMS + ["bad.jpg"])]
    with pytest.raises(RuntimeError, match="out of memory"):
        predict_images(FailsThird(), paths, tmp_path, 128, 160, progress=False)
    assert cache_ids(tmp_path) == [image_id(s) for s in sorted(STEMS)[:2]]
    assert (tmp_path / FAILURES_FILE).read_text().startswith(str(env["images"] / "bad.jpg"))


# ------------------------------------------------------------------------------------------------- script
def test_model_facts_and_default_labels(env, model, tmp_path):
    """A keras-retinanet .h5 has no card: its facts are derived (backbone, class count; the backbone's sides), its
    classes must be named by a flag, a sidecar card or the released list of its class count."""
    from oid_retinanet.model.backbones import backbone_of_model
    from oid_retinanet.model.card import ModelCard, write_sidecar
    from oid_retinanet.predict.resolve import _classes, resolve_model

    assert (backbone_of_model(model), model_num_classes(model)) == ("resnet50", 7)
    weights = tmp_path / "model.h5"
    shutil.copyfile(env["inference"], weights)
    with pytest.raises(Exception, match="no released class list has 7 classes.*--labels"):
        resolve_model(str(weights))
    resolved = resolve_model(str(weights), labels=str(env["labels"]))
    assert resolved.labels.mids == tuple(f"/m/0cls{i}" for i in range(7)) and resolved.sides == (768, 1024)
    assert resolved.card.is_assumed("sides") and not resolved.card.is_assumed("anchors")  # an inference .h5
    with pytest.raises(Exception, match="6 classes, but the model has 7"):
        resolve_model(str(weights), labels=str(_write(tmp_path / "six.csv", 6)))
    # a sidecar card names the classes and sides; a flag still overrides the sides
    write_sidecar(weights, resolved.card.with_(min_side=128, max_side=160))
    beside = resolve_model(str(weights))
    assert beside.labels.mids == resolved.labels.mids and beside.sides == (128, 160)
    assert resolve_model(str(weights), min_side=100).sides == (100, 160)
    released = _classes(ModelCard("resnet50", 443), None, None, required=True)
    assert len(released) == 443 and all(m.startswith("/m/") for m in released.mids)
    assert _classes(ModelCard("resnet50", 7), None, None, required=False) is None


def _write(path: Path, n: int) -> Path:
    path.write_text("".join(f"/m/0cls{i},Class {i}\n" for i in range(n)))
    return path


def test_csv_is_the_mirror_merge_of_the_cache(env, clean_run, tmp_path):
    out = tmp_path / "merged.csv"
    write_mirror_merged_csv(clean_run["cache"], out, read_class_descriptions(str(env["labels"])), progress=False)
    text = clean_run["csv"].read_text()
    assert text == out.read_text()
    assert len(text.splitlines()) == 1 + len(STEMS)


def test_from_cache_needs_no_model(env, clean_run, tmp_path):
    out = tmp_path / "from_cache.csv"
    code = ("import sys, retinanet_inference_example as s\n"
            f"rc = s.main(['--from-cache', '--cache-dir', {str(clean_run['cache'])!r}, '--labels', "
            f"{str(env['labels'])!r}, '--output', {str(out)!r}])\n"
            "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
            "sys.exit(rc)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert out.read_text() == clean_run["csv"].read_text()


def test_cache_folder_records_its_class_list(env, clean_run, tmp_path, capsys):
    """classes.csv: --from-cache needs no --labels; a model with another class list may not write there."""
    assert recorded_classes(clean_run["cache"]).mids == read_class_descriptions(str(env["labels"])).mids
    out = tmp_path / "from_cache.csv"
    assert script.main(["--from-cache", "--cache-dir", str(clean_run["cache"]), "--output", str(out)]) == 0
    assert out.read_text() == clean_run["csv"].read_text()
    other = tmp_path / "other.csv"
    other.write_text("".join(f"/m/0other{i},Other {i}\n" for i in range(7)))
    before = sorted(os.listdir(clean_run["cache"]))
    rc = script.main(["--weights", str(env["inference"]), "--images", str(env["images"]), "--labels", str(other),
                      "--cache-dir", str(clean_run["cache"]), "--output", str(tmp_path / "o.csv"), *SIDES])
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err
    assert "classes.csv" in err and "label 0 is /m/0cls0 (Class 0), not /m/0other0 (Other 0)" in err
    assert sorted(os.listdir(clean_run["cache"])) == before and not (tmp_path / "o.csv").exists()


def test_cache_folder_refuses_other_settings(env, clean_run, tmp_path, capsys):
    """settings.json: a rerun with other sides, --no-flip or other weights stops before predicting, naming each
    difference, and the folder is untouched; --overwrite-cache empties it and predicts again."""
    cache = tmp_path / "cache"
    shutil.copytree(clean_run["cache"], cache)
    settings = json.loads((cache / "settings.json").read_text())
    assert (settings["min_side"], settings["max_side"], settings["flip"], settings["format"]) == (128, 160, True, 1)
    assert settings["weights_name"] == "inference.h5" and len(settings["weights_sha256"]) == 64
    assert settings["filter"]["score_threshold"] == 0.05 and settings["filter"]["max_detections"] == 300
    before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    other_weights = tmp_path / "other.h5"
    other_weights.write_bytes(env["inference"].read_bytes() + b"\0")  # another file; h5 ignores trailing bytes
    base = ["--images", str(env["images"]), "--labels", str(env["labels"]), "--cache-dir", str(cache),
            "--output", str(tmp_path / "o.csv")]
    for extra, diffs in ((["--min-side", "96", "--max-side", "128"], ["min_side 128 -> 96", "max_side 160 -> 128"]),
                         ([*SIDES, "--no-flip"], ["flip True -> False"]),
                         ([*SIDES, "--weights", str(other_weights)], ["weights_sha256 "])):
        weights = [] if "--weights" in extra else ["--weights", str(env["inference"])]
        assert script.main(weights + base + extra) == 2
        out = capsys.readouterr().err
        err = [line for line in out.splitlines() if line.startswith("error:")]
        assert len(err) == 1 and "Traceback" not in out and "to predict" not in out.split("error:")[0], out
        assert str(cache / "settings.json") in err[0] and "--overwrite-cache" in err[0], err
        assert all(d in err[0] for d in diffs) and err[0].count(" -> ") == len(diffs), err
        assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before and not (tmp_path / "o.csv").exists()
    assert script.main(["--weights", str(env["inference"]), *base, *SIDES, "--no-flip", "--overwrite-cache"]) == 0
    assert json.loads((cache / "settings.json").read_text())["flip"] is False
    assert {read_cache(cache_file(cache, i)).rows for i in cache_ids(cache)} == {1}
    assert sorted(cache_ids(cache)) == sorted(cache_ids(clean_run["cache"]))


def test_resume_after_kill(env, clean_run, tmp_path):
    """Killed (SIGKILL) while blocked on its third image (a FIFO: opening it waits for a writer), after the first
    two were cached; the rerun keeps those two files untouched and ends with the clean run's CSV."""
    folder = tmp_path / "images"
    folder.mkdir()
    for name in STEMS:
        if name.startswith("img_c"):
            os.mkfifo(folder / name)
        else:
            shutil.copyfile(env["images"] / name, folder / name)
    listing = tmp_path / "list.txt"
    listing.write_text("".join(f"images/{name}\n" for name in STEMS))
    cache, out = tmp_path / "cache", tmp_path / "out.csv"
    args = ["--weights", str(env["inference"]), "--images", str(listing), "--labels", str(env["labels"]),
            "--cache-dir", str(cache), "--output", str(out), *SIDES]
    first = [image_id(s) for s in STEMS[:2]]
    proc = subprocess.Popen([sys.executable, str(REPO / "retinanet_inference_example.py"), *args], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    try:
        deadline = time.monotonic() + 240
        while not all(cache_file(cache, i).exists() for i in first):
            assert proc.poll() is None, "the run ended before it was killed"
            assert time.monotonic() < deadline, "the first cache files never appeared"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert cache_ids(cache) == first and not out.exists()
    before = {i: os.stat(cache_file(cache, i)) for i in first}
    os.unlink(folder / STEMS[2])
    shutil.copyfile(env["images"] / STEMS[2], folder / STEMS[2])
    result = _run(*args)
    assert result.returncode == 0, result.stderr
    assert "5 images, 2 already cached, 3 to predict" in result.stderr
    for i, st in before.items():
        now = os.stat(cache_file(cache, i))
        assert (now.st_ino, now.st_mtime_ns) == (st.st_ino, st.st_mtime_ns)
    _assert_csvs_close(out, clean_run["csv"])


def _assert_csvs_close(got: Path, ref: Path) -> None:
    """Same ImageIds in order, same labels per box; scores within 2e-6, coordinates within 1.01e-4."""
    got_rows, ref_rows = got.read_text().splitlines(), ref.read_text().splitlines()
    assert got_rows[0] == ref_rows[0] and len(got_rows) == len(ref_rows)
    for g, r in zip(got_rows[1:], ref_rows[1:]):
        (gid, gpred), (rid, rpred) = g.split(","), r.split(",")
        assert gid == rid
        gt, rt = np.array(gpred.split()).reshape(-1, 6), np.array(rpred.split()).reshape(-1, 6)
        assert gt.shape == rt.shape and (gt[:, 0] == rt[:, 0]).all(), gid
        np.testing.assert_allclose(gt[:, 1].astype(float), rt[:, 1].astype(float), atol=2e-6, rtol=0)
        np.testing.assert_allclose(gt[:, 2:].astype(float), rt[:, 2:].astype(float), atol=1.01e-4, rtol=0)


def test_bad_weights_file_is_one_line(tmp_path, env):
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"junk")
    result = _run("--weights", str(bad), "--images", str(env["images"]), "--labels", str(env["labels"]),
                  "--cache-dir", str(tmp_path / "cache"), "--output", str(tmp_path / "out.csv"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: ") and "bad.h5" in result.stderr
    assert not (tmp_path / "cache").exists() and not (tmp_path / "out.csv").exists()


def test_shards_partition_the_images(env, clean_run, tmp_path):
    """--shard 0/2 then 1/2 (with the training model, converted on load) into one cache folder: each caches its
    half of the sorted images, writes no CSV; together they equal the clean run's caches."""
    cache, out = tmp_path / "cache", tmp_path / "out.csv"
    ordered = sorted(STEMS + ["bad.jpg"])
    base = ["--weights", str(env["train"]), "--images", str(env["images"]), "--labels", str(env["labels"]),
            "--cache-dir", str(cache), "--output", str(out), *SIDES]
    assert script.main([*base, "--shard", "0/2"]) == 0
    shard0 = sorted(image_id(s) for s in ordered[0::2] if s != "bad.jpg")
    assert cache_ids(cache) == shard0 and not out.exists()
    assert script.main([*base, "--shard", "1/2"]) == 0
    assert cache_ids(cache) == sorted(image_id(s) for s in STEMS) and not out.exists()
    assert shard0 and set(shard0) != set(cache_ids(cache))
    for i in cache_ids(cache):
        got, ref = read_cache(cache_file(cache, i)), read_cache(cache_file(clean_run["cache"], i))
        np.testing.assert_array_equal(got.labels, ref.labels)
        np.testing.assert_allclose(got.scores, ref.scores, atol=SCORE_ATOL, rtol=0)
        np.testing.assert_allclose(got.boxes, ref.boxes, atol=1e-5, rtol=0)
