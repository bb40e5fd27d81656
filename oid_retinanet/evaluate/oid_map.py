"""The Open Images challenge detection metric (OID Challenge 2018/2019 mAP@0.5), exactly, in numpy.

This reproduces the TensorFlow Object Detection API's `OpenImagesDetectionChallengeEvaluator` as run by
`metrics/oid_challenge_evaluation.py` (see ../shared/fixtures/oid_eval/README.md for the rules as recorded):

1. Ground-truth images are the ImageIDs of the box file and the image-level label file together. A class is
   *verified* on an image when it has an image-level label there (positive or negative, Confidence is not looked
   at) or a box. Detections of unverified classes are ignored; detections on images without ground truth are
   never read.
2. Detections with `not (XMin < XMax and YMin < YMax)` are removed; per image and class, detections are sorted by
   score (scores <= -10 dropped, at most 10,000 kept).
3. In score order each detection takes the non-group-of box of its class with the highest IoU (first on ties);
   IoU >= 0.5 and the box not taken yet -> true positive, otherwise false positive (no second choice).
4. Every detection that is not a true positive and whose best group-of box (by intersection over the
   *detection's* area) reaches 0.5 is removed; each group-of box with such detections adds one true positive
   at their highest score (when that score is > 0). Unmatched group-of boxes are misses.
5. num_gt(class) counts every box of the class (group-of ones with weight 1). AP is the VOC area under the
   interpolated precision/recall curve of all entries sorted by score; a class with num_gt 0 is NaN, one with
   num_gt > 0 and no entries 0.0. mAP is np.nanmean over label-map ids 1..max id.

The work is vectorised across images: detections are grouped by (image, class) with one sort, IoU/IoA are computed
for all detection/box pairs of a group at once, and the greedy rule becomes "the first detection in score order
among those whose best box is the same box". The floating-point operations and their order are the official
ones, so results agree bit for bit. Where the official code crashes (a label outside the class list in the
predictions or the ground truth, an inverted ground-truth box) the rows are dropped and counted instead.

Exact score ties are broken deterministically as a stable version of the official `np.argsort(s)[::-1]` would
(later input first); the official order of tied scores depends on numpy's unstable quicksort.

Boxes are (N, 4) arrays x1, y1, x2, y2 (XMin, YMin, XMax, YMax), normalised to [0, 1].
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import re
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv

from oid_retinanet.errors import OIDInputError
from oid_retinanet.evaluate.expand_gt import ExpansionMaps, expansion_index, positive_flags
from oid_retinanet.files import atomic_path, atomic_write_text, native_input, open_input, reading
from oid_retinanet.oid.annotations import file_line, read_csv_checked, read_image_labels
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.oid.predictions import HEADER as KAGGLE_HEADER
from oid_retinanet.oid.predictions import ImagePredictions, PredictionBlock, iter_prediction_blocks

log = logging.getLogger(__name__)

MATCHING_IOU_THRESHOLD = 0.5
GROUP_OF_WEIGHT = 1.0
NMS_SCORE_THRESHOLD = -10.0      # the official per-class "NMS" keeps scores > -10 ...
NMS_MAX_OUTPUT_BOXES = 10_000    # ... and at most this many per image and class; its IoU threshold 1.0 = no NMS
OFFICIAL_COLUMNS = ("ImageID", "LabelName", "Score", "XMin", "XMax", "YMin", "YMax")
METRIC_PREFIX = "OpenImagesDetectionChallenge_"
_MAX_PAIRS = 1 << 20             # detection/box pairs per block: bounds the memory of the overlap step


# ---------------------------------------------------------------------------------------------------------------
# Class lists: a class-description CSV or a StringIntLabelMap .pbtxt
# ---------------------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalClasses:
    """The classes scored: MIDs, display names and label-map ids (1-based; a CSV list numbers its rows 1..N)."""

    mids: tuple[str, ...]
    names: tuple[str, ...]
    ids: tuple[int, ...]
    source: str = "<memory>"

    def __len__(self) -> int:
        return len(self.mids)

    @cached_property
    def _index(self) -> pd.Index:
        return pd.Index(self.mids)

    def index_of(self, mids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Position of each MID in this list (int64), -1 for MIDs outside it."""
        if len(mids) == 0:
            return np.zeros(0, dtype=np.int64)
        return self._index.get_indexer(np.asarray(mids, dtype=object)).astype(np.int64)

    @property
    def max_id(self) -> int:
        return max(self.ids)

    @classmethod
    def from_mids(cls, mids: Sequence[str], names: Sequence[str] | None = None) -> EvalClasses:
        """Classes numbered 1..N in the given order."""
        return cls(tuple(mids), tuple(names or mids), tuple(range(1, len(mids) + 1)))


_ITEM = re.compile(r"\bitem\s*\{(.*?)\}", re.S)
_FIELD = re.compile(r"(\w+)\s*:\s*(\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s}]+)")


def read_labelmap(path: str) -> EvalClasses:
    """Read a StringIntLabelMap .pbtxt (`item { name: "/m/..." id: N display_name: "..." }`), items in file order."""
    with open(path, encoding="utf-8") as f:
        text = re.sub(r"#[^\n]*", "", f.read())
    mids, names, ids = [], [], []
    for n, item in enumerate(_ITEM.finditer(text), start=1):
        fields = {k: v.strip("\"'") if v[:1] in "\"'" else v for k, v in _FIELD.findall(item.group(1))}
        line = text.count("\n", 0, item.start()) + 1
        if "name" not in fields or "id" not in fields:
            raise OIDInputError(f"label-map item {n} needs a name and an id", path, line)
        try:
            id_ = int(fields["id"])
        except ValueError:
            raise OIDInputError(f"label-map item {n}: id {fields['id']!r} is not an integer", path, line) from None
        if id_ < 1:
            raise OIDInputError(f"label-map item {n}: ids must be 1-based, got {id_}", path, line)
        if fields["name"] in mids or id_ in ids:
            raise OIDInputError(f"label-map item {n}: name {fields['name']!r} or id {id_} repeated", path, line)
        mids.append(fields["name"])
        names.append(fields.get("display_name", fields["name"]))
        ids.append(id_)
    if not mids:
        raise OIDInputError("no label-map items", path)
    return EvalClasses(tuple(mids), tuple(names), tuple(ids), str(path))


