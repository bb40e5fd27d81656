"""Datasets of your own (data/datasets.py): keras-retinanet's CSV dataset and COCO's instances JSON.

Part 1 ports keras-retinanet 1.0.0's tests/preprocessing/test_csv_generator.py: the same inputs, the values and
messages it expected (ours name the file and row instead of its `line N:` prefix; its empty class file was an empty
dict, here an error). Part 2 writes one generated level three ways (the OID level file, a keras-retinanet CSV in
pixels, a COCO JSON) and checks that the three readers give the same images, boxes and classes, so everything after
the reader (generator, targets, evaluation) is one code path; then the rules each reader adds (boxes outside the
image, crowd and sub-pixel boxes, missing images, malformed input) by hand-made cases; and the scripts end to end
on a CSV and a COCO dataset.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oid_retinanet.data.datasets import (
    dataset_sources,
    dataset_words,
    load_coco_dataset,
    load_csv_dataset,
    load_level_data,
    read_csv_annotations,
    read_csv_classes,
)
from oid_retinanet.errors import OIDInputError
from tests.train_helpers import make_tiny_level

ROOT = Path(__file__).resolve().parents[1]


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def classes_of(tmp_path: Path, text: str):
    return read_csv_classes(write(tmp_path, "classes.csv", text))


def annotations_of(tmp_path: Path, text: str, classes: str = "a,1\nb,2\nc,4\nd,10"):
    """keras-retinanet's `_read_annotations` result: {image: [(x1, y1, x2, y2, class name), ...]} in file order."""
    names = classes_of(tmp_path, classes).mids
    images, _, box_image, boxes, labels = read_csv_annotations(write(tmp_path, "annotations.csv", text),
                                                               classes_of(tmp_path, classes))
    result = {image: [] for image in images}
    for k, box, label in zip(box_image, boxes, labels):
        result[images[k]].append((*box.tolist(), names[label]))
    return result


def raises(tmp_path, text: str, row: int, message: str, classes: str = "a,1"):
    with pytest.raises(OIDInputError) as err:
        annotations_of(tmp_path, text, classes)
    assert err.value.row == row and message in str(err.value), str(err.value)


# Part 1: keras-retinanet's CSV generator tests

def test_read_classes(tmp_path):
    assert classes_of(tmp_path, "a,1").mids.index("a") == 1
    two = classes_of(tmp_path, "a,1\nb,2")
    assert (two.mids.index("a"), two.mids.index("b")) == (1, 2) and len(two) == 3  # max id + 1 outputs
    assert two.mids[0] == "unused-0"
    with pytest.raises(OIDInputError, match="no classes"):  # keras-retinanet: {}
        classes_of(tmp_path, "")


@pytest.mark.parametrize("text,row,message", [
    ("a,b,c", 1, "format should be 'class_name,class_id'"),
    ("a,1\nb,c,d", 2, "format should be 'class_name,class_id'"),
    ("a,b", 1, "malformed class ID: 'b'"),
    ("a,1\nb,c", 2, "malformed class ID: 'c'"),
    ("a,1\nb,2\na,3", 3, "duplicate class name: 'a'"),
    ("a,1\nb,1", 2, "duplicate class ID 1"),  # keras-retinanet let b overwrite a's label
])
def test_read_classes_errors(tmp_path, text, row, message):
    with pytest.raises(OIDInputError) as err:
        classes_of(tmp_path, text)
    assert err.value.row == row and message in str(err.value)


def test_read_annotations(tmp_path):
    assert annotations_of(tmp_path, "a.png,0,1,2,3,a\nb.png,4,5,6,7,b\nc.png,8,9,10,11,c\nd.png,12,13,14,15,d\n") == {
        "a.png": [(0, 1, 2, 3, "a")], "b.png": [(4, 5, 6, 7, "b")], "c.png": [(8, 9, 10, 11, "c")],
        "d.png": [(12, 13, 14, 15, "d")]}
    assert annotations_of(tmp_path, "a.png,0,1,2,3,a\nb.png,4,5,6,7,b\na.png,8,9,10,11,c\n") == {
        "a.png": [(0, 1, 2, 3, "a"), (8, 9, 10, 11, "c")], "b.png": [(4, 5, 6, 7, "b")]}


