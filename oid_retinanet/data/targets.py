"""Anchor targets of keras-retinanet (`anchor_targets_bbox`), with class indices instead of one-hot rows.

For every anchor (x1, y1, x2, y2 in network-input pixels) and an image's ground-truth boxes (same units):
- its overlap is the IoU with the best ground-truth box (plain areas, no +1, as `compute_overlap`);
- state 1 (positive) if that IoU >= 0.5, -1 (ignore) if 0.4 < IoU < 0.5, 0 (negative) otherwise; there is no
  "best anchor of every box is positive" rule;
- anchors whose centre lies at x >= the image's width or y >= its height (the padding of a batch, or past the
  image's edge) are ignored, whatever their overlap;
- regression targets are computed for every anchor against its best box (`model.decode.bbox_transform`,
  std 0.2); the loss reads them only where the state is 1.

keras-retinanet stored the class as a one-hot row of K floats per anchor: with Open Images' 443-500 classes
and ~100,000 anchors that is hundreds of MB per image on the host. Here the classification target is one
number per anchor, `LABEL_NEGATIVE` (-1), `LABEL_IGNORE` (-2) or the class index of a positive anchor, and
the focal loss (`train.losses`) builds what it needs on the device. `dense_targets` turns it back into
keras-retinanet's (N, K + 1) layout (one-hot + state) for comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from oid_retinanet.boxes.iou import areas
from oid_retinanet.model.decode import bbox_transform

NEGATIVE_OVERLAP = 0.4
POSITIVE_OVERLAP = 0.5
LABEL_NEGATIVE = -1
LABEL_IGNORE = -2
STATE_IGNORE, STATE_NEGATIVE, STATE_POSITIVE = -1, 0, 1


# Anchors per chunk of the IoU and of the regression targets: the work arrays of a chunk stay in the CPU cache,
# and a chunk of consecutive anchors (a few rows of one pyramid level) meets only the boxes near those rows.
_IOU_CHUNK = 4096
_REGRESSION_CHUNK = 16384


class _PreparedAnchors(NamedTuple):
    """What `best_overlaps` needs of the anchors, computed once for every image of a batch."""

    columns: tuple[np.ndarray, ...]  # x1, y1, x2, y2, each (N,) contiguous
    areas: np.ndarray
    starts: np.ndarray  # first anchor of each chunk
    lows: np.ndarray  # (chunks, 2): the smallest x1 and y1 of each chunk's anchors
    highs: np.ndarray  # (chunks, 2): the largest x2 and y2


def _prepare(anchors: np.ndarray) -> _PreparedAnchors:
    columns = tuple(np.ascontiguousarray(anchors[:, k]) for k in range(4))
    starts = np.arange(0, len(anchors), _IOU_CHUNK)
    lows = np.stack([np.minimum.reduceat(columns[k], starts) for k in (0, 1)], axis=1)
    highs = np.stack([np.maximum.reduceat(columns[k], starts) for k in (2, 3)], axis=1)
    return _PreparedAnchors(columns, areas(anchors), starts, lows, highs)


def best_overlaps(anchors: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each anchor, the index of the box of highest IoU and that IoU: `argmax` and `max` of
    `pairwise_iou(anchors, boxes)` along the boxes, bit for bit (the first box on ties, so 0 where no box overlaps).

    anchors (N, 4), boxes (M, 4), x1, y1, x2, y2 in the same units.
    """
    anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
    return _best_overlaps(_prepare(anchors), boxes)