def read_eval_classes(path: str) -> EvalClasses:
    """The class list to score: a .pbtxt label map, or a class-description CSV (`MID,DisplayName`, ids 1..N)."""
    with open(path, encoding="utf-8-sig") as f:
        head = f.read(4096)
    if str(path).endswith(".pbtxt") or re.match(r"\s*(#[^\n]*\n\s*)*item\s*\{", head):
        return read_labelmap(path)
    cl = read_class_descriptions(path)
    return EvalClasses(cl.mids, cl.names, tuple(range(1, len(cl) + 1)), str(path))


# ---------------------------------------------------------------------------------------------------------------
# Ground truth
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class GroundTruth:
    """Boxes and verified image-level classes, as integer codes.

    image_ids: the ground-truth images, sorted (the official evaluation's groupby order). Boxes keep their file
    order (expanded rows right after their source row). label_*: every image-level label, positive or negative.
    """

    classes: EvalClasses
    image_ids: np.ndarray
    box_image: np.ndarray
    box_class: np.ndarray
    boxes: np.ndarray
    box_group_of: np.ndarray
    label_image: np.ndarray
    label_class: np.ndarray
    stats: dict[str, int] = field(default_factory=dict)

    @cached_property
    def _image_index(self) -> pd.Index:
        return pd.Index(self.image_ids)

    def image_index(self, image_ids: Sequence[str] | np.ndarray) -> np.ndarray:
        """Position of each ImageID among the ground-truth images (int64), -1 for images without ground truth."""
        if len(image_ids) == 0:
            return np.zeros(0, dtype=np.int64)
        return self._image_index.get_indexer(np.asarray(image_ids, dtype=object)).astype(np.int64)

    @cached_property
    def _verified(self) -> tuple[str, np.ndarray]:
        n_classes = len(self.classes)
        keys = np.concatenate([self.label_image * n_classes + self.label_class,
                               self.box_image * n_classes + self.box_class])
        if len(self.image_ids) * n_classes <= 400_000_000:
            table = np.zeros(len(self.image_ids) * n_classes, dtype=bool)
            table[keys] = True
            return "dense", table
        return "sorted", np.unique(keys)

    def verified(self, image: np.ndarray, cls: np.ndarray) -> np.ndarray:
        """Whether class `cls` is verified on image `image` (an image-level label of either sign, or a box)."""
        kind, table = self._verified
        keys = image * len(self.classes) + cls
        if kind == "dense":
            return table[keys]
        pos = np.minimum(np.searchsorted(table, keys), len(table) - 1)
        return table[pos] == keys if len(table) else np.zeros(len(keys), dtype=bool)

    def num_gt(self, group_of_weight: float = GROUP_OF_WEIGHT) -> np.ndarray:
        """Per class: non-group-of boxes + group_of_weight x group-of boxes."""
        weights = np.where(self.box_group_of, group_of_weight, 1.0)
        return np.bincount(self.box_class, weights=weights, minlength=len(self.classes)).astype(np.float64)


def _numeric(df: pd.DataFrame, column: str, path: str) -> np.ndarray:
    col = df[column]
    if col.dtype == object:
        num = pd.to_numeric(col, errors="coerce")
        bad = np.flatnonzero(num.isna().to_numpy() & col.notna().to_numpy() & (col != "").to_numpy())
        if bad.size:
            raise OIDInputError(f"{column} is not a number: {col.iloc[bad[0]]!r}", path, file_line(path, int(bad[0])))
        col = num
    return col.to_numpy(dtype=np.float64)