def test_read_annotations_empty_image(tmp_path):
    assert annotations_of(tmp_path, "a.png,,,,,\nb.png,,,,,", "a,1") == {"a.png": [], "b.png": []}
    # a line without a box does not clear the image's earlier boxes
    assert annotations_of(tmp_path, "a.png,0,1,2,3,a\na.png,,,,,", "a,1") == {"a.png": [(0, 1, 2, 3, "a")]}


@pytest.mark.parametrize("text,row,message", [
    ("a.png,1,2,3,a", 1, "format should be 'img_file,x1,y1,x2,y2,class_name' or 'img_file,,,,,'"),
    ("a.png,0,1,2,3,a\na.png,1,2,3,a", 2, "format should be"),
    ("a.png,a,0,1,2,a", 1, "malformed x1: 'a'"),
    ("a.png,0,a,1,2,a", 1, "malformed y1: 'a'"),
    ("a.png,0,1,a,2,a", 1, "malformed x2: 'a'"),
    ("a.png,0,1,2,a,a", 1, "malformed y2: 'a'"),
    ("a.png,0,1,2,3,g", 1, "unknown class name: 'g'"),
    ("a.png,1,2,1,3,g", 1, "x2 (1) must be higher than x1 (1)"),  # the box is checked before the class
    ("a.png,9,2,5,3,g", 1, "x2 (5) must be higher than x1 (9)"),
    ("a.png,1,2,3,2,a", 1, "y2 (2) must be higher than y1 (2)"),
    ("a.png,1,8,3,5,a", 1, "y2 (5) must be higher than y1 (8)"),
    ("a.png,0,1,2,nan,a", 1, "malformed y2: 'nan'"),  # ours: float() takes nan and inf, we do not
])
def test_read_annotations_errors(tmp_path, text, row, message):
    raises(tmp_path, text, row, message)


def test_decimal_coordinates_and_blank_lines(tmp_path):
    # keras-retinanet took integers only; exported datasets often have sub-pixel boxes
    assert annotations_of(tmp_path, "\na.png,0.5,1.25,2,3,a\n\n", "a,1") == {"a.png": [(0.5, 1.25, 2.0, 3.0, "a")]}


# Part 2: one level, three formats

def to_csv_dataset(data, folder: Path) -> tuple[str, str]:
    """The LevelData's images and boxes as a keras-retinanet CSV dataset in pixels (paths relative to `folder`)."""
    rows = []
    for i, path in enumerate(data.paths):
        boxes, labels = data.image_boxes(i)
        rel = os.path.relpath(path, folder)
        scale = np.array([data.widths[i], data.heights[i]] * 2)
        rows += [f"{rel},{','.join(repr(float(v)) for v in box * scale)},{data.classes.names[c]}"
                 for box, c in zip(boxes, labels)] or [f"{rel},,,,,"]
    (folder / "train.csv").write_text("\n".join(rows) + "\n")
    (folder / "classes.csv").write_text("".join(f"{n},{k}\n" for k, n in enumerate(data.classes.names)))
    return str(folder / "train.csv"), str(folder / "classes.csv")


def to_coco(data, images_dir: Path, path: Path) -> str:
    """The LevelData as COCO's instances JSON (category ids 10, 20, ... listed in reverse: sorted on reading)."""
    images, annotations = [], []
    for i, p in enumerate(data.paths):
        images.append({"id": i + 100, "file_name": os.path.relpath(p, images_dir), "width": int(data.widths[i]),
                       "height": int(data.heights[i])})
        boxes, labels = data.image_boxes(i)
        for box, c in zip(boxes * np.array([data.widths[i], data.heights[i]] * 2), labels):
            annotations.append({"id": len(annotations), "image_id": i + 100, "category_id": 10 * (int(c) + 1),
                                "bbox": [box[0], box[1], box[2] - box[0], box[3] - box[1]], "iscrowd": 0})
    categories = [{"id": 10 * (k + 1), "name": n} for k, n in enumerate(data.classes.names)][::-1]
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(path)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_level(tmp_path_factory.mktemp("datasets"))


@pytest.fixture(scope="module")
def oid(tiny):
    return load_level_data(**tiny.inputs("train"))


def same_data(a, b, names_only: bool = False):
    assert list(a.image_ids) == list(b.image_ids) and a.paths == b.paths
    assert a.widths.tolist() == b.widths.tolist() and a.heights.tolist() == b.heights.tolist()
    assert a.offsets.tolist() == b.offsets.tolist() and a.labels.tolist() == b.labels.tolist()
    np.testing.assert_allclose(a.boxes, b.boxes, rtol=0, atol=1e-12)
    assert a.classes.names == b.classes.names
    if not names_only:
        assert a.classes.mids == b.classes.mids


