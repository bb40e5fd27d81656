"""IoU against hand-worked boxes and a per-pair Python loop."""

from __future__ import annotations

import numpy as np

from oid_retinanet.boxes.iou import pairwise_iou


def _slow_iou(a, b, one):
    iw = min(a[2], b[2]) - max(a[0], b[0]) + one
    ih = min(a[3], b[3]) - max(a[1], b[1]) + one
    inter = max(iw, 0) * max(ih, 0)
    union = (a[2] - a[0] + one) * (a[3] - a[1] + one) + (b[2] - b[0] + one) * (b[3] - b[1] + one) - inter
    return inter / union if union > 0 else 0.0


def test_hand_worked():
    a = np.array([[0, 0, 2, 2]])
    b = np.array([[1, 1, 3, 3], [2, 2, 4, 4], [0, 0, 2, 2]])
    np.testing.assert_allclose(pairwise_iou(a, b), [[1 / 7, 0, 1]])
    # '+1' convention: 3x3 boxes overlapping 2x2, and touching boxes now overlap 1 unit
    np.testing.assert_allclose(pairwise_iou(a, b, plus_one=True), [[4 / 14, 1 / 17, 1]])


def test_against_loop():
    rng = np.random.default_rng(0)
    xy = np.sort(rng.random((40, 2, 2)), axis=1)
    boxes = np.stack([xy[:, 0, 0], xy[:, 0, 1], xy[:, 1, 0], xy[:, 1, 1]], axis=1)
    for one in (0.0, 1.0):
        expected = [[_slow_iou(p, q, one) for q in boxes[20:]] for p in boxes[:20]]
        np.testing.assert_allclose(pairwise_iou(boxes[:20], boxes[20:], plus_one=bool(one)), expected, rtol=1e-12)