def _best_overlaps(prepared: _PreparedAnchors, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The (N, M) matrix is never built: anchors go in chunks, and a chunk is compared only with the boxes that
    # reach its anchors' bounding box (the others have IoU 0 with all of them), in float64 with the operations
    # of `pairwise_iou` in the same order, so every IoU is the same number.
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    ax1, ay1, ax2, ay2 = prepared.columns
    n = len(ax1)
    best = np.zeros(n, np.intp)
    best_iou = np.zeros(n, np.float64)
    if n == 0 or len(boxes) == 0:
        return best, best_iou
    box_areas = areas(boxes)
    # a box and an anchor intersect only if bx1 < ax2 and ax1 < bx2 (and the same in y)
    reach = ((boxes[None, :, 0] < prepared.highs[:, 0:1]) & (boxes[None, :, 2] > prepared.lows[:, 0:1])
             & (boxes[None, :, 1] < prepared.highs[:, 1:2]) & (boxes[None, :, 3] > prepared.lows[:, 1:2]))
    buffers = np.empty((3, max(1, int(reach.sum(axis=1).max())), _IOU_CHUNK), np.float64)
    for start, near in zip(prepared.starts, reach):
        idx = np.flatnonzero(near)
        if not idx.size:
            continue
        end = min(n, start + _IOU_CHUNK)
        chunk = slice(start, end)
        width, height, tmp = buffers[:, :idx.size, :end - start]
        b = boxes[idx]
        # (boxes, anchors), the anchors along the contiguous axis
        np.minimum(ax2[None, chunk], b[:, 2:3], out=width)
        np.subtract(width, np.maximum(ax1[None, chunk], b[:, 0:1], out=tmp), out=width)
        np.maximum(width, 0.0, out=width)
        np.minimum(ay2[None, chunk], b[:, 3:4], out=height)
        np.subtract(height, np.maximum(ay1[None, chunk], b[:, 1:2], out=tmp), out=height)
        np.maximum(height, 0.0, out=height)
        inter = np.multiply(width, height, out=width)
        union = np.add(prepared.areas[None, chunk], box_areas[idx, None], out=height)
        np.subtract(union, inter, out=union)
        empty = None if union.min() > 0 else np.logical_not(union > 0)  # min() is NaN if any is
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.divide(inter, union, out=width)
        if empty is not None:
            iou[empty] = 0.0
        if idx.size == 1:
            top = np.zeros(end - start, np.intp)
        elif idx.size == 2:
            top = (iou[1] > iou[0]).astype(np.intp)
        else:
            top = iou.argmax(axis=0)
        value = iou.max(axis=0)
        # where no box overlaps, argmax over all boxes is box 0; otherwise the first maximum is among `idx`
        best[chunk] = np.where(value > 0, idx[top], 0)
        best_iou[chunk] = value
    return best, best_iou


def compute_gt_annotations(anchors: np.ndarray, boxes: np.ndarray, negative_overlap: float = NEGATIVE_OVERLAP,
                           positive_overlap: float = POSITIVE_OVERLAP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive mask, ignore mask, index of the best box) per anchor; anchors (N, 4), boxes (M, 4), M >= 1."""
    best, best_overlap = best_overlaps(anchors, boxes)
    return _states(best_overlap, negative_overlap, positive_overlap) + (best,)


def _states(best_overlap: np.ndarray, negative_overlap: float, positive_overlap: float
            ) -> tuple[np.ndarray, np.ndarray]:
    positive = best_overlap >= positive_overlap
    ignore = (best_overlap > negative_overlap) & ~positive
    return positive, ignore


def anchor_targets(anchors: np.ndarray, image_shapes: Sequence[tuple[int, int]], boxes: Sequence[np.ndarray],
                   labels: Sequence[np.ndarray], negative_overlap: float = NEGATIVE_OVERLAP,
                   positive_overlap: float = POSITIVE_OVERLAP) -> tuple[np.ndarray, np.ndarray]:
    """Targets of a batch: regression (B, N, 5) float32 (4 deltas + state) and classification (B, N, 1) float32.

    anchors: (N, 4) for the batch's (padded) input shape. image_shapes: each image's own (height, width)
    before padding. boxes[i]: (M_i, 4) in pixels of the network input, labels[i]: (M_i,) class indices.
    Classification holds the class index of positive anchors, LABEL_NEGATIVE or LABEL_IGNORE.
    """
    anchors = np.asarray(anchors, np.float64).reshape(-1, 4)
    n = len(anchors)
    regression = np.zeros((len(image_shapes), n, 5), np.float32)
    classification = np.empty((len(image_shapes), n, 1), np.float32)
    prepared = _prepare(anchors)
    anchors_by_column = np.asfortranarray(anchors)  # bbox_transform runs along contiguous columns
    centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centres_y = (anchors[:, 1] + anchors[:, 3]) / 2
    outside_by_shape: dict[tuple[int, int], np.ndarray] = {}
    for i, (shape, img_boxes, img_labels) in enumerate(zip(image_shapes, boxes, labels)):
        img_boxes = np.asarray(img_boxes, np.float64).reshape(-1, 4)
        shape = (shape[0], shape[1])
        if shape not in outside_by_shape:
            outside_by_shape[shape] = (centres_x >= shape[1]) | (centres_y >= shape[0])
        codes = np.full(n, LABEL_NEGATIVE, np.float32)
        if len(img_boxes):
            best, best_overlap = _best_overlaps(prepared, img_boxes)
            positive, ignore = _states(best_overlap, negative_overlap, positive_overlap)
            state = np.subtract(positive, ignore, dtype=np.float32)  # STATE_POSITIVE, STATE_IGNORE or 0
            matched = img_boxes.T.take(best, axis=1).T  # (N, 4), by column like the anchors
            for start in range(0, n, _REGRESSION_CHUNK):  # chunks: the temporaries stay in the cache
                part = slice(start, start + _REGRESSION_CHUNK)
                regression[i, part, :4] = bbox_transform(anchors_by_column[part], matched[part])
            codes[positive] = np.asarray(img_labels)[best[positive]]
        else:
            state = np.zeros(n, np.float32)
        state[outside_by_shape[shape]] = STATE_IGNORE
        codes[state == STATE_IGNORE] = LABEL_IGNORE
        regression[i, :, 4] = state
        classification[i, :, 0] = codes
    return regression, classification


def dense_targets(regression: np.ndarray, classification: np.ndarray, num_classes: int) -> np.ndarray:
    """keras-retinanet's classification targets (..., N, K + 1) from ours: one-hot of the positives + state.

    Anchors ignored because their centre is outside the image lose their one-hot row here (keras-retinanet
    kept it; the loss never reads it).
    """
    codes = classification[..., 0].astype(np.int64)
    dense = np.zeros(codes.shape + (num_classes + 1,), np.float32)
    positive = codes >= 0
    idx = np.nonzero(positive)
    dense[idx + (codes[positive],)] = 1.0
    dense[..., -1] = regression[..., 4]
    return dense



def matched_boxes(anchors: np.ndarray, boxes: np.ndarray, positive_overlap: float = POSITIVE_OVERLAP) -> np.ndarray:
    """Which boxes (M,) some anchor learns: the boxes that are the best box of at least one positive anchor (IoU
    >= positive_overlap), as keras-retinanet's debug.py drew them green; the others get no positive anchor."""
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    matched = np.zeros(len(boxes), dtype=bool)
    if len(boxes):
        best, best_overlap = best_overlaps(anchors, boxes)
        matched[best[best_overlap >= positive_overlap]] = True
    return matched
