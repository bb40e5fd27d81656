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

import numpy as np

from oid_retinanet.boxes.iou import pairwise_iou
from oid_retinanet.model.decode import bbox_transform

NEGATIVE_OVERLAP = 0.4
POSITIVE_OVERLAP = 0.5
LABEL_NEGATIVE = -1
LABEL_IGNORE = -2
STATE_IGNORE, STATE_NEGATIVE, STATE_POSITIVE = -1, 0, 1


def compute_gt_annotations(anchors: np.ndarray, boxes: np.ndarray, negative_overlap: float = NEGATIVE_OVERLAP,
                           positive_overlap: float = POSITIVE_OVERLAP) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(positive mask, ignore mask, index of the best box) per anchor; anchors (N, 4), boxes (M, 4), M >= 1."""
    overlaps = pairwise_iou(anchors, boxes)
    best = np.argmax(overlaps, axis=1)
    best_overlap = overlaps[np.arange(len(anchors)), best]
    positive = best_overlap >= positive_overlap
    ignore = (best_overlap > negative_overlap) & ~positive
    return positive, ignore, best


def anchor_targets(anchors: np.ndarray, image_shapes: Sequence[tuple[int, int]], boxes: Sequence[np.ndarray],
                   labels: Sequence[np.ndarray], negative_overlap: float = NEGATIVE_OVERLAP,
                   positive_overlap: float = POSITIVE_OVERLAP) -> tuple[np.ndarray, np.ndarray]:
    """Targets of a batch: regression (B, N, 5) float32 (4 deltas + state) and classification (B, N, 1) float32.

    anchors: (N, 4) for the batch's (padded) input shape. image_shapes: each image's own (height, width)
    before padding. boxes[i]: (M_i, 4) in pixels of the network input, labels[i]: (M_i,) class indices.
    Classification holds the class index of positive anchors, LABEL_NEGATIVE or LABEL_IGNORE.
    """
    anchors = np.asarray(anchors, np.float64)
    n = len(anchors)
    regression = np.zeros((len(image_shapes), n, 5), np.float32)
    classification = np.full((len(image_shapes), n, 1), LABEL_NEGATIVE, np.float32)
    centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centres_y = (anchors[:, 1] + anchors[:, 3]) / 2
    for i, (shape, img_boxes, img_labels) in enumerate(zip(image_shapes, boxes, labels)):
        img_boxes = np.asarray(img_boxes, np.float64).reshape(-1, 4)
        state = regression[i, :, 4]
        if len(img_boxes):
            positive, ignore, best = compute_gt_annotations(anchors, img_boxes, negative_overlap, positive_overlap)
            state[ignore] = STATE_IGNORE
            state[positive] = STATE_POSITIVE
            regression[i, :, :4] = bbox_transform(anchors, img_boxes[best])
            classification[i, positive, 0] = np.asarray(img_labels)[best[positive]]
        outside = (centres_x >= shape[1]) | (centres_y >= shape[0])
        state[outside] = STATE_IGNORE
        classification[i, state == STATE_IGNORE, 0] = LABEL_IGNORE
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

