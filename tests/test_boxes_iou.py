"""IoU against hand-worked boxes and a per-pair Python loop."""

from __future__ import annotations

import numpy as np
import pytest

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


# ---------------------------------------------------------------------------------------------------------------
# Soft-NMS against a transcription of its definition (one group at a time, a Python loop over boxes)


def _soft_nms_slow(boxes, scores, iou_thr, sigma, score_thr, method):
    """Bodla et al.'s loop as the 2019 repository's py_cpu_softnms runs it (without its '+1' pixel IoU)."""
    boxes, scores = boxes.copy(), scores.astype(np.float64).copy()
    index = np.arange(len(scores))
    for i in range(len(scores)):
        best = i + int(np.argmax(scores[i:]))
        if scores[best] > scores[i]:
            for a in (boxes, scores, index):
                a[[i, best]] = a[[best, i]]
        for j in range(i + 1, len(scores)):
            iou = float(pairwise_iou(boxes[i:i + 1], boxes[j:j + 1])[0, 0])
            if method == "gaussian":
                scores[j] *= np.exp(-(iou * iou) / sigma)
            elif iou > iou_thr:
                scores[j] *= (1 - iou) if method == "linear" else 0.0
    keep = scores > score_thr
    return dict(zip(index[keep].tolist(), scores[keep].tolist()))


@pytest.mark.parametrize("method", ["gaussian", "linear", "hard"])
def test_batched_soft_nms_equals_the_loop_per_group(method):
    from oid_retinanet.boxes.nms import batched_soft_nms

    rng = np.random.default_rng(7)
    n = 300
    xy = rng.uniform(0, 0.7, size=(n, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(0.05, 0.3, size=(n, 2))], axis=1)
    scores = rng.uniform(0.0005, 1, size=n)  # distinct: the tie rule plays no part
    groups = rng.integers(0, 7, size=n)
    keep, decayed = batched_soft_nms(boxes, scores, groups, iou_thr=0.3, sigma=0.5, score_thr=0.01, method=method)
    expected = {}
    for grp in np.unique(groups):
        members = np.flatnonzero(groups == grp)
        found = _soft_nms_slow(boxes[members], scores[members], 0.3, 0.5, 0.01, method)
        expected.update({int(members[k]): v for k, v in found.items()})
    assert keep.tolist() == sorted(expected) and 0 < len(keep) < n
    np.testing.assert_allclose(decayed, [expected[k] for k in keep.tolist()], rtol=1e-12)
    # hard NMS keeps a box's score or drops the box; the others decay some kept ones
    assert (decayed <= scores[keep]).all() and (decayed < scores[keep]).any() == (method != "hard")