def _codes_sorted(*columns: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
    """Sorted unique strings over several columns and each column's codes into them."""
    joined = np.concatenate([np.asarray(c, dtype=object) for c in columns]) if columns else np.zeros(0, object)
    codes, uniques = pd.factorize(joined)
    uniques = np.asarray(uniques, dtype=object)
    order = np.argsort(uniques, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    codes = rank[codes]
    out, start = [], 0
    for c in columns:
        out.append(codes[start:start + len(c)])
        start += len(c)
    return uniques[order], out


def ground_truth_from_frames(boxes: pd.DataFrame, labels: pd.DataFrame | None, classes: EvalClasses,
                             expansion: ExpansionMaps | None = None, boxes_path: str = "<boxes>",
                             labels_path: str = "<labels>") -> GroundTruth:
    """Build the ground truth from a box frame (ImageID, LabelName, XMin, XMax, YMin, YMax[, IsGroupOf]) and an
    image-level label frame (ImageID, LabelName, Confidence), expanding both through `expansion` when given.
    Frame rows are file rows (errors name line index + 2).

    Rows with an empty XMin are not boxes (their image still has ground truth), as in the official reader.
    Dropped with a count (the official code stops on them): inverted or partly empty boxes, and labels outside
    `classes` (expected when the hierarchy has parents outside the class list; those classes are not scored).
    """
    stats: Counter[str] = Counter()
    if labels is None:
        labels = pd.DataFrame({"ImageID": np.zeros(0, object), "LabelName": np.zeros(0, object),
                               "Confidence": np.zeros(0)})
    stats["gt_box_rows"] = len(boxes)
    stats["gt_label_rows"] = len(labels)
    coords = np.stack([_numeric(boxes, c, boxes_path) for c in ("XMin", "YMin", "XMax", "YMax")], axis=1)
    if "IsGroupOf" in boxes.columns:
        flag = _numeric(boxes, "IsGroupOf", boxes_path)
        group_of = (flag != 0) & ~np.isnan(flag)  # the official reader casts to int, then bool: -1 is group-of
    else:
        group_of = np.zeros(len(boxes), dtype=bool)
        if len(boxes):
            log.warning("%s has no IsGroupOf column: every box counts as a single object", boxes_path)
    image_ids, (box_img, lab_img) = _codes_sorted(boxes["ImageID"].to_numpy(dtype=object),
                                                  labels["ImageID"].to_numpy(dtype=object))
    box_rows = np.flatnonzero(~np.isnan(coords[:, 0]))
    box_mids = boxes["LabelName"].to_numpy(dtype=object)[box_rows]
    lab_rows = np.arange(len(labels))
    lab_mids = labels["LabelName"].to_numpy(dtype=object)
    if expansion is not None:
        src, box_mids = expansion_index(box_mids, np.ones(len(box_rows), dtype=bool), expansion, boxes_path,
                                        row_numbers=box_rows + 2)
        box_rows = box_rows[src]
        lab_rows, lab_mids = expansion_index(lab_mids, positive_flags(labels["Confidence"], labels_path),
                                             expansion, labels_path)
        stats["gt_box_rows_expanded"] = len(box_rows)
        stats["gt_label_rows_expanded"] = len(lab_rows)
    with np.errstate(invalid="ignore"):
        valid = (coords[box_rows, 0] <= coords[box_rows, 2]) & (coords[box_rows, 1] <= coords[box_rows, 3])
    if not valid.all():
        bad = box_rows[np.flatnonzero(~valid)]
        stats["gt_boxes_dropped_invalid"] = int(bad.size)
        log.warning("%s: %d ground-truth boxes (after expansion) with XMin > XMax, YMin > YMax or an empty "
                    "coordinate dropped (the official code stops on them), first on row %d: %s", boxes_path,
                    bad.size, bad[0] + 2, coords[bad[0]].tolist())
    box_cls = classes.index_of(box_mids)
    lab_cls = classes.index_of(lab_mids)
    outside_b, outside_l = int((valid & (box_cls < 0)).sum()), int((lab_cls < 0).sum())
    if outside_b or outside_l:
        stats["gt_box_rows_outside_class_list"] = outside_b
        stats["gt_label_rows_outside_class_list"] = outside_l
        examples = sorted(set(pd.unique(np.concatenate([box_mids[valid & (box_cls < 0)], lab_mids[lab_cls < 0]]))))
        log.info("ground truth: %d box rows and %d image-level label rows of %d classes outside %s dropped (not "
                 "scored; the official code stops with KeyError), e.g. %s", outside_b, outside_l, len(examples),
                 classes.source, ", ".join(map(str, examples[:5])))
    keep = valid & (box_cls >= 0)
    keep_l = lab_cls >= 0
    kept_rows = box_rows[keep]
    gt = GroundTruth(classes, image_ids, box_img[kept_rows], box_cls[keep], np.ascontiguousarray(coords[kept_rows]),
                     group_of[kept_rows], lab_img[lab_rows[keep_l]], lab_cls[keep_l])
    stats["gt_images"] = len(image_ids)
    stats["gt_boxes"] = int(keep.sum())
    stats["gt_boxes_group_of"] = int(gt.box_group_of.sum())
    stats["gt_image_labels"] = int(keep_l.sum())
    gt.stats = dict(stats)
    return gt


BOX_READ_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax", "IsGroupOf")


def read_ground_truth(boxes_path: str, labels_path: str | None, classes: EvalClasses,
                      expansion: ExpansionMaps | None = None) -> GroundTruth:
    """Read the box CSV and the image-level label CSV (official layouts) and build the ground truth.

    expansion: the hierarchy maps to expand both files with (as `oid_hierarchical_labels_expansion.py`), or None
    for files that are already expanded. Coordinates are parsed with correct rounding (as Python's float()).
    """
    boxes = read_csv_checked(boxes_path, ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax"),
                             str_columns=("ImageID", "LabelName"), usecols=lambda c: c in BOX_READ_COLUMNS,
                             float_precision="round_trip")
    labels = read_image_labels(labels_path) if labels_path else None
    return ground_truth_from_frames(boxes, labels, classes, expansion, str(boxes_path), str(labels_path))


# ---------------------------------------------------------------------------------------------------------------
# Predictions, read in chunks
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class DetectionChunk:
    """A batch of detections: image and label names are stored once and referenced by per-detection codes."""

    image_names: np.ndarray
    image_codes: np.ndarray
    label_names: np.ndarray
    label_codes: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray  # (N, 4) x1, y1, x2, y2 normalised

    def __len__(self) -> int:
        return len(self.scores)

    @classmethod
    def from_arrays(cls, image_ids: Sequence[str] | np.ndarray, mids: Sequence[str] | np.ndarray,
                    scores: np.ndarray, boxes: np.ndarray) -> DetectionChunk:
        """From one row per detection: image id, MID, score, box x1, y1, x2, y2."""
        img_codes, img_names = pd.factorize(np.asarray(image_ids, dtype=object))
        lab_codes, lab_names = pd.factorize(np.asarray(mids, dtype=object))
        return cls(np.asarray(img_names, dtype=object), img_codes, np.asarray(lab_names, dtype=object), lab_codes,
                   np.asarray(scores, dtype=np.float64),
                   np.asarray(boxes, dtype=np.float64).reshape(-1, 4))


def chunks_from_image_predictions(predictions: Iterable[ImagePredictions],
                                  images_per_chunk: int = 5000) -> Iterator[DetectionChunk]:
    """Group per-image predictions (oid.predictions.ImagePredictions) into DetectionChunks."""
    batch: list[ImagePredictions] = []

    def flush() -> DetectionChunk:
        counts = [len(p.scores) for p in batch]
        return DetectionChunk(
            np.array([p.image_id for p in batch], dtype=object), np.repeat(np.arange(len(batch)), counts),
            *_factorized(np.concatenate([np.asarray(p.mids, dtype=object) for p in batch])),
            np.concatenate([np.asarray(p.scores, dtype=np.float64) for p in batch]),
            np.concatenate([np.asarray(p.boxes, dtype=np.float64).reshape(-1, 4) for p in batch]))

    for p in predictions:
        batch.append(p)
        if len(batch) >= images_per_chunk:
            yield flush()
            batch = []
    if batch:
        yield flush()


def _factorized(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    codes, uniques = pd.factorize(values)
    return np.asarray(uniques, dtype=object), codes


def prediction_format(path: str) -> str:
    """'kaggle' for an `ImageId,PredictionString` CSV, 'official' for `ImageID,LabelName,Score,XMin,...`."""
    with open_input(path, "rb") as f:  # the header line alone: a text reader would decode (and fail on) what follows
        line = f.readline(1 << 20)
    try:
        text = line.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise OIDInputError(f"not a UTF-8 text file ({exc.reason} at byte {exc.start})", path) from None
    header = next(csv.reader([text]), [])
    columns = [c.strip() for c in header]
    if tuple(columns) == KAGGLE_HEADER:
        return "kaggle"
    if all(c in columns for c in OFFICIAL_COLUMNS):
        return "official"
    if not columns:
        raise OIDInputError("file is empty", path)
    raise OIDInputError(f"unknown prediction format: header {','.join(columns)} (expected "
                        f"{','.join(KAGGLE_HEADER)} or {','.join(OFFICIAL_COLUMNS)})", path, 1)


def iter_prediction_chunks(path: str, block_bytes: int = 1 << 22, progress=None) -> Iterator[DetectionChunk]:
    """Stream a predictions CSV (Kaggle or official layout, detected from the header) as DetectionChunks of about
    `block_bytes` of text each, so memory does not grow with the file. progress: called with bytes read.

    Malformed input raises OIDInputError naming the row. Box validity and labels are not checked here: the
    evaluators drop (and count) what the official evaluation drops (NaN scores included).
    """
    if prediction_format(path) == "kaggle":
        for block in iter_prediction_blocks(path, block_bytes, finite=False, progress=progress):
            yield _kaggle_chunk(block)
        return
    str_type = pa.dictionary(pa.int32(), pa.string())
    types = {"ImageID": str_type, "LabelName": str_type}
    types.update({c: pa.float64() for c in OFFICIAL_COLUMNS[2:]})
    read_opts = pacsv.ReadOptions(block_size=block_bytes, use_threads=False)  # threads: read-ahead, more memory
    convert = pacsv.ConvertOptions(column_types=types, include_columns=list(OFFICIAL_COLUMNS),
                                   strings_can_be_null=False)
    # a native file (not a Python file object, which pyarrow's reader may release from its own thread)
    with reading(path), native_input(path) as (source, raw):
        try:
            reader = pacsv.open_csv(source, read_options=read_opts, convert_options=convert)
            done = 0
            for batch in reader:
                if progress is not None:
                    progress(raw.tell() - done)  # the reader reads ahead: approximate
                    done = raw.tell()
                if batch.num_rows:
                    yield _official_chunk(batch)
        except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
            _raise_located(path, exc)


def _kaggle_chunk(block: PredictionBlock) -> DetectionChunk:
    """The detections of a block of Kaggle rows (oid.predictions' reader: tokens checked, numbers parsed)."""
    labels = block.mids.dictionary_encode()
    return DetectionChunk(np.asarray(block.ids.to_numpy(zero_copy_only=False), dtype=object), block.box_row,
                          np.asarray(labels.dictionary.to_numpy(zero_copy_only=False), dtype=object),
                          labels.indices.to_numpy(zero_copy_only=False).astype(np.int64),
                          np.ascontiguousarray(block.numbers[:, 0]), np.ascontiguousarray(block.numbers[:, 1:]))


def _dict_column(batch: pa.RecordBatch, name: str) -> tuple[np.ndarray, np.ndarray]:
    col = batch.column(name)
    return (np.asarray(col.dictionary.to_numpy(zero_copy_only=False), dtype=object),
            col.indices.to_numpy(zero_copy_only=False).astype(np.int64))


def _official_chunk(batch: pa.RecordBatch) -> DetectionChunk:
    img_names, img_codes = _dict_column(batch, "ImageID")
    lab_names, lab_codes = _dict_column(batch, "LabelName")
    num = {c: batch.column(c).to_numpy(zero_copy_only=False) for c in OFFICIAL_COLUMNS[2:]}
    boxes = np.stack([num["XMin"], num["YMin"], num["XMax"], num["YMax"]], axis=1).astype(np.float64)
    return DetectionChunk(img_names, img_codes, lab_names, lab_codes, num["Score"].astype(np.float64), boxes)


def _raise_located(path: str, exc: Exception) -> None:
    """Find the first bad row of an official-layout file with the csv module (slow, only after pyarrow failed)."""
    with open_input(path, "rt", encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader)]
        at = {c: header.index(c) for c in header}
        for line, row in enumerate(reader, start=2):
            if not row or row == [""]:
                continue
            if len(row) != len(header):
                raise OIDInputError(f"expected {len(header)} columns, got {len(row)}", path, line) from None
            for c in OFFICIAL_COLUMNS[2:]:
                value = row[at[c]].strip()
                try:
                    float(value) if value else None
                except ValueError:
                    raise OIDInputError(f"{c} is not a number: {value!r}", path, line) from None
    raise OIDInputError(f"malformed CSV: {str(exc).strip()}", path) from None


# ---------------------------------------------------------------------------------------------------------------
# Overlaps between detections and the boxes of their (image, class) group
# ---------------------------------------------------------------------------------------------------------------

def _pair_overlaps(det: np.ndarray, gt: np.ndarray, kind: str) -> np.ndarray:
    """Overlap of det[i] with gt[i], both (P, 4) x1, y1, x2, y2, in the official operation order.

    'iou': np_box_ops.iou; 'ioa': np_box_ops.ioa (intersection over the detection's area);
    'voc', 'voc+1': keras-retinanet's compute_overlap (0 unless width and height overlap; '+1' pixel areas).
    """
    if kind in ("iou", "ioa"):
        heights = np.maximum(0.0, np.minimum(det[:, 3], gt[:, 3]) - np.maximum(det[:, 1], gt[:, 1]))
        widths = np.maximum(0.0, np.minimum(det[:, 2], gt[:, 2]) - np.maximum(det[:, 0], gt[:, 0]))
        inter = heights * widths
        det_area = (det[:, 3] - det[:, 1]) * (det[:, 2] - det[:, 0])
        if kind == "ioa":
            return inter / det_area
        gt_area = (gt[:, 3] - gt[:, 1]) * (gt[:, 2] - gt[:, 0])
        return inter / (det_area + gt_area - inter)
    one = 1.0 if kind == "voc+1" else 0.0
    iw = np.minimum(det[:, 2], gt[:, 2]) - np.maximum(det[:, 0], gt[:, 0]) + one
    ih = np.minimum(det[:, 3], gt[:, 3]) - np.maximum(det[:, 1], gt[:, 1]) + one
    hit = (iw > 0) & (ih > 0)
    out = np.zeros(len(det))
    if hit.any():
        d, g, iw, ih = det[hit], gt[hit], iw[hit], ih[hit]
        gt_area = (g[:, 2] - g[:, 0] + one) * (g[:, 3] - g[:, 1] + one)
        union = (d[:, 2] - d[:, 0] + one) * (d[:, 3] - d[:, 1] + one) + gt_area - iw * ih
        out[hit] = iw * ih / union
    return out


def best_overlaps(det_keys: np.ndarray, det_boxes: np.ndarray, gt_keys: np.ndarray, gt_boxes: np.ndarray,
                  kind: str) -> tuple[np.ndarray, np.ndarray]:
    """For each detection, the box of its group (same key) with the highest overlap, first one on ties.

    gt_keys must be sorted (stable, so boxes keep their order within a group). Returns (index into gt_keys or -1
    when the group has no box or the overlap is NaN, overlap value). Computed in blocks of at most _MAX_PAIRS
    detection/box pairs.
    """
    n_det = len(det_keys)
    best = np.full(n_det, -1, dtype=np.int64)
    best_value = np.zeros(n_det)
    if not n_det or not len(gt_keys):
        return best, best_value
    lo = np.searchsorted(gt_keys, det_keys, "left")
    n = np.searchsorted(gt_keys, det_keys, "right") - lo
    has = np.flatnonzero(n)
    if not has.size:
        return best, best_value
    ends = np.cumsum(n[has])
    start = 0
    while start < has.size:
        done = ends[start - 1] if start else 0
        stop = max(start + 1, int(np.searchsorted(ends, done + _MAX_PAIRS, "right")))
        d = has[start:stop]
        count = n[d]
        first = np.cumsum(count) - count
        pair_det = np.repeat(np.arange(d.size), count)
        pair_gt = np.repeat(lo[d] - first, count) + np.arange(int(count.sum()))
        overlap = _pair_overlaps(det_boxes[d][pair_det], gt_boxes[pair_gt], kind)
        top = np.maximum.reduceat(overlap, first)
        hit = np.flatnonzero(overlap == top[pair_det])  # NaN never equals: such a detection matches nothing
        if hit.size:
            hit = hit[np.r_[True, pair_det[hit[1:]] != pair_det[hit[:-1]]]]
            best[d[pair_det[hit]]] = pair_gt[hit]
        best_value[d] = top
        start = stop
    return best, best_value


def first_per_box(box: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Indices of the detections that win their box: the first (in array order) eligible one per box index."""
    candidates = np.flatnonzero(eligible & (box >= 0))
    _, first = np.unique(box[candidates], return_index=True)
    return candidates[first]


def group_starts(sorted_keys: np.ndarray) -> np.ndarray:
    """Start index of each run of equal values in a sorted array."""
    if not len(sorted_keys):
        return np.zeros(0, dtype=np.int64)
    return np.flatnonzero(np.r_[True, sorted_keys[1:] != sorted_keys[:-1]])


def rank_in_group(sorted_keys: np.ndarray) -> np.ndarray:
    """0, 1, 2, ... within each run of equal values of a sorted array."""
    starts = group_starts(sorted_keys)
    lengths = np.diff(np.r_[starts, len(sorted_keys)])
    return np.arange(len(sorted_keys)) - np.repeat(starts, lengths)


# ---------------------------------------------------------------------------------------------------------------
# Average precision
# ---------------------------------------------------------------------------------------------------------------

def precision_recall(labels: np.ndarray, num_gt: float) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall of entries already sorted by score (labels: TP weight, <= 0 for a false positive),
    as object_detection.utils.metrics.compute_precision_recall."""
    cum_tp = np.cumsum(labels)
    cum_fp = np.cumsum((labels <= 0).astype(np.float64))
    precision = cum_tp.astype(np.float64) / (cum_tp + cum_fp)
    recall = cum_tp.astype(np.float64) / num_gt
    return precision, recall


def voc_average_precision(precision: np.ndarray, recall: np.ndarray) -> float:
    """Area under the interpolated precision/recall curve (VOC 2010+, all points), as the official
    compute_average_precision: sentinels (0, 0) and (1, 0), precision made non-increasing from the right,
    sum of recall steps times precision. 0.0 for no entries."""
    if not precision.size:
        return 0.0
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]
    i = np.flatnonzero(r[1:] != r[:-1]) + 1
    return float(np.sum((r[i] - r[i - 1]) * p[i]))


# ---------------------------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------------------------

@dataclass
class MetricResult:
    """Per-class results of one evaluation; arrays follow the order of `classes`."""

    metric: str
    mean_ap: float
    classes: EvalClasses
    ap: np.ndarray
    num_gt: np.ndarray
    num_tp: np.ndarray
    num_detections: np.ndarray
    num_entries: np.ndarray
    counts: dict[str, int]
    gt_stats: dict[str, int]
    curves: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict, repr=False)

    @property
    def num_scored(self) -> int:
        """Classes with an AP (not NaN)."""
        return int(np.count_nonzero(~np.isnan(self.ap)))

    def per_class(self) -> pd.DataFrame:
        """One row per class: mid, name, AP, num_gt, num_tp, num_detections, num_entries."""
        return pd.DataFrame({"mid": self.classes.mids, "name": self.classes.names, "AP": self.ap,
                             "num_gt": self.num_gt, "num_tp": self.num_tp,
                             "num_detections": self.num_detections, "num_entries": self.num_entries})


class DetectionStore:
    """Accumulates chunks of detections on ground-truth images, keeping what `_keep` lets through.

    Kept per detection: image index, class index, score, box and its position in the input (for tie-breaks).
    Counts every dropped or ignored detection by reason.
    """

    def __init__(self, gt: GroundTruth) -> None:
        self.gt = gt
        self.counts: Counter[str] = Counter()
        self._parts: list[tuple[np.ndarray, ...]] = []
        self._seen = 0
        self.unknown_labels: set[str] = set()
        self.timings: dict[str, float] = {}  # seconds of evaluate()'s stages: match, ap
        self._result: MetricResult | None = None

    def evaluate(self, keep_curves: bool = False) -> MetricResult:
        """Score what was added. The detections are handed over to the scoring (not kept twice in memory), so
        the first result is kept and returned again by later calls; add() is refused after it."""
        if self._result is None:
            self._result = self._evaluate(keep_curves)
        return self._result

    def _evaluate(self, keep_curves: bool) -> MetricResult:
        raise NotImplementedError

    def add(self, chunk: DetectionChunk) -> None:
        """Map a chunk onto the ground truth and keep the detections the metric scores."""
        if self._result is not None:
            raise RuntimeError("evaluate() was already called on this evaluator; make a new one")
        n = len(chunk)
        seq = np.arange(self._seen, self._seen + n, dtype=np.int64)
        self._seen += n
        self.counts["predictions_read"] += n
        if not n:
            return
        img = self.gt.image_index(chunk.image_names)[chunk.image_codes]
        on_gt = img >= 0
        self.counts["ignored_image_without_gt"] += int(n - on_gt.sum())
        label_index = self.gt.classes.index_of(chunk.label_names)
        cls = label_index[chunk.label_codes]
        unknown = on_gt & (cls < 0)
        if unknown.any():
            self.counts["dropped_unknown_label"] += int(unknown.sum())
            if len(self.unknown_labels) < 20:
                self.unknown_labels.update(chunk.label_names[np.unique(chunk.label_codes[unknown])][:20].tolist())
        keep = np.flatnonzero(on_gt & (cls >= 0))
        img, cls = img[keep], cls[keep]
        scores, boxes, seq = chunk.scores[keep], chunk.boxes[keep], seq[keep]
        mask = self._keep(img, cls, scores, boxes)
        if mask is not None:
            img, cls, scores, boxes, seq = img[mask], cls[mask], scores[mask], boxes[mask], seq[mask]
        self._parts.append((img, cls, scores, boxes, seq))

    def _keep(self, img: np.ndarray, cls: np.ndarray, scores: np.ndarray, boxes: np.ndarray) -> np.ndarray | None:
        return None

    def detections(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All kept detections: image, class, score, box (N, 4), input position (the chunks are merged into one
        as they are concatenated, so their memory is not held twice)."""
        if not self._parts:
            return (np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0), np.zeros((0, 4)),
                    np.zeros(0, np.int64))
        if len(self._parts) > 1:
            merged = []
            for i in range(5):
                merged.append(np.concatenate([p[i] for p in self._parts]))
                self._parts = [tuple(a if j != i else None for j, a in enumerate(p)) for p in self._parts]
            self._parts = [tuple(merged)]
        return self._parts[0]  # type: ignore[return-value]

    def log_counts(self, name: str) -> None:
        c = self.counts
        log.info("%s: %d predictions read; %d on images without ground truth ignored (as official)", name,
                 c["predictions_read"], c["ignored_image_without_gt"])
        if c["dropped_unknown_label"]:
            log.warning("%d predictions with labels outside %s dropped (the official evaluation stops with "
                        "KeyError on them), e.g. %s", c["dropped_unknown_label"], self.gt.classes.source,
                        ", ".join(sorted(self.unknown_labels)[:5]))


class OIDChallengeEvaluator(DetectionStore):
    """The official Open Images challenge detection metric; add() chunks, then evaluate()."""

    metric = "oid"

    def __init__(self, gt: GroundTruth, matching_iou_threshold: float = MATCHING_IOU_THRESHOLD,
                 group_of_weight: float = GROUP_OF_WEIGHT) -> None:
        super().__init__(gt)
        self.iou_threshold = matching_iou_threshold
        self.group_of_weight = group_of_weight

    def _keep(self, img, cls, scores, boxes):
        verified = self.gt.verified(img, cls)
        self.counts["ignored_unverified_class"] += int((~verified).sum())
        valid = (boxes[:, 0] < boxes[:, 2]) & (boxes[:, 1] < boxes[:, 3])
        self.counts["dropped_invalid_box"] += int((verified & ~valid).sum())
        scored = scores > NMS_SCORE_THRESHOLD  # also drops NaN scores, as the official filter does
        self.counts["dropped_score_not_above_-10"] += int((verified & valid & ~scored).sum())
        return verified & valid & scored

    def _evaluate(self, keep_curves: bool) -> MetricResult:
        """Match, fold group-of boxes, compute AP per class and the mAP."""
        started = time.perf_counter()
        gt, n_classes = self.gt, len(self.gt.classes)
        img, cls, scores, boxes, seq = self.detections()
        self._parts = []
        # per image and class, score order; ties: later input first (a stable argsort(scores)[::-1])
        order = np.lexsort((-seq, -scores, img * n_classes + cls))
        img, cls, scores, boxes = img[order], cls[order], scores[order], boxes[order]
        key = img * n_classes + cls
        within = rank_in_group(key) < NMS_MAX_OUTPUT_BOXES
        if not within.all():
            self.counts["dropped_over_10000_per_image_and_class"] = int((~within).sum())
            img, cls, scores, boxes, key = img[within], cls[within], scores[within], boxes[within], key[within]
        self.counts["evaluated"] = len(key)

        gt_key = gt.box_image * n_classes + gt.box_class
        single = np.flatnonzero(~gt.box_group_of)
        single = single[np.argsort(gt_key[single], kind="stable")]
        group = np.flatnonzero(gt.box_group_of)
        group = group[np.argsort(gt_key[group], kind="stable")]

        best, iou = best_overlaps(key, boxes, gt_key[single], gt.boxes[single], "iou")
        with np.errstate(invalid="ignore"):
            tp = np.zeros(len(key), dtype=bool)
            tp[first_per_box(best, iou >= self.iou_threshold)] = True
            rest = np.flatnonzero(~tp)
            best_group, ioa = best_overlaps(key[rest], boxes[rest], gt_key[group], gt.boxes[group], "ioa")
            in_group = (best_group >= 0) & (ioa >= self.iou_threshold)
        folded = rest[in_group]
        group_hit = best_group[in_group]
        # the first folded detection of a group-of box is its highest-scoring one (score order within groups)
        group_ids, first = np.unique(group_hit, return_index=True)
        group_scores = scores[folded[first]]
        entry_made = (group_scores > 0) & (self.group_of_weight > 0)
        group_ids, group_scores = group_ids[entry_made], group_scores[entry_made]

        kept = np.ones(len(key), dtype=bool)
        kept[folded] = False
        det_entries = np.flatnonzero(kept)
        group_box = group[group_ids]
        e_cls = np.concatenate([cls[det_entries], gt.box_class[group_box]])
        e_img = np.concatenate([img[det_entries], gt.box_image[group_box]])
        e_score = np.concatenate([scores[det_entries], group_scores])
        e_label = np.concatenate([tp[det_entries].astype(np.float64),
                                  np.full(len(group_ids), float(self.group_of_weight))])
        # position in the official per-image output: kept detections in score order, then group-of entries
        e_pos = np.concatenate([det_entries, len(key) + group_ids])

        num_gt = gt.num_gt(self.group_of_weight)
        self.timings["match"] = time.perf_counter() - started
        started = time.perf_counter()
        result = _score_entries(self.metric, gt, e_cls, e_img, e_score, e_label, e_pos, num_gt,
                                np.bincount(cls, minlength=n_classes), dict(self.counts), keep_curves,
                                reverse_ties=True)
        self.timings["ap"] = time.perf_counter() - started
        self.log_counts("OID challenge metric")
        c = self.counts
        log.info("%d ignored (class not verified on the image), %d invalid boxes dropped, %d evaluated; "
                 "%d group-of entries", c["ignored_unverified_class"], c["dropped_invalid_box"], c["evaluated"],
                 len(group_ids))
        return result


def _score_entries(metric: str, gt: GroundTruth, e_cls, e_img, e_score, e_label, e_pos, num_gt: np.ndarray,
                   num_detections: np.ndarray, counts: dict, keep_curves: bool, reverse_ties: bool,
                   eps_precision: bool = False) -> MetricResult:
    """AP per class from scored entries, and the result object (mAP left to the caller's rule for VOC)."""
    n_classes = len(gt.classes)
    tie = (-e_img, -e_pos) if reverse_ties else (e_img, e_pos)
    order = np.lexsort((tie[1], tie[0], -e_score, e_cls))
    labels, sorted_cls = e_label[order], e_cls[order]
    bounds = np.searchsorted(sorted_cls, np.arange(n_classes + 1))
    ap = np.full(n_classes, np.nan)
    curves: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    for c in np.flatnonzero(num_gt > 0):
        lab = labels[bounds[c]:bounds[c + 1]]
        if eps_precision:  # keras-retinanet: tp / max(tp + fp, eps), recall tp / num_annotations
            tp_cum = np.cumsum(lab)
            fp_cum = np.cumsum(1.0 - lab)
            recall = tp_cum / num_gt[c]
            precision = tp_cum / np.maximum(tp_cum + fp_cum, np.finfo(np.float64).eps)
        else:
            precision, recall = precision_recall(lab, num_gt[c])
        ap[c] = voc_average_precision(precision, recall)
        if keep_curves:
            curves[int(c)] = (precision, recall)
    num_entries = np.bincount(e_cls, minlength=n_classes)
    num_tp = np.bincount(e_cls, weights=e_label, minlength=n_classes)
    ap_by_id = np.full(gt.classes.max_id, np.nan)
    ap_by_id[np.asarray(gt.classes.ids) - 1] = ap
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all NaN: the mean is NaN, as the official code gives
        mean_ap = float(np.nanmean(ap_by_id)) if metric == "oid" else math.nan
    return MetricResult(metric, mean_ap, gt.classes, ap, num_gt, num_tp, num_detections.astype(np.int64),
                        num_entries, counts, dict(gt.stats), curves)


# ---------------------------------------------------------------------------------------------------------------
# Reports: map.json, per_class_ap.csv, per_level_ap.csv, metrics.csv (official layout), a PNG chart
# ---------------------------------------------------------------------------------------------------------------

def summarise_levels(result: MetricResult, levels: Mapping[str, Sequence[str]]) -> list[dict]:
    """Mean AP over the classes of each level that are in the class list and have an AP."""
    index = {m: i for i, m in enumerate(result.classes.mids)}
    rows = []
    for level, mids in levels.items():
        present = [index[m] for m in dict.fromkeys(mids) if m in index]
        aps = result.ap[present] if present else np.zeros(0)
        scored = aps[~np.isnan(aps)]
        rows.append({"level": level, "classes_in_level": len(set(mids)), "classes_in_class_list": len(present),
                     "classes_scored": int(scored.size), "mAP": float(scored.mean()) if scored.size else None})
    return rows


def _json_float(x: float) -> float | None:
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else float(x)


def official_metrics_csv(result: MetricResult) -> str:
    """The text the official script writes to --output_metrics: mAP, then AP per label-map item in id order
    (csv.writer's '\\r\\n' line ends, values as str(np.float64))."""
    prefix = METRIC_PREFIX if result.metric == "oid" else "VOC_"
    lines = [f"{prefix}Precision/mAP@{MATCHING_IOU_THRESHOLD}IOU,{np.float64(result.mean_ap)!s}"]
    for i in np.argsort(result.classes.ids, kind="stable"):
        lines.append(f"{prefix}PerformanceByCategory/AP@{MATCHING_IOU_THRESHOLD}IOU/{result.classes.mids[i]},"
                     f"{np.float64(result.ap[i])!s}")
    return "\r\n".join(lines) + "\r\n"


def write_report(result: MetricResult, output_dir: str, levels: Mapping[str, Sequence[str]] | None = None,
                 extra: dict | None = None, chart: bool = True) -> dict[str, str]:
    """Write map.json, per_class_ap.csv, per_level_ap.csv (with levels), metrics.csv (OID only) and
    per_class_ap.png into output_dir, each atomically. Returns {kind: path}."""
    os.makedirs(output_dir, exist_ok=True)
    paths = {}
    level_rows = summarise_levels(result, levels) if levels else []
    summary = {
        "metric": result.metric, "mAP": _json_float(result.mean_ap), "num_classes": len(result.classes),
        "num_classes_scored": result.num_scored,
        "nan_classes": [m for m, a in zip(result.classes.mids, result.ap) if math.isnan(a)],
        "predictions": dict(result.counts), "ground_truth": dict(result.gt_stats),
        "levels": {r["level"]: {k: v for k, v in r.items() if k != "level"} for r in level_rows},
    }
    summary.update(extra or {})
    paths["map.json"] = os.path.join(output_dir, "map.json")
    atomic_write_text(paths["map.json"], json.dumps(summary, indent=1) + "\n")

    table = result.per_class()
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(table.columns)
    for row in table.itertuples(index=False):
        w.writerow([row.mid, row.name, repr(float(row.AP)), _num(row.num_gt), _num(row.num_tp),
                    int(row.num_detections), int(row.num_entries)])
    paths["per_class_ap.csv"] = os.path.join(output_dir, "per_class_ap.csv")
    atomic_write_text(paths["per_class_ap.csv"], buf.getvalue())

    if level_rows:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["level", "classes_in_level", "classes_in_class_list", "classes_scored", "mAP"])
        for r in level_rows:
            w.writerow([r["level"], r["classes_in_level"], r["classes_in_class_list"], r["classes_scored"],
                        "" if r["mAP"] is None else repr(r["mAP"])])
        paths["per_level_ap.csv"] = os.path.join(output_dir, "per_level_ap.csv")
        atomic_write_text(paths["per_level_ap.csv"], buf.getvalue())
    if result.metric == "oid":
        paths["metrics.csv"] = os.path.join(output_dir, "metrics.csv")
        atomic_write_text(paths["metrics.csv"], official_metrics_csv(result))
    if chart:
        paths["per_class_ap.png"] = os.path.join(output_dir, "per_class_ap.png")
        plot_per_class_ap(result, paths["per_class_ap.png"])
    return paths


def _num(x: float) -> int | str:
    return int(x) if float(x).is_integer() else repr(float(x))


def plot_per_class_ap(result: MetricResult, path: str) -> None:
    """A bar per scored class, sorted by AP, with the mAP as a dashed line (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scored = np.flatnonzero(~np.isnan(result.ap))
    order = scored[np.argsort(-result.ap[scored], kind="stable")]
    n = len(order)
    fig, ax = plt.subplots(figsize=(min(24.0, 6.0 + 0.12 * n), 5.0), dpi=100)
    ax.bar(np.arange(n), result.ap[order], width=0.85, color="#3a6ea5")
    if not math.isnan(result.mean_ap):
        ax.axhline(result.mean_ap, color="#c0392b", linestyle="--", linewidth=1.2,
                   label=f"mAP {result.mean_ap:.4f}")
        ax.legend(loc="upper right")
    if n <= 60:
        ax.set_xticks(np.arange(n))
        ax.set_xticklabels([result.classes.names[i] for i in order], rotation=90, fontsize=7)
    else:
        ax.set_xticks([])
        ax.set_xlabel(f"{n} classes, sorted by AP")
    ax.set_ylim(0, 1)
    ax.set_ylabel("AP@0.5")
    title = "Open Images challenge metric" if result.metric == "oid" else "VOC-style metric (keras-retinanet)"
    ax.set_title(f"{title}: {n} of {len(result.classes)} classes scored")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
