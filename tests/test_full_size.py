"""The synthetic full-size Open Images (`demo.full_size`): exact counts, the official columns, hex ids, the long
tail and the flag rates; stage 1's reader takes its files as it takes the official ones."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from oid_retinanet.demo import full_size as fs
from oid_retinanet.oid.annotations import BOX_COLUMNS, read_boxes
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.resources import resource_path


@pytest.fixture(scope="module")
def challenge_mids():
    return read_class_descriptions(resource_path("challenge-2018-class-descriptions-500.csv")).mids


@pytest.mark.parametrize("spec", [fs.CHALLENGE_2019_TRAIN, fs.V4_TRAIN])
def test_the_long_tail_at_the_real_counts(spec):
    counts = fs.class_box_counts(spec.classes, spec.boxes)
    assert counts.sum() == spec.boxes and counts.min() >= 1 and len(counts) == spec.classes
    assert np.all(np.diff(counts) <= 0)  # most frequent first
    assert counts[0] > 1_000_000 and 10 <= (counts > 100_000).sum() <= 60  # a few classes with 100 k to 1 M+
    assert (counts < 1000).sum() >= spec.classes * 0.4  # hundreds under 1,000


def test_boxes_per_image_sum_exactly_and_have_a_tail():
    rng = np.random.default_rng(0)
    counts = fs.image_box_counts(100_000, 700_000, rng)
    assert counts.sum() == 700_000 and counts.min() == 1
    assert counts.max() >= 40 and np.median(counts) < 7  # skewed: the mean 7 above the median
    few = fs.image_box_counts(1000, 1010, rng)  # boxes taken back: still one an image at least
    assert few.sum() == 1010 and few.min() == 1
    with pytest.raises(ValueError, match="cannot give each of 10 images one"):
        fs.image_box_counts(10, 9, rng)


def test_a_scaled_box_file(challenge_mids, tmp_path):
    spec = fs.CHALLENGE_2019_TRAIN.scaled(0.002)
    assert (spec.images, spec.classes) == (3486, 500) and spec.boxes == round(12_195_144 * 0.002)
    df = fs.box_table(spec, challenge_mids, seed=5)
    assert list(df.columns) == list(BOX_COLUMNS) and len(df) == spec.boxes
    ids = df["ImageID"].unique()
    assert len(ids) == spec.images and all(re.fullmatch(r"[0-9a-f]{16}", i) for i in ids)
    # rows grouped by image as in the official files
    assert (df["ImageID"] != df["ImageID"].shift()).sum() == spec.images
    assert set(df["LabelName"]) == set(challenge_mids)
    assert (df["XMin"] <= df["XMax"]).all() and (df["YMin"] <= df["YMax"]).all()
    for flag, rate in fs.FLAG_RATES.items():
        ones = (df[flag] == 1).mean()
        assert abs(ones - rate) < 4 * np.sqrt(rate * (1 - rate) / len(df)) + 1e-3, flag
    assert ((df["IsOccluded"] == -1).mean() > 0.01) and (df["IsGroupOf"] != -1).all()
    assert df.equals(fs.box_table(spec, challenge_mids, seed=5))  # seeded
    path = tmp_path / "boxes.csv"
    df.to_csv(path, index=False)
    read = read_boxes(str(path), read_class_descriptions(resource_path("challenge-2018-class-descriptions-500.csv")))
    assert len(read) == len(df)


def test_the_dataset_files_are_laid_out_as_stage_1_reads_them(tmp_path):
    rows = fs.write_dataset(tmp_path, 0.0001)
    assert rows == {"annotations/train-annotations-bbox.csv": fs.V4_TRAIN.scaled(0.0001).boxes,
                    "challenge-2019-train-detection-bbox.csv": fs.CHALLENGE_2019_TRAIN.scaled(0.0001).boxes,
                    "annotations/validation-annotations-bbox.csv": fs.CHALLENGE_2019_VALIDATION.scaled(0.0001).boxes,
                    "challenge-2019-validation-detection-bbox.csv": fs.CHALLENGE_2019_VALIDATION.scaled(0.0001).boxes}
    v4, c2019 = (read_boxes(str(tmp_path / name)) for name in list(rows)[:2])
    assert set(v4["ImageID"]) == set(c2019["ImageID"])  # the same images in both files


@pytest.fixture(scope="module")
def validation(challenge_mids):
    return fs.box_table(fs.BoxFileSpec(images=200, boxes=1400, classes=500), challenge_mids, seed=9)


def test_image_labels_verify_each_images_box_classes_and_a_few_absent_ones(validation, challenge_mids):
    labels = fs.image_labels(validation, challenge_mids)
    assert list(labels.columns) == ["ImageID", "Source", "LabelName", "Confidence"]
    assert not labels.duplicated(["ImageID", "LabelName"]).any()
    positive = labels[labels["Confidence"] == 1]
    assert set(zip(positive["ImageID"], positive["LabelName"])) == set(zip(validation["ImageID"],
                                                                           validation["LabelName"]))
    negative = labels[labels["Confidence"] == 0]
    assert negative.groupby("ImageID").size().between(1, fs.NEGATIVE_LABELS).all()
    assert len(negative["ImageID"].unique()) == validation["ImageID"].nunique()


def test_a_submission_finds_most_true_boxes_among_its_300(validation, challenge_mids, tmp_path):
    from oid_retinanet.boxes.iou import pairwise_iou
    from oid_retinanet.oid.predictions import iter_predictions

    path = tmp_path / "submission.csv"
    assert fs.write_submission(path, validation, challenge_mids, chunk=64) == 200
    rows = list(iter_predictions(str(path)))
    assert sorted(r.image_id for r in rows) == sorted(validation["ImageID"].unique())
    assert all(len(r.mids) == fs.MAX_DETECTIONS for r in rows)
    found = 0
    for r in rows:  # a true box is found: a prediction of its class over it (IoU >= 0.5)
        gt = validation[validation["ImageID"] == r.image_id]
        iou = pairwise_iou(gt[["XMin", "YMin", "XMax", "YMax"]].to_numpy(), r.boxes)
        same = gt["LabelName"].to_numpy()[:, None] == np.asarray(r.mids)[None, :]
        found += int(((iou >= 0.5) & same).any(axis=1).sum())
    assert 0.7 <= found / len(validation) <= 0.9  # 0.8 drawn, jittered by 5% of the box


def test_photos_are_open_images_sized_jpegs(tmp_path):
    import cv2

    paths = fs.write_photos(str(tmp_path), 4)
    shapes = [cv2.imread(p).shape for p in paths]
    assert shapes == [(1024, 768, 3), (768, 1024, 3), (768, 1024, 3), (768, 1024, 3)]
    assert all(100_000 < os.path.getsize(p) < 400_000 for p in paths)
