"""Open Images at its real counts, synthetic and seeded, for measuring every stage at full size
(`bench/bench_scale.py`, `make bench-scale`).

The pixels carry no objects (the demo dataset, `demo.dataset`, is the one a model learns from); the tables have
the official layouts and the real files' shapes:
- box files with the 13 official columns (`oid.annotations.BOX_COLUMNS`, the same in the v4 and the 2019
  challenge files), all-hex 16-digit ImageIDs, every image with at least one box;
- class frequencies long-tailed as in the real files: a few classes hold hundreds of thousands to over a million
  boxes, about half the classes under 1,000 each (`class_box_counts`; which class gets which share is seeded);
- boxes per image around the real mean (v4: 8.4, the 2019 challenge: 7.0) with a long tail, and the flags at
  rates near the real ones (`FLAG_RATES`; -1 where the real files say unknown).

`V4_TRAIN`, `CHALLENGE_2019_TRAIN` and `CHALLENGE_2019_VALIDATION` are the real counts; `scaled` makes a smaller
set of the same shape (the tests use thousands of rows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd

from oid_retinanet.oid.annotations import BOX_COLUMNS


@dataclass(frozen=True)
class BoxFileSpec:
    """The counts of one box file: images, boxes and how many classes of the class list (its first ones)."""

    images: int
    boxes: int
    classes: int

    def scaled(self, fraction: float) -> BoxFileSpec:
        """The same shape with `fraction` of the images and boxes (at least one box an image, all classes)."""
        images = max(1, round(self.images * fraction))
        return replace(self, images=images, boxes=max(images, self.classes, round(self.boxes * fraction)))


V4_TRAIN = BoxFileSpec(images=1_743_042, boxes=14_610_229, classes=600)  # train-annotations-bbox.csv
CHALLENGE_2019_TRAIN = BoxFileSpec(images=1_743_042, boxes=12_195_144, classes=500)
CHALLENGE_2019_VALIDATION = BoxFileSpec(images=41_620, boxes=204_621, classes=500)
TEST_IMAGES = 99_999

# The long tail, as a class's share of all boxes at its rank (0 = the most frequent class, 1 = the last), log-linear
# in between: with the 2019 counts the first class holds ~1.3 M boxes and about half the classes under 1,000.
TAIL_RANKS = (0.0, 0.01, 0.05, 0.2, 0.5, 1.0)
TAIL_SHARES = (0.14, 0.045, 0.012, 0.0015, 6e-5, 3e-6)
# P(1) of each flag; the rest 0, but `UNKNOWN` of the boxes -1 in the flags the real files leave unknown.
FLAG_RATES = {"IsOccluded": 0.65, "IsTruncated": 0.27, "IsGroupOf": 0.06, "IsDepiction": 0.05, "IsInside": 0.005}
UNKNOWN = 0.02
UNKNOWN_FLAGS = ("IsOccluded", "IsTruncated", "IsDepiction", "IsInside")
SOURCES = (("xclick", 0.8), ("activemil", 0.2))


def image_ids(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` distinct 16-digit lowercase hex ImageIDs, in random order."""
    found = np.zeros(0, np.uint64)
    while len(found) < n:
        more = rng.integers(0, 2**63, size=n - len(found) + 16, dtype=np.int64).astype(np.uint64)
        found = np.unique(np.concatenate([found, more]))
    found = rng.permutation(found)[:n]
    return np.array([f"{x:016x}" for x in found.tolist()], dtype=object)


def class_box_counts(n_classes: int, total: int) -> np.ndarray:
    """Boxes of each of `n_classes` classes (most frequent first), long-tailed, summing to `total`, each >= 1."""
    if total < n_classes:
        raise ValueError(f"{total} boxes cannot give each of {n_classes} classes one")
    ranks = np.arange(n_classes) / max(n_classes - 1, 1)
    share = 10 ** np.interp(ranks, TAIL_RANKS, np.log10(TAIL_SHARES))
    counts = 1 + np.floor(share / share.sum() * (total - n_classes)).astype(np.int64)
    counts[0] += total - counts.sum()  # the rounding's remainder: a few boxes on the largest class
    return counts