def test_three_formats_one_level(tiny, oid, tmp_path):
    assert (np.diff(oid.offsets) == 0).any() and len(oid.boxes) > 10  # a negative image, boxes of several classes
    annotations, classes = to_csv_dataset(oid, tiny.dataset)
    from_csv = load_csv_dataset(annotations, classes)
    same_data(oid, from_csv, names_only=True)
    assert from_csv.classes.mids == oid.classes.names  # a csv dataset's classes are their names
    from_coco = load_coco_dataset(to_coco(oid, tiny.dataset, tmp_path / "instances.json"), str(tiny.dataset))
    same_data(oid, from_coco, names_only=True)
    assert from_coco.classes.mids == tuple(str(10 * (k + 1)) for k in range(len(oid.classes)))
    # the labels filter is one rule for all: by MID or display name, in the order given
    wanted = [oid.classes.names[3], oid.classes.names[0]]
    same_data(oid.only(wanted), from_csv.only(wanted), names_only=True)
    same_data(oid.only(wanted), from_coco.only(wanted), names_only=True)
    same_data(oid.only(wanted), load_level_data(**tiny.inputs("train"), labels_filter=[oid.classes.mids[3], wanted[1]]))


def test_same_batches_from_every_format(tiny, oid, tmp_path):
    from oid_retinanet.data.generator import GeneratorConfig, OpenImagesGenerator

    annotations, classes = to_csv_dataset(oid, tiny.dataset)
    config = GeneratorConfig(batch_size=2, min_side=64, max_side=96, steps=3, seed=5)
    batches = [OpenImagesGenerator(d, config)[1] for d in (oid, load_csv_dataset(annotations, classes))]
    np.testing.assert_array_equal(batches[0][0], batches[1][0])
    for key in ("regression", "classification"):
        np.testing.assert_allclose(batches[0][1][key], batches[1][1][key], rtol=0, atol=1e-5)


def test_shuffle_sampling_visits_every_image(oid):
    from oid_retinanet.data.generator import GeneratorConfig, OpenImagesGenerator

    n = len(oid)
    generator = OpenImagesGenerator(oid, GeneratorConfig(batch_size=1, sampling="shuffle", steps=n, seed=3))
    first = np.concatenate(generator.groups)
    assert sorted(first.tolist()) == list(range(n))  # one pass: every image once
    generator.start_epoch(1)
    assert sorted(np.concatenate(generator.groups).tolist()) == list(range(n))
    assert np.concatenate(generator.groups).tolist() != first.tolist()  # a new order each epoch
    longer = OpenImagesGenerator(oid, GeneratorConfig(batch_size=2, sampling="shuffle", steps=n, seed=3))
    assert np.bincount(np.concatenate(longer.groups), minlength=n).tolist() == [2] * n  # two passes


def image(path: Path, size=(40, 30)) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (90, 120, 30)).save(path)
    return path.name


def test_csv_rules(tmp_path, caplog):
    image(tmp_path / "img" / "a.jpg")  # 40 x 30
    image(tmp_path / "img" / "b.png", (20, 10))
    (tmp_path / "img" / "broken.jpg").write_bytes(b"not an image")
    classes = write(tmp_path, "classes.csv", "cat,0\ndog,1\n")
    rows = ("img/a.jpg,0,0,40,30,dog\n"      # the whole image
            "img/a.jpg,10,10,41,20,cat\n"    # reaches outside: dropped, as keras-retinanet
            "img/b.png,2,2,2.4,8,cat\n"      # under a pixel once rounded: dropped, as the original generator
            "img/missing.jpg,1,1,5,5,cat\n"  # skipped, counted
            "img/broken.jpg,,,,,\n"          # skipped, counted
            "img/b.png,,,,,\n")
    with caplog.at_level("WARNING"):
        data = load_csv_dataset(write(tmp_path, "train.csv", rows), classes)
    assert list(data.image_ids) == ["a", "b"] and data.offsets.tolist() == [0, 1, 1]
    assert data.boxes.tolist() == [[0, 0, 1, 1]] and data.labels.tolist() == [1]
    log = caplog.text
    assert "1 boxes reach outside their image" in log and "2 of 4 images are missing or unreadable" in log
    assert "row 4" in log and "1 boxes are less than a pixel" in log
    # paths relative to another folder
    (tmp_path / "elsewhere").mkdir()
    moved = write(tmp_path / "elsewhere", "train.csv", "a.jpg,0,0,4,3,cat\n")
    assert load_csv_dataset(moved, classes, base_dir=str(tmp_path / "img")).paths == [str(tmp_path / "img" / "a.jpg")]
    with pytest.raises(OIDInputError, match="none of its 1 images could be read"):
        load_csv_dataset(moved, classes)
    # two images with one file name: the caches key on it
    image(tmp_path / "img" / "sub" / "a.jpg")
    with pytest.raises(OIDInputError, match=r"two images have the file name 'a' \(rows 1 and 2\)"):
        load_csv_dataset(write(tmp_path, "twice.csv", "img/a.jpg,,,,,\nimg/sub/a.jpg,,,,,\n"), classes)


