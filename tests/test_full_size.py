"""The synthetic full-size Open Images (`demo.full_size`): exact counts, the official columns, hex ids, the long
tail and the flag rates; stage 1's reader takes its files as it takes the official ones."""

from __future__ import annotations

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
