"""Intersection over union, vectorised. Boxes are (N, 4) arrays of x1, y1, x2, y2 (any units).

`plus_one=True` is the pixel convention some originals used, `(x2 - x1 + 1) * (y2 - y1 + 1)`, even on
normalised coordinates (ZFTurbo's expansion NMS): every box then looks about one unit larger, so almost any
two boxes in [0, 1] overlap heavily. The default is the plain area.
"""

from __future__ import annotations

import numpy as np


def areas(boxes: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """Areas of (N, 4) boxes x1, y1, x2, y2."""
    boxes = np.asarray(boxes, dtype=np.float64)
    one = 1.0 if plus_one else 0.0
    return (boxes[:, 2] - boxes[:, 0] + one) * (boxes[:, 3] - boxes[:, 1] + one)


def intersections(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """(N, M) intersection areas of boxes a (N, 4) and b (M, 4), both x1, y1, x2, y2."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    one = 1.0 if plus_one else 0.0
    w = np.minimum(a[:, None, 2], b[None, :, 2]) - np.maximum(a[:, None, 0], b[None, :, 0]) + one
    h = np.minimum(a[:, None, 3], b[None, :, 3]) - np.maximum(a[:, None, 1], b[None, :, 1]) + one
    return np.maximum(w, 0.0) * np.maximum(h, 0.0)


def pairwise_iou(a: np.ndarray, b: np.ndarray, plus_one: bool = False) -> np.ndarray:
    """(N, M) IoU of boxes a (N, 4) and b (M, 4), both x1, y1, x2, y2; 0 where the union is empty."""
    inter = intersections(a, b, plus_one)
    union = areas(a, plus_one)[:, None] + areas(b, plus_one)[None, :] - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(union > 0, iou, 0.0)