def test_coco_rules(tmp_path, caplog):
    image(tmp_path / "images" / "val2017" / "1.jpg", (100, 50))
    image(tmp_path / "images" / "val2017" / "2.jpg", (100, 50))
    doc = {"images": [{"id": 1, "file_name": "1.jpg", "width": 100, "height": 50},
                      {"id": 2, "file_name": "2.jpg", "width": 100, "height": 50},
                      {"id": 3, "file_name": "3.jpg", "width": 100, "height": 50}],  # not on disk: skipped
           "categories": [{"id": 7, "name": "zebra"}, {"id": 2, "name": "ant"}],
           "annotations": [{"image_id": 1, "category_id": 7, "bbox": [10, 5, 50, 20], "iscrowd": 0},
                           {"image_id": 1, "category_id": 2, "bbox": [0, 0, 100, 50], "iscrowd": 1},  # crowd: out
                           {"image_id": 1, "category_id": 2, "bbox": [3, 3, 0.5, 9]},  # under a pixel wide: out
                           {"image_id": 3, "category_id": 2, "bbox": [3, 3, 9, 9]}]}
    (tmp_path / "annotations").mkdir()
    path = tmp_path / "annotations" / "instances_val2017.json"
    path.write_text(json.dumps(doc))
    with caplog.at_level("INFO"):
        data = dataset_sources("coco", str(tmp_path))["validation"].load()
    assert data.classes.mids == ("2", "7") and data.classes.names == ("ant", "zebra")
    assert list(data.image_ids) == ["1", "2"] and data.offsets.tolist() == [0, 1, 1]  # image 2: a negative
    assert data.boxes.tolist() == [[0.1, 0.1, 0.6, 0.5]] and data.labels.tolist() == [1]
    assert "1 crowd boxes and 1 boxes under a pixel" in caplog.text and "1 of 3 images are missing" in caplog.text
    for change, message in [
        (lambda d: d["annotations"].append({"image_id": 1, "category_id": 5, "bbox": [1, 1, 2, 2]}),
         r"annotations\[4\]: category_id 5 is not in categories"),
        (lambda d: d["annotations"].append({"image_id": 9, "category_id": 2, "bbox": [1, 1, 2, 2]}),
         r"annotations\[4\]: image_id 9 is not in images"),
        (lambda d: d["annotations"].append({"image_id": 1, "category_id": 2, "bbox": [1, 1, 2]}),
         r"annotations\[4\]: bbox \[1, 1, 2\] is not \[x, y, width, height\]"),
        (lambda d: d["images"][0].pop("width"), r"images\[0\] has no 'width'"),
        (lambda d: d.pop("categories"), "not a COCO instances file"),
    ]:
        bad = json.loads(json.dumps(doc))
        change(bad)
        path.write_text(json.dumps(bad))
        with pytest.raises(OIDInputError, match=message):
            load_coco_dataset(str(path), str(tmp_path / "images" / "val2017"))
    path.write_text("{")
    with pytest.raises(OIDInputError, match="not a JSON file"):
        load_coco_dataset(str(path), str(tmp_path))


