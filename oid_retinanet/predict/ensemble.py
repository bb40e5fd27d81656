"""From box lists to a Kaggle `ImageId,PredictionString` CSV: the single-model mirror merge of stage 4 and
the ensembling of stage 6.

Both are the originals' one loop: per image, filter each list, merge the lists, keep the best `limit_boxes`,
clip, format. The merges are a registry, MERGE_METHODS: 'avg', 'max', 'mul' ... (the originals' weighted merge,
boxes/merge.py), 'wbf' (weighted boxes fusion, boxes/wbf.py), 'soft-nms' (the boxes of all lists, overlapping
ones decayed: boxes/nms.py) and 'none' (every box as it is), each with its list weights; every path takes one
MergeSettings. Adding a merge method: its merge function and one MERGE_METHODS entry.

- Mirror merge (ZFTurbo's `create_csv_for_retinanet`): one model's cache folder; the image's and the mirrored
  image's rows are two lists of weight 1/2. Scores are written with 6 decimals, coordinates with 4.
- Ensemble (`create_csv_for_retinanet_multiple_predictions`): several models' cache folders give the lists
  [model 0 image, model 0 mirror, model 1 image, ...] (2 x n_models lists, weight 1/(2 n_models) each);
  2018 writes scores with 5 decimals and coordinates with 4, 2019 everything with 3, and 2019 merges with
  the snapshot variant. Prediction CSVs can stand in for caches: each file is one list (no mirror rows).

Per image, as the originals (caches): each row is read up to its first score below `skip_box_thr`, row 1
un-mirrored (x1' = 1 - x2, x2' = 1 - x1). From CSVs every box with a score below the threshold is dropped
(their boxes need not be sorted). After the merge, an image with more than `limit_boxes` boxes keeps the
first `limit_boxes` of `np.argsort(scores)[::-1]` (ties in numpy's order); coordinates are clipped to
[0, 1]; boxes narrower or lower than 1e-5 are dropped, as are boxes with x2 < x1 or y2 < y1 (the original
ensemble called exit() on those, leaving a partial CSV; its mirror merge skipped them). Scores above 1,
which the original merge makes, are written as they are.

Rows are written in ImageId order for caches (the original: file-system order) and in the first file's row
order for CSVs, in batches of images; the output is written under a temporary name and renamed. Batches of
cached images can be merged by several worker processes (`workers`); the output is the same for any number.
The text is assembled with numpy (`format_rows`), digit for digit what Python's `f"{v:.Nf}"` writes.
Per-model weights (ours; the originals had none): with equal weights the lists weigh 1/n_lists each; with
unequal ones, list weights are proportional to their model's weight and sum to 1. For `wbf` the weights
are passed to the fusion as the package takes them (one per list, a model's weight for both its rows).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from tqdm import tqdm

from oid_retinanet.boxes.merge import CONF_TYPES, VARIANTS, BoxBatch, filter_rows, merge_batch
from oid_retinanet.boxes.nms import batched_soft_nms
from oid_retinanet.boxes.wbf import WBF_CONF_TYPES, fuse_batch, prefilter
from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_output
from oid_retinanet.oid.classes import MID_PATTERN, ClassList
from oid_retinanet.oid.predictions import HEADER, iter_aligned_predictions
from oid_retinanet.predict.cache import ImageCache, cache_file, cache_ids, read_cache

log = logging.getLogger(__name__)

# The originals' values (their __main__ blocks): the stage 4 script, and stage 6 in 2018 and 2019.
MIRROR_DEFAULTS = {"skip_box_thr": 0.01, "iou_thr": 0.55, "limit_boxes": 300, "type": "avg"}
ENSEMBLE_DEFAULTS = {
    "2018": {"skip_box_thr": 0.01, "iou_thr": 0.55, "limit_boxes": 400, "type": "avg"},
    "2019": {"skip_box_thr": 0.15, "iou_thr": 0.55, "limit_boxes": 600, "type": "avg"},
}
# py_cpu_softnms' defaults in the 2019 repository (method 2: gaussian)
SOFT_NMS = {"sigma": 0.5, "score_thr": 0.001, "method": "gaussian"}
# (score decimals, coordinate decimals) as each original wrote them
DECIMALS = {"mirror": (6, 4), "2018": (5, 4), "2019": (3, 3)}
BATCH_IMAGES = 256


@dataclass
class MergeStats:
    """What a merge run did, for the log."""

    images: int = 0
    boxes_in: int = 0
    boxes_merged: int = 0
    boxes_written: int = 0
    truncated_images: int = 0
    skipped_small: int = 0
    skipped_inverted: int = 0
    missing_rows: dict[str, int] = field(default_factory=dict)

    def add_output(self, other: MergeStats) -> None:
        """Add another batch's counts (all but missing_rows)."""
        for name in ("images", "boxes_in", "boxes_merged", "boxes_written", "truncated_images", "skipped_small",
                     "skipped_inverted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def line(self) -> str:
        text = (f"{self.images} images: {self.boxes_in} boxes in, {self.boxes_merged} after merging, "
                f"{self.boxes_written} written ({self.truncated_images} images cut to the box limit, "
                f"{self.skipped_small} boxes under 1e-5 wide or high and {self.skipped_inverted} with x2 < x1 "
                f"or y2 < y1 dropped)")
        for path, n in self.missing_rows.items():
            text += f"; {n} images absent from {path}"
        return text


@dataclass
class MergedBatch:
    """Merged boxes of a batch of images: rows (K, 6) `[label, score, x1, y1, x2, y2]`, image (K,) the
    index into ids, mids[label] the label's MID; sorted_desc when each image's rows are sorted by score."""

    ids: list[str]
    image: np.ndarray
    rows: np.ndarray
    mids: np.ndarray
    sorted_desc: bool


def label_mids(labels: ClassList | Sequence[str]) -> np.ndarray:
    """The MIDs of a label list (a class list or MIDs), as an array indexed by the models' label index."""
    mids = labels.mids if isinstance(labels, ClassList) else tuple(labels)
    if not mids:
        raise ValueError("empty label list")
    bad = [m for m in mids if not MID_PATTERN.match(str(m))]
    if bad:  # the originals also took display names, looked up in the v4 list: give a class list instead
        raise ValueError(f"label list entries must be MIDs like /m/0abc12, got {bad[0]!r}")
    return np.array(mids, dtype=object)


# ---------------------------------------------------------------------------------------------------------------
# Merge methods: a registry of named ways to merge lists of boxes, and the one settings object they take


@dataclass(frozen=True)
class MergeSettings:
    """How lists of boxes merge: the method (`type`, a MERGE_METHODS name) and every setting a method reads."""

    type: str = "avg"
    variant: str = "2018"  # the weighted merge's rules: 2018 (ZFTurbo) or 2019 (gujingxiao)
    iou_thr: float = 0.55
    skip_box_thr: float = 0.01
    wbf_conf_type: str = "avg"  # the fusion's confidence rule

    @property
    def method(self) -> MergeMethod:
        return MERGE_METHODS[self.type]


@dataclass(frozen=True)
class MergeMethod:
    """A named merge: the weight of each list from the models' weights, the merge of a batch of images, whether
    its rows come sorted by score, and whether one model's mirror merge (stage 4) may use it."""

    list_weights: Callable[[np.ndarray, np.ndarray | None], np.ndarray]  # (rows per model, model weights or None)
    merge: Callable[..., tuple[np.ndarray, np.ndarray]]  # (image, list, labels, scores, boxes, list weights, settings)
    sorted_desc: bool
    mirror: bool


def _shared_weights(rows: np.ndarray, model_weights: np.ndarray | None) -> np.ndarray:
    """The originals' 1/n_lists each; unequal model weights: proportional, summing to 1 (see the module doc)."""
    n_lists = int(rows.sum())
    if model_weights is None or len(set(model_weights)) <= 1:
        return np.full(n_lists, 1 / n_lists)
    per_list = np.repeat(model_weights, rows)
    return per_list / per_list.sum()


def _model_weights(rows: np.ndarray, model_weights: np.ndarray | None) -> np.ndarray:
    """Each list weighs its model's weight (1 by default), as weighted boxes fusion takes them."""
    return np.repeat(np.ones(len(rows)) if model_weights is None else model_weights, rows)


def _cluster_merge(image, list_index, labels, scores, boxes, weights, settings: MergeSettings):
    """The originals' weighted merge (boxes/merge.py) with the score rule `settings.type`."""
    batch = BoxBatch(image, list_index, labels, scores, boxes, weights[list_index])
    return merge_batch(batch, settings.iou_thr, settings.type, settings.variant)


def _fusion_merge(image, list_index, labels, scores, boxes, weights, settings: MergeSettings):
    """Weighted boxes fusion (boxes/wbf.py)."""
    img, lst, lab, conf, bw, bx = prefilter(image, list_index, labels, scores, boxes, weights, settings.skip_box_thr)
    out_image, out_boxes, out_scores, out_labels = fuse_batch(img, lst, lab, conf, bw, bx, weights, settings.iou_thr,
                                                              settings.wbf_conf_type)
    return out_image, np.column_stack([out_labels, out_scores, out_boxes])


def _soft_nms(image, list_index, labels, scores, boxes, weights, settings: MergeSettings):
    """Soft-NMS of the pooled lists per image and label (boxes/nms.py; the 2019 repository's `py_cpu_softnms`
    with its defaults: gaussian, sigma 0.5, kept above 0.001): overlapping boxes lose score instead of merging."""
    groups = image.astype(np.int64) * (int(labels.max(initial=-1)) + 1) + labels
    keep, decayed = batched_soft_nms(boxes, scores, groups, iou_thr=settings.iou_thr, **SOFT_NMS)
    return image[keep], np.column_stack([labels[keep], decayed, boxes[keep]])


def _no_merge(image, list_index, labels, scores, boxes, weights, settings: MergeSettings):
    """Every filtered box as it is (gujingxiao's per-level submission CSV: filtered, not merged)."""
    return image, np.column_stack([labels, scores, boxes])


MERGE_METHODS: dict[str, MergeMethod] = {
    **{conf: MergeMethod(_shared_weights, _cluster_merge, sorted_desc=False, mirror=True) for conf in CONF_TYPES},
    "wbf": MergeMethod(_model_weights, _fusion_merge, sorted_desc=True, mirror=False),
    "none": MergeMethod(_model_weights, _no_merge, sorted_desc=False, mirror=True),
    "soft-nms": MergeMethod(_model_weights, _soft_nms, sorted_desc=False, mirror=True),
}
MERGE_TYPES = tuple(MERGE_METHODS)


def list_weights(rows_per_model: Sequence[int], model_weights: Sequence[float] | None, type: str) -> np.ndarray:
    """One weight per list ([model 0 rows..., model 1 rows...]) for merge `type`; see the module doc."""
    rows = np.asarray(rows_per_model, dtype=np.int64)
    if model_weights is not None and len(model_weights) != len(rows):
        raise ValueError(f"{len(model_weights)} weights for {len(rows)} models")
    weights = None if model_weights is None else np.asarray(model_weights, dtype=np.float64)
    return MERGE_METHODS[type].list_weights(rows, weights)


def merge_settings(type: str, variant: str, wbf_conf_type: str, weights: Sequence[float] | None,
                   iou_thr: float = 0.55, skip_box_thr: float = 0.01) -> MergeSettings:
    """The settings object, checked (ValueError naming the bad value)."""
    if type not in MERGE_METHODS:
        raise ValueError(f"unknown merge type {type!r}, expected one of {', '.join(MERGE_TYPES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}, expected one of {', '.join(VARIANTS)}")
    if wbf_conf_type not in WBF_CONF_TYPES:
        raise ValueError(f"unknown WBF conf type {wbf_conf_type!r}, expected one of {', '.join(WBF_CONF_TYPES)}")
    if weights is not None and any(not np.isfinite(w) or w <= 0 for w in weights):
        raise ValueError(f"weights must be positive numbers, got {list(weights)}")
    return MergeSettings(type, variant, iou_thr, skip_box_thr, wbf_conf_type)


@dataclass
class _CacheMerge:
    """Everything needed to merge one batch of images from the cache folders (picklable, for worker processes)."""

    dirs: list[str]
    n_classes: int
    rows_per_model: list[int]
    lists: np.ndarray
    settings: MergeSettings

    def merge(self, chunk: list[str], stats: MergeStats) -> tuple[np.ndarray, np.ndarray]:
        """Read, filter and merge the images `chunk`: (image index into chunk, rows (K, 6))."""
        caches = []
        for m, d in enumerate(self.dirs):
            model = []
            for image_id in chunk:
                path = cache_file(d, image_id)
                cache = read_cache(path, self.n_classes)
                if cache.rows != self.rows_per_model[m]:
                    raise OIDInputError(f"{cache.rows} rows of boxes, but the first cache of this folder has "
                                        f"{self.rows_per_model[m]}", str(path))
                model.append(cache)
            caches.append(model)
        image, list_index, labels, scores, boxes = _filtered_batch(caches, self.rows_per_model,
                                                                   self.settings.skip_box_thr)
        out_image, rows = self.settings.method.merge(image, list_index, labels, scores, boxes, self.lists,
                                                     self.settings)
        stats.images += len(chunk)
        stats.boxes_in += len(image)
        stats.boxes_merged += len(rows)
        return out_image, rows


@dataclass
class _CacheToCsv:
    """A batch of images from the caches to CSV text: merge, the output rules, formatting."""

    merger: _CacheMerge
    mids: np.ndarray
    limit_boxes: int
    decimals: tuple[int, int]

    def __call__(self, chunk: list[str]) -> tuple[bytes, MergeStats]:
        stats = MergeStats()
        image, rows = self.merger.merge(chunk, stats)
        image, rows = finish_rows(image, rows, len(chunk), self.limit_boxes, self.merger.settings.method.sorted_desc,
                                  stats)
        stats.boxes_written += len(rows)
        return format_rows(chunk, image, rows, self.mids, *self.decimals), stats


def _prepare_caches(cache_dirs: Sequence[str | os.PathLike], n_classes: int, skip_box_thr: float, iou_thr: float,
                    type: str, variant: str, weights: Sequence[float] | None, wbf_conf_type: str,
                    ids: Sequence[str] | None) -> tuple[_CacheMerge, list[str]]:
    """Check the settings and that every image has a cache in every folder; the batch merger and the ids."""
    settings = merge_settings(type, variant, wbf_conf_type, weights, iou_thr, skip_box_thr)
    dirs = [os.fspath(d) for d in cache_dirs]
    if not dirs:
        raise ValueError("no cache folders given")
    if weights is not None and len(weights) != len(dirs):
        raise ValueError(f"{len(weights)} weights for {len(dirs)} cache folders")
    ids = cache_ids(dirs[0]) if ids is None else list(ids)
    for d in dirs[1:]:
        have = set(cache_ids(d))
        missing = [i for i in ids if i not in have]
        if missing:
            raise OIDInputError(f"no cache file for {len(missing)} of the {len(ids)} images of {dirs[0]}, e.g. "
                                f"{cache_file(d, missing[0]).name}", d)
    # every cache of a folder must have as many rows (image, mirror) as its first one
    rows_per_model = [read_cache(cache_file(d, ids[0]), n_classes).rows if ids else 2 for d in dirs]
    merger = _CacheMerge(dirs, n_classes, rows_per_model, list_weights(rows_per_model, weights, type), settings)
    return merger, ids


def merge_caches(cache_dirs: Sequence[str | os.PathLike], n_classes: int, skip_box_thr: float, iou_thr: float,
                 type: str = "avg", variant: str = "2018", weights: Sequence[float] | None = None,
                 wbf_conf_type: str = "avg", batch_images: int = BATCH_IMAGES, ids: Sequence[str] | None = None,
                 stats: MergeStats | None = None) -> Iterator[tuple[list[str], np.ndarray, np.ndarray]]:
    """Merge the caches of several models image by image: an iterator of (ids, image, rows) per batch of images.

    ids: the images (default: every cache file of the first folder, sorted); each must have a cache file in
    every folder. rows (K, 6) as `merge_all_boxes_for_image` returns them (or WBF's, sorted by score).
    """
    merger, ids = _prepare_caches(cache_dirs, n_classes, skip_box_thr, iou_thr, type, variant, weights,
                                  wbf_conf_type, ids)
    stats = stats if stats is not None else MergeStats()
    return ((chunk, *merger.merge(chunk, stats)) for chunk in _chunks(ids, batch_images))


def _chunks(ids: list[str], size: int) -> list[list[str]]:
    return [ids[i:i + size] for i in range(0, len(ids), size)]


def _filtered_batch(caches: list[list[ImageCache]], rows_per_model: list[int], skip_box_thr: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The original's filter on a batch: caches[m][i] is model m's cache of image i. Returns flat (image,
    list index, labels, scores, boxes) in image, list, position order; model m's rows are lists
    sum(rows_per_model[:m]) + row."""
    n_images = len(caches[0])
    parts = []
    base = 0
    for model, n_rows in zip(caches, rows_per_model):
        n = max(c.boxes.shape[1] for c in model)
        if all(c.boxes.shape[1] == n for c in model):
            boxes = np.stack([c.boxes for c in model]).reshape(-1, n, 4)
            scores = np.stack([c.scores for c in model]).reshape(-1, n)
            labels = np.stack([c.labels for c in model]).reshape(-1, n)
        else:  # detection limits differ: pad with the cache's own padding
            boxes = np.full((n_images * n_rows, n, 4), -1, dtype=np.float64)
            scores = np.full((n_images * n_rows, n), -1, dtype=np.float64)
            labels = np.full((n_images * n_rows, n), -1, dtype=np.int64)
            for i, c in enumerate(model):
                k = c.boxes.shape[1]
                boxes[i * n_rows:(i + 1) * n_rows, :k] = c.boxes
                scores[i * n_rows:(i + 1) * n_rows, :k] = c.scores
                labels[i * n_rows:(i + 1) * n_rows, :k] = c.labels
        row, lab, sc, bx = filter_rows(boxes, scores, labels, skip_box_thr,
                                       mirrored=np.tile(np.arange(n_rows) > 0, n_images))
        parts.append((row // n_rows, base + row % n_rows, lab, sc, bx))
        base += n_rows
    image = np.concatenate([p[0] for p in parts])
    list_index = np.concatenate([p[1] for p in parts])
    order = np.argsort(image * base + list_index, kind="stable")
    return (image[order], list_index[order], np.concatenate([p[2] for p in parts])[order],
            np.concatenate([p[3] for p in parts])[order], np.concatenate([p[4] for p in parts])[order])


def merge_csvs(csvs: Sequence[str | os.PathLike], skip_box_thr: float, iou_thr: float, type: str = "avg",
               variant: str = "2018", weights: Sequence[float] | None = None, wbf_conf_type: str = "avg",
               batch_images: int = BATCH_IMAGES, stats: MergeStats | None = None) -> Iterator[MergedBatch]:
    """Merge several prediction CSVs (one list each) image by image: an iterator of one MergedBatch per batch."""
    settings = merge_settings(type, variant, wbf_conf_type, weights, iou_thr, skip_box_thr)
    paths = [os.fspath(p) for p in csvs]
    if not paths:
        raise ValueError("no prediction CSVs given")
    for p in paths:
        if not os.path.isfile(p):
            raise OIDInputError("prediction CSV not found", p)
    lists = list_weights([1] * len(paths), weights, type)
    return _csv_batches(paths, lists, settings, batch_images, stats if stats is not None else MergeStats())


def _csv_batches(paths: list[str], lists: np.ndarray, settings: MergeSettings, batch_images: int,
                 stats: MergeStats) -> Iterator[MergedBatch]:
    rows = iter_aligned_predictions(paths)
    while True:
        chunk = [r for _, r in zip(range(batch_images), rows)]
        if not chunk:
            return
        ids, parts = [], []
        for i, (image_id, preds) in enumerate(chunk):
            ids.append(image_id)
            for k, p in enumerate(preds):
                if p is None:
                    stats.missing_rows[paths[k]] = stats.missing_rows.get(paths[k], 0) + 1
                    continue
                keep = ~(p.scores < settings.skip_box_thr)
                parts.append((i, k, p.mids[keep], p.scores[keep], p.boxes[keep]))
        counts = [len(p[3]) for p in parts]
        image = np.repeat(np.array([p[0] for p in parts], dtype=np.int64), counts)
        list_index = np.repeat(np.array([p[1] for p in parts], dtype=np.int64), counts)
        mids_flat = np.concatenate([p[2] for p in parts]) if parts else np.zeros(0, dtype=str)
        mids, labels = np.unique(mids_flat, return_inverse=True)
        scores = np.concatenate([p[3] for p in parts]) if parts else np.zeros(0)
        boxes = np.concatenate([p[4] for p in parts]).reshape(-1, 4) if parts else np.zeros((0, 4))
        out_image, out_rows = settings.method.merge(image, list_index, labels.astype(np.int64), scores, boxes, lists,
                                                    settings)
        stats.images += len(ids)
        stats.boxes_in += len(image)
        stats.boxes_merged += len(out_rows)
        yield MergedBatch(ids, out_image, out_rows, mids.astype(object), sorted_desc=settings.method.sorted_desc)


def finish_rows(image: np.ndarray, rows: np.ndarray, n_images: int, limit_boxes: int, sorted_desc: bool,
                stats: MergeStats | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The originals' output rules on merged rows: the box limit, clipping, dropping tiny and inverted boxes.

    image (K,) increasing; rows (K, 6) float64. An image over the limit keeps `np.argsort(score)[::-1]
    [:limit_boxes]` (the first limit_boxes when sorted_desc). Returns the kept (image, rows), clipped.
    """
    stats = stats if stats is not None else MergeStats()
    counts = np.bincount(image, minlength=n_images)
    over = np.flatnonzero(counts > limit_boxes)
    if len(over):
        starts = np.cumsum(counts) - counts
        pieces, prev = [], 0
        for i in over:  # a loop over images
            a, b = starts[i], starts[i] + counts[i]
            pieces.append(np.arange(prev, a))
            top = np.arange(limit_boxes) if sorted_desc else np.argsort(rows[a:b, 1])[::-1][:limit_boxes]
            pieces.append(a + top)
            prev = b
        pieces.append(np.arange(prev, len(rows)))
        keep = np.concatenate(pieces)
        image, rows = image[keep], rows[keep]
        stats.truncated_images += len(over)
    coords = rows[:, 2:]
    coords = np.where(coords < 0, 0.0, coords)
    coords = np.where(coords > 1, 1.0, coords)
    x1, y1, x2, y2 = coords.T
    inverted = (x2 < x1) | (y2 < y1)
    small = ~inverted & ((np.abs(x2 - x1) < 1e-5) | (np.abs(y2 - y1) < 1e-5))
    stats.skipped_inverted += int(inverted.sum())
    stats.skipped_small += int(small.sum())
    keep = ~(inverted | small)
    out = np.empty((int(keep.sum()), 6))
    out[:, :2] = rows[keep, :2]
    out[:, 2:] = coords[keep]
    return image[keep], out


def _fixed_point(values: np.ndarray, decimals: int) -> tuple[np.ndarray, np.ndarray]:
    """The digits of `f"{v:.{decimals}f}"` for values in [0, 10): (K, decimals + 1) digit values (the integer
    digit first), and a mask of the values this cannot do exactly: negative, -0.0, not below 10 once rounded,
    or so close to a rounding tie that the float product v * 10**decimals might round the other way (the
    caller formats those with Python). Python rounds the exact binary value half to even."""
    scale = 10 ** decimals
    with np.errstate(invalid="ignore", over="ignore"):
        x = values * scale
        frac = x - np.floor(x)
        k = np.floor(x + 0.5)
        slow = ~(values >= 0) | np.signbit(values) | ~(k < 10 * scale) | (np.abs(frac - 0.5) < 1e-6)
    k = np.where(slow, 0, k).astype(np.int64)
    powers = 10 ** np.arange(decimals, -1, -1, dtype=np.int64)
    return (k[:, None] // powers) % 10, slow


def format_rows(ids: Sequence[str], image: np.ndarray, rows: np.ndarray, mids: np.ndarray, score_decimals: int,
                coord_decimals: int) -> bytes:
    """`ImageId,PredictionString` lines (UTF-8) for a batch: per box `{mid} {score} {x1} {y1} {x2} {y2} ` with the
    given decimals, as Python's `f"{v:.Nf}"` writes them, and a trailing space as the originals; `id,` for an
    image without boxes. image (K,) increasing indexes ids; rows (K, 6) `[label, score, x1, y1, x2, y2]`.

    The digits are computed with numpy and the text assembled as bytes; the rare values that fixed-point
    arithmetic cannot settle exactly (see `_fixed_point`) are formatted by Python, row by row.
    """
    n_img, k = len(ids), len(rows)
    # numeric part of a box: " S.SSSSS X.XXXX Y.YYYY X.XXXX Y.YYYY "
    fields = [score_decimals] + [coord_decimals] * 4
    template = "".join(" " + "0." + "0" * d for d in fields) + " "
    width = len(template)
    numeric = np.tile(np.frombuffer(template.encode(), dtype=np.uint8), (k, 1))
    slow = np.zeros(k, dtype=bool)
    col = 1
    for j, d in enumerate(fields):
        digits, bad = _fixed_point(rows[:, 1 + j], d)
        numeric[:, col] = digits[:, 0] + 48
        numeric[:, col + 2:col + 2 + d] = digits[:, 1:] + 48
        slow |= bad
        col += 3 + d
    num_len = np.full(k, width, dtype=np.int64)
    slow_rows = np.flatnonzero(slow)
    slow_bytes = b""
    if len(slow_rows):
        fmt = "".join(f" {{:.{d}f}}" for d in fields) + " "
        texts = [fmt.format(*r).encode() for r in rows[slow_rows, 1:].tolist()]
        num_len[slow_rows] = [len(t) for t in texts]
        slow_bytes = b"".join(texts)

    mid_bytes = [str(m).encode() for m in mids]
    mid_len_table = np.array([len(m) for m in mid_bytes], dtype=np.int64)
    mid_off_table = np.cumsum(mid_len_table) - mid_len_table
    mid_blob = np.frombuffer(b"".join(mid_bytes), dtype=np.uint8)
    label = rows[:, 0].astype(np.int64)
    mid_len = mid_len_table[label]
    box_len = mid_len + num_len

    id_bytes = [str(i).encode() for i in ids]
    id_len = np.array([len(i) for i in id_bytes], dtype=np.int64)
    box_total = np.bincount(image, weights=box_len, minlength=n_img).astype(np.int64) if k else np.zeros(n_img, int)
    line_len = id_len + 2 + box_total
    line_start = np.cumsum(line_len) - line_len
    out = np.empty(int(line_len.sum()), dtype=np.uint8)
    out[_ramp(line_start, id_len)] = np.frombuffer(b"".join(id_bytes), dtype=np.uint8)
    out[line_start + id_len] = ord(",")
    out[line_start + line_len - 1] = ord("\n")
    if k:
        before = np.cumsum(box_len) - box_len  # boxes before this one in the batch
        first_of_image = np.cumsum(np.bincount(image, minlength=n_img)) - np.bincount(image, minlength=n_img)
        box_start = line_start[image] + id_len[image] + 1 + before - before[first_of_image[image]]
        out[_ramp(box_start, mid_len)] = mid_blob[_ramp(mid_off_table[label], mid_len)]
        num_start = box_start + mid_len
        fast = ~slow
        out[num_start[fast, None] + np.arange(width)] = numeric[fast]
        if len(slow_rows):
            out[_ramp(num_start[slow_rows], num_len[slow_rows])] = np.frombuffer(slow_bytes, dtype=np.uint8)
    return out.tobytes()


def _ramp(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ranges [start, start + length) as one index array."""
    total = int(lengths.sum())
    return np.repeat(starts - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)


def write_merged_csv(batches: Iterator[MergedBatch], output: str | os.PathLike, limit_boxes: int,
                     decimals: tuple[int, int], stats: MergeStats, total: int | None = None,
                     progress: bool | None = None) -> MergeStats:
    """Write merged batches as a Kaggle CSV, atomically, with a progress bar (None: only on a terminal)."""

    def texts() -> Iterator[tuple[bytes, MergeStats, int]]:
        for batch in batches:
            part = MergeStats()
            image, rows = finish_rows(batch.image, batch.rows, len(batch.ids), limit_boxes, batch.sorted_desc, part)
            part.boxes_written = len(rows)
            yield format_rows(batch.ids, image, rows, batch.mids, *decimals), part, len(batch.ids)

    return _write_texts(texts(), output, stats, total, progress)


def _write_texts(texts: Iterator[tuple[bytes, MergeStats, int]], output: str | os.PathLike, stats: MergeStats,
                 total: int | None, progress: bool | None) -> MergeStats:
    with atomic_output(output) as f:
        f.write((",".join(HEADER) + "\n").encode())
        with tqdm(total=total, unit="img", desc="merging", disable=None if progress is None else not progress) as bar:
            for text, part, n_images in texts:
                f.write(text)
                stats.add_output(part)
                bar.update(n_images)
    log.debug("%s -> %s", stats.line(), output)
    return stats


_WORKER_JOB: _CacheToCsv | None = None


def _set_worker_job(job: _CacheToCsv) -> None:
    global _WORKER_JOB
    _WORKER_JOB = job


def _run_worker_job(chunk: list[str]) -> tuple[bytes, MergeStats, int]:
    assert _WORKER_JOB is not None
    text, stats = _WORKER_JOB(chunk)
    return text, stats, len(chunk)


def _write_caches_csv(job: _CacheToCsv, ids: list[str], output: str | os.PathLike, batch_images: int,
                      workers: int, progress: bool | None) -> MergeStats:
    """Batches of images merged by `workers` processes (1: in this one), written in order."""
    chunks = _chunks(ids, batch_images)
    stats = MergeStats()
    if workers <= 1 or len(chunks) < 2:
        return _write_texts(((*job(c), len(c)) for c in chunks), output, stats, len(ids), progress)
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(min(workers, len(chunks)), initializer=_set_worker_job, initargs=(job,)) as pool:
        return _write_texts(pool.imap(_run_worker_job, chunks), output, stats, len(ids), progress)


def default_workers() -> int:
    """Worker processes for merging caches: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def write_ensembled_csv(output: str | os.PathLike, *, cache_dirs: Sequence[str | os.PathLike] | None = None,
                        csvs: Sequence[str | os.PathLike] | None = None,
                        labels: ClassList | Sequence[str] | None = None, weights: Sequence[float] | None = None,
                        type: str = "avg", variant: str = "2018", skip_box_thr: float | None = None,
                        iou_thr: float | None = None, limit_boxes: int | None = None, wbf_conf_type: str = "avg",
                        decimals: tuple[int, int] | None = None, batch_images: int = BATCH_IMAGES,
                        workers: int | None = None, progress: bool | None = None) -> MergeStats:
    """Stage 6: ensemble several models' cache folders (or prediction CSVs) into one Kaggle CSV.

    labels: the models' label list (needed for caches; CSVs carry MIDs). Thresholds default to the variant's
    original values (ENSEMBLE_DEFAULTS); decimals to the variant's output format (DECIMALS). workers:
    processes merging batches of cached images (default: `default_workers()`; 1 merges in this process;
    CSVs are always merged in this process). The output is the same for any number of workers.
    """
    if (cache_dirs is None) == (csvs is None):
        raise ValueError("give either cache_dirs or csvs")
    merge_settings(type, variant, wbf_conf_type, weights)
    defaults = ENSEMBLE_DEFAULTS[variant]
    skip_box_thr = defaults["skip_box_thr"] if skip_box_thr is None else skip_box_thr
    iou_thr = defaults["iou_thr"] if iou_thr is None else iou_thr
    limit_boxes = defaults["limit_boxes"] if limit_boxes is None else limit_boxes
    decimals = DECIMALS[variant] if decimals is None else decimals
    if cache_dirs is not None:
        if labels is None:
            raise ValueError("merging caches needs the models' label list")
        mids = label_mids(labels)
        merger, ids = _prepare_caches(cache_dirs, len(mids), skip_box_thr, iou_thr, type, variant, weights,
                                      wbf_conf_type, None)
        job = _CacheToCsv(merger, mids, limit_boxes, decimals)
        return _write_caches_csv(job, ids, output, batch_images, default_workers() if workers is None else workers,
                                 progress)
    stats = MergeStats()
    batches = merge_csvs(csvs, skip_box_thr, iou_thr, type, variant, weights, wbf_conf_type, batch_images, stats)
    return write_merged_csv(batches, output, limit_boxes, decimals, stats, None, progress)


def mirror_merge_image(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                       skip_box_thr: float = MIRROR_DEFAULTS["skip_box_thr"],
                       iou_thr: float = MIRROR_DEFAULTS["iou_thr"], limit_boxes: int = MIRROR_DEFAULTS["limit_boxes"],
                       type: str = MIRROR_DEFAULTS["type"]) -> np.ndarray:
    """One image's cache arrays (boxes (R, N, 4) normalised, scores and labels (R, N); R = 2 with the mirror)
    merged as `write_mirror_merged_csv` merges a cache file: rows (K, 6) `[label, score, x1, y1, x2, y2]`, in
    the order the CSV writes them. The weighted merge only (`wbf` is for ensembles of cache folders)."""
    settings = merge_settings(type, "2018", "avg", None, iou_thr, skip_box_thr)
    if not settings.method.mirror:
        usable = ", ".join(name for name, m in MERGE_METHODS.items() if m.mirror)
        raise ValueError(f"one image's mirror merge uses one of {usable}, not {type}")
    row, lab, sc, bx = filter_rows(boxes, scores, labels, skip_box_thr)
    weights = list_weights([scores.shape[0]], None, type)
    image, rows = settings.method.merge(np.zeros(len(row), dtype=np.int64), row, lab, sc, bx, weights, settings)
    _, rows = finish_rows(image, rows, 1, limit_boxes, sorted_desc=False)
    return rows


def write_mirror_merged_csv(cache_dir: str | os.PathLike, output: str | os.PathLike,
                            labels: ClassList | Sequence[str], skip_box_thr: float = MIRROR_DEFAULTS["skip_box_thr"],
                            iou_thr: float = MIRROR_DEFAULTS["iou_thr"],
                            limit_boxes: int = MIRROR_DEFAULTS["limit_boxes"], type: str = MIRROR_DEFAULTS["type"],
                            decimals: tuple[int, int] = DECIMALS["mirror"], workers: int | None = None,
                            progress: bool | None = None) -> MergeStats:
    """Stage 4's CSV: the original's `create_csv_for_retinanet` on one model's cache folder (see the module doc).

    labels: the model's label list (a class list or its MIDs, in the model's label order). decimals: (score,
    coordinate) decimals, the 2018 stage 4's by default.
    """
    return write_ensembled_csv(output, cache_dirs=[cache_dir], labels=labels, type=type, variant="2018",
                               skip_box_thr=skip_box_thr, iou_thr=iou_thr, limit_boxes=limit_boxes,
                               decimals=decimals, workers=workers, progress=progress)
