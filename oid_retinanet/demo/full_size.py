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
import time
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


def write_dataset(root: str | os.PathLike, fraction: float = 1.0, progress: bool = False) -> dict[str, int]:
    """The box files of Open Images at `fraction` of the real counts under `root`, named and laid out as the
    2018 stage 1 reads them (`annotations/{train,validation}-annotations-bbox.csv`, the v4 files over the 600
    boxable classes; `challenge-2019-{train,validation}-detection-bbox.csv`, the challenge's 500 classes, on the
    same images); returns each file's rows."""
    from oid_retinanet.files import write_csv
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.resources import resource_path

    boxable = read_class_descriptions(resource_path("class-descriptions-boxable.csv")).mids
    challenge = read_class_descriptions(resource_path("challenge-2018-class-descriptions-500.csv")).mids
    rows = {}
    for subset, (v4, c2019) in {"train": (V4_TRAIN, CHALLENGE_2019_TRAIN),
                                "validation": (CHALLENGE_2019_VALIDATION, CHALLENGE_2019_VALIDATION)}.items():
        v4, c2019 = v4.scaled(fraction), c2019.scaled(fraction)
        ids = image_ids(v4.images, np.random.default_rng([1, len(subset)]))  # the same images in both files
        for name, spec, mids, seed in ((f"annotations/{subset}-annotations-bbox.csv", v4, boxable, 2),
                                       (f"challenge-2019-{subset}-detection-bbox.csv", c2019, challenge, 3)):
            t = time.perf_counter()
            df = box_table(spec, mids, seed=seed, ids=ids)
            write_csv(df, os.path.join(root, name))
            rows[name] = len(df)
            if progress:
                print(f"  {name}: {len(df):,} boxes on {spec.images:,} images ({time.perf_counter() - t:.0f} s)",
                      flush=True)
    return rows


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