def image_box_counts(n_images: int, total: int, rng: np.random.Generator) -> np.ndarray:
    """Boxes of each of `n_images` images: >= 1, long-tailed around the mean, summing to `total` exactly."""
    if total < n_images:
        raise ValueError(f"{total} boxes cannot give each of {n_images} images one")
    extra_mean = (total - n_images) / n_images
    # 1 + a negative binomial with dispersion 1.2: a geometric-like tail (a few images with hundreds of boxes)
    r = 1.2
    counts = 1 + (rng.negative_binomial(r, r / (r + extra_mean), size=n_images) if extra_mean > 0
                  else np.zeros(n_images, np.int64))
    gap = total - int(counts.sum())
    if gap > 0:
        np.add.at(counts, rng.integers(0, n_images, size=gap), 1)
    elif gap < 0:  # take boxes back from images that have more than one, any box above the first equally likely
        spare = np.repeat(np.arange(n_images), counts - 1)
        np.subtract.at(counts, rng.choice(spare, size=-gap, replace=False), 1)
    return counts


def box_table(spec: BoxFileSpec, mids: list[str], seed: int = 0, ids: np.ndarray | None = None) -> pd.DataFrame:
    """A box file of `spec`'s counts over the first `spec.classes` of `mids` (their frequencies shuffled), rows
    grouped by image as in the official files. `ids`: the images' ImageIDs (default: new ones from `seed`)."""
    if len(mids) < spec.classes:
        raise ValueError(f"{spec.classes} classes asked, {len(mids)} given")
    rng = np.random.default_rng(seed)
    ids = image_ids(spec.images, rng) if ids is None else ids
    per_image = image_box_counts(spec.images, spec.boxes, rng)
    labels = np.repeat(np.arange(spec.classes), class_box_counts(spec.classes, spec.boxes))
    n = spec.boxes
    x = np.sort(rng.random((n, 2)), axis=1).round(6)
    y = np.sort(rng.random((n, 2)), axis=1).round(6)
    columns = {
        "ImageID": np.repeat(ids, per_image),
        "Source": np.array([s for s, _ in SOURCES], dtype=object)[
            rng.choice(len(SOURCES), size=n, p=[p for _, p in SOURCES])],
        "LabelName": rng.permutation(np.asarray(mids[:spec.classes], dtype=object))[rng.permutation(labels)],
        "Confidence": np.ones(n, np.int8),
        "XMin": x[:, 0], "XMax": x[:, 1], "YMin": y[:, 0], "YMax": y[:, 1],
    }
    for flag, p in FLAG_RATES.items():
        value = (rng.random(n) < p).astype(np.int8)
        if flag in UNKNOWN_FLAGS:
            value[rng.random(n) < UNKNOWN] = -1
        columns[flag] = value
    return pd.DataFrame(columns, columns=list(BOX_COLUMNS))


def write_images(folder: str, ids: np.ndarray, seed: int = 0, subfolders: bool = True) -> None:
    """Small real JPEGs for `ids` under `folder` (in `<first hex digit>/` subfolders as the train set when
    `subfolders`): a few seeded encodings of different sizes, each file followed by its ImageID after the
    end-of-image marker, so that every file has its own md5 and still decodes whole."""
    import cv2

    rng = np.random.default_rng(seed)
    templates = []
    for width in range(48, 112, 4):
        height = int(width * rng.uniform(0.6, 1.4))
        ok, data = cv2.imencode(".jpg", rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))
        templates.append(data.tobytes())
    choice = rng.integers(0, len(templates), size=len(ids))
    made: set[str] = set()
    for image_id, k in zip(ids.tolist(), choice.tolist()):
        sub = os.path.join(folder, image_id[0]) if subfolders else folder
        if sub not in made:
            os.makedirs(sub, exist_ok=True)
            made.add(sub)
        with open(os.path.join(sub, image_id + ".jpg"), "wb") as f:
            f.write(templates[k] + image_id.encode())