def test_dataset_words():
    assert dataset_words([]) == {}
    assert dataset_words(["oid", "p"]) == {"format": "oid", "dataset_path": "p"}
    assert dataset_words(["csv", "a.csv", "c.csv"]) == {"format": "csv", "annotations": "a.csv", "classes": "c.csv"}
    assert dataset_words(["coco", "p"]) == {"format": "coco", "dataset_path": "p"}
    for words in (["pascal", "p"], ["csv", "a.csv"], ["oid"]):
        with pytest.raises(OIDInputError, match="keras-retinanet's forms"):
            dataset_words(words)


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / script), *args], capture_output=True, text=True, cwd=ROOT,
                          timeout=600)


def test_debug_on_csv_and_bad_row_exit_2(tiny, oid, tmp_path):
    annotations, classes = to_csv_dataset(oid, tiny.dataset)
    done = run("retinanet_training_level_1/debug.py", "--image-min-side", "64", "--image-max-side", "80",
               "csv", annotations, classes)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].split()[:2] == ["all", str(len(oid.boxes))]
    bad = write(tmp_path, "bad.csv", "a.jpg,0,0,10,10,Apple\na.jpg,5,1,3,8,Apple\n")
    done = run("retinanet_training_level_1/debug.py", "csv", bad, classes)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"{bad}, row 2: x2 (3) must be higher than x1 (5)" in done.stderr


@pytest.mark.slow
def test_train_and_evaluate_a_csv_and_a_coco_dataset(tiny, oid, tmp_path):
    """keras-retinanet's command lines on a dataset of one's own: train (2 short epochs, per-epoch mAP on the
    validation file), then the one-command evaluation of the snapshot, which knows its classes from its card."""
    annotations, classes = to_csv_dataset(oid, tiny.dataset)
    snapshots = tmp_path / "snapshots"
    common = ["--backbone", "mobilenet128_0.25", "--no-weights", "--image-min-side", "64", "--image-max-side", "80",
              "--epochs", "2", "--steps", "3", "--workers", "1"]
    done = run("retinanet_training_level_1/train_oid_level_1_resnet50.py", *common, "--snapshot-path",
               str(snapshots), "--val-annotations", annotations, "csv", annotations, classes)
    assert done.returncode == 0, done.stderr[-3000:]
    snapshot = snapshots / "mobilenet128_0.25_oid_level_1_02.keras"
    from oid_retinanet.model.card import read_card

    card = read_card(str(snapshot))
    assert card.classes == tuple((n, n) for n in oid.classes.names)
    assert card.training["format"] == "csv" and card.training["annotations"] == annotations
    config = json.loads((snapshots / "training_config.json").read_text())
    assert config["dataset_format"] == "csv" and config["csv_classes"] == classes
    assert (snapshots / "mAP_stat_mobilenet128_0.25.txt").read_text().count("mAP") == 2
    out = tmp_path / "eval"
    done = run("retinanet_training_level_1/evaluate_retinanet_model.py", "--metric", "voc", "--output-path",
               str(tmp_path), "--output-dir", str(out), "csv", annotations, classes, str(snapshot))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((out / "map.json").read_text())
    assert report["format"] == "csv" and 0.0 <= report["mAP"] <= 1.0
    assert done.stdout.splitlines()[-1] == f"mAP: {report['mAP']:.4f}"
    # the same images as COCO: the coco form finds annotations/instances_*.json and images/<set>/
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    (coco / "images").mkdir()
    os.symlink(tiny.dataset, coco / "images" / "train2017")
    os.symlink(tiny.dataset, coco / "images" / "val2017")
    for name in ("train2017", "val2017"):
        to_coco(oid, tiny.dataset, coco / "annotations" / f"instances_{name}.json")
    done = run("retinanet_training_level_1/train_oid_level_1_resnet50.py", *common, "--epochs", "1",
               "--snapshot-path", str(tmp_path / "coco_snapshots"), "coco", str(coco))
    assert done.returncode == 0, done.stderr[-3000:]
    snapshot = tmp_path / "coco_snapshots" / "mobilenet128_0.25_oid_level_1_01.keras"
    assert read_card(str(snapshot)).classes == tuple((str(10 * (k + 1)), n) for k, n in enumerate(oid.classes.names))
    done = run("retinanet_training_level_1/evaluate_retinanet_model.py", "--metric", "voc", "--output-path",
               str(tmp_path), "--output-dir", str(tmp_path / "coco_eval"), "coco", str(coco), str(snapshot))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "coco_eval" / "map.json").read_text())
    assert report["format"] == "coco" and report["annotations"].endswith("instances_val2017.json")