def write_photos(folder: str, n: int, seed: int = 0) -> list[str]:
    """`n` JPEGs of Open Images' usual size (1024 on the long side, landscape 1024x768 or portrait 768x1024,
    about 200 KB: smooth shapes with some grain, quality 90) for timing decoding; returns their paths."""
    import cv2

    rng = np.random.default_rng(seed)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for k in range(n):
        h, w = (768, 1024) if k % 4 else (1024, 768)
        coarse = rng.integers(0, 256, size=(h // 64, w // 64, 3), dtype=np.uint8)
        image = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC).astype(np.float32)
        image += rng.normal(0, 6, image.shape)
        paths.append(os.path.join(folder, f"{rng.integers(0, 2**63):016x}.jpg"))
        cv2.imwrite(paths[-1], np.clip(image, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, 90])
    return paths


# ---- prediction caches: what RetinaNet's stage 4 writes for each image ----------------------------------------
CACHE_CLASSES = 443  # the 2018 level-1 model's outputs
MAX_DETECTIONS = 300


def detection_pool(rng: np.random.Generator, class_p: np.ndarray, confusable: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """What the models respond to in one image: (boxes (K, 4) normalised x1 y1 x2 y2, labels (K,), base scores).

    A few objects, each seen under its class (high score) and some confusable classes (lower scores) at slightly
    shifted boxes, and many weak responses to background, labelled mostly with frequent classes."""
    n_classes = len(class_p)
    n_obj = min(int(rng.geometric(1 / 8)), 40)
    xy = rng.random((n_obj, 2)) * 0.8
    wh = np.exp(rng.uniform(np.log(0.05), np.log(0.9), (n_obj, 2)))
    objects = np.hstack([xy, np.minimum(xy + wh, 1.02)])
    true = rng.choice(n_classes, n_obj, p=class_p)
    boxes, labels, scores = [], [], []
    for obj, lab in zip(objects, true):
        strength = rng.beta(4, 2)
        for k, cls in enumerate([lab, *confusable[lab]]):
            n = int(rng.integers(1, 3))
            boxes.append(obj + rng.normal(0, 0.05, (n, 4)) * np.tile(obj[2:] - obj[:2], 2))
            labels.append(np.full(n, cls))
            scores.append(strength * rng.uniform(0.3, 1.0, n) * (0.9 if k == 0 else 0.3))
    n_bg = int(rng.integers(200, 700))
    xy = rng.random((n_bg, 2)) * 0.9
    wh = np.exp(rng.uniform(np.log(0.02), np.log(0.7), (n_bg, 2)))
    boxes.append(np.hstack([xy, xy + wh]))
    labels.append(rng.choice(n_classes, n_bg, p=class_p))
    scores.append(0.03 + rng.exponential(0.06, n_bg))
    return np.vstack(boxes), np.concatenate(labels), np.concatenate(scores)


def model_output(rng: np.random.Generator, pool: tuple[np.ndarray, np.ndarray, np.ndarray], mirrored: bool
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One row of model output (boxes (300, 4), scores, labels, -1 padded): each pool response seen with
    probability 0.7, its box jittered and its score varied; then scores >= 0.05, best 300, sorted. `mirrored`:
    in the flipped image's own coordinates."""
    boxes, labels, base = pool
    seen = rng.random(len(labels)) < 0.7
    b = boxes[seen]
    b = b + rng.normal(0, 0.03, b.shape) * np.tile(b[:, 2:] - b[:, :2], 2)
    s = base[seen] * rng.lognormal(0, 0.25, int(seen.sum()))
    lab = labels[seen]
    keep = s >= 0.05
    b, s, lab = b[keep], s[keep], lab[keep]
    order = np.argsort(-s, kind="stable")[:MAX_DETECTIONS]
    b, s, lab = b[order], s[order], lab[order]
    if mirrored:
        b = np.stack([1 - b[:, 2], b[:, 1], 1 - b[:, 0], b[:, 3]], axis=1)
    out_b = np.full((MAX_DETECTIONS, 4), -1, dtype=np.float32)
    out_s = np.full(MAX_DETECTIONS, -1, dtype=np.float32)
    out_l = np.full(MAX_DETECTIONS, -1, dtype=np.int32)
    out_b[:len(b)], out_s[:len(s)], out_l[:len(lab)] = b, np.minimum(s, 1.0), lab
    return out_b, out_s, out_l


def write_caches(folder: str | os.PathLike, n_images: int, n_models: int, seed: int = 0,
                 n_classes: int = CACHE_CLASSES, ids: np.ndarray | None = None) -> list[str]:
    """`n_models` prediction cache folders (`folder/model_<m>/`, stage 4's per-image .npz: the image and its mirror
    as rows 0 and 1, up to 300 detections each, about a third of the rows full) of the same `n_images` images,
    the models seeing the same content differently; returns the folders. `ids`: the ImageIDs (default: drawn)."""
    from oid_retinanet.predict.cache import cache_file, write_cache

    rng = np.random.default_rng(seed)
    class_p = 1.0 / np.arange(1, n_classes + 1) ** 1.1
    class_p /= class_p.sum()
    confusable = rng.choice(n_classes, (n_classes, 3), p=class_p)
    dirs = [os.path.join(folder, f"model_{m}") for m in range(n_models)]
    for d in dirs:
        os.makedirs(d, exist_ok=True)
    for n in range(n_images):
        image_id = f"{rng.integers(0, 2**63):016x}" if ids is None else ids[n]
        pool = detection_pool(rng, class_p, confusable)
        for d in dirs:
            rows = [model_output(rng, pool, mirrored=r == 1) for r in range(2)]
            write_cache(cache_file(d, image_id), *(np.stack([row[k] for row in rows]) for k in range(3)))
    return dirs


# ---- the validation set's verified labels and a submission to score ----------------------------------------
NEGATIVE_LABELS = 3  # verified-absent classes an image, beside its boxes' classes


def image_labels(boxes: pd.DataFrame, mids: list[str], seed: int = 0) -> pd.DataFrame:
    """The image-level labels file of a box file (`ImageID,Source,LabelName,Confidence`): each image's box classes
    verified present (1) and NEGATIVE_LABELS other classes verified absent (0), as the challenge's
    human-verified labels."""
    rng = np.random.default_rng(seed)
    positive = boxes[["ImageID", "LabelName"]].drop_duplicates().assign(Confidence=1)
    ids = boxes["ImageID"].unique()
    negative = pd.DataFrame({"ImageID": np.repeat(ids, NEGATIVE_LABELS),
                             "LabelName": np.asarray(mids, dtype=object)[rng.integers(0, len(mids),
                                                                                      len(ids) * NEGATIVE_LABELS)],
                             "Confidence": 0}).drop_duplicates(["ImageID", "LabelName"])
    negative = negative.merge(positive[["ImageID", "LabelName"]], how="left", indicator=True)
    negative = negative[negative.pop("_merge") == "left_only"]
    labels = pd.concat([positive, negative], ignore_index=True).sort_values(["ImageID", "LabelName"], kind="stable")
    labels.insert(1, "Source", "verification")
    return labels.reset_index(drop=True)


def write_submission(path: str | os.PathLike, boxes: pd.DataFrame, mids: list[str], per_image: int = MAX_DETECTIONS,
                     seed: int = 0, chunk: int = 5000) -> int:
    """A Kaggle submission of `per_image` boxes on every image of the box file `boxes`: each true box found with
    probability 0.8 (jittered by 5% of its size, a high score), the rest false detections of frequent classes
    (low scores); returns the rows (images) written."""
    from oid_retinanet.files import atomic_output
    from oid_retinanet.oid.predictions import HEADER
    from oid_retinanet.predict.ensemble import format_rows

    rng = np.random.default_rng(seed)
    boxes = boxes.sort_values("ImageID", kind="stable")
    ids = boxes["ImageID"].unique()
    gt_label = pd.Index(mids).get_indexer(boxes["LabelName"].to_numpy(dtype=object))
    gt_box = boxes[["XMin", "YMin", "XMax", "YMax"]].to_numpy(np.float64)
    starts = np.searchsorted(boxes["ImageID"].to_numpy(dtype=object), ids)
    counts = np.diff(np.append(starts, len(boxes)))
    class_p = 1.0 / np.arange(1, len(mids) + 1) ** 1.1
    class_p /= class_p.sum()
    with atomic_output(path) as f:
        f.write((",".join(HEADER) + "\n").encode())
        for a in range(0, len(ids), chunk):
            n = min(chunk, len(ids) - a)
            slot = np.tile(np.arange(per_image), n)
            image = np.repeat(np.arange(n), per_image)
            true = slot < np.repeat(np.minimum(counts[a:a + n], per_image), per_image)
            true &= rng.random(len(slot)) < 0.8
            src = np.repeat(starts[a:a + n], per_image) + np.where(true, slot, 0)
            xy = rng.random((len(slot), 2)) * 0.8
            box = np.hstack([xy, np.minimum(xy + rng.uniform(0.02, 0.6, (len(slot), 2)), 1.0)])
            found = gt_box[src[true]]
            size = np.tile(found[:, 2:] - found[:, :2], 2)
            jitter = np.clip(found + rng.normal(0, 0.05, found.shape) * size, 0, 1)  # 5% of the box's size
            x, y = np.sort(jitter[:, [0, 2]], axis=1), np.sort(jitter[:, [1, 3]], axis=1)  # x1 <= x2, y1 <= y2
            box[true] = np.column_stack([x[:, 0], y[:, 0], x[:, 1], y[:, 1]])
            label = np.where(true, gt_label[src], rng.choice(len(mids), len(slot), p=class_p))
            score = np.where(true, rng.beta(4, 2, len(slot)), rng.exponential(0.05, len(slot)).clip(0, 1))
            rows = np.column_stack([label, score, box[:, 0], box[:, 1], box[:, 2], box[:, 3]])
            f.write(format_rows(list(ids[a:a + n]), image, rows, np.asarray(mids, dtype=object), 6, 4))
    return len(ids)
