"""bench_model's comparison of our detections with keras-retinanet's (hand-worked cases)."""

from __future__ import annotations

import numpy as np

from bench.bench_model import compare_detections


def _detections(boxes, scores, labels, pad_to: int = 5):
    """(1, pad_to, ...) arrays as both models return them: -1 padded."""
    n = len(labels)
    b = np.full((1, pad_to, 4), -1.0)
    s = np.full((1, pad_to), -1.0)
    c = np.full((1, pad_to), -1)
    b[0, :n], s[0, :n], c[0, :n] = boxes, scores, labels
    return b, s, c


def test_near_tied_detections_swapping_ranks_are_found():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], float)
    theirs = dict(zip(("boxes", "scores", "labels"), _detections(boxes, [0.9, 0.5000001, 0.5], [1, 2, 3])))
    ours = _detections(boxes[[0, 2, 1]] + 0.001, [0.9, 0.5000004, 0.5000002], [1, 3, 2])  # ranks 2, 3 swapped
    c = compare_detections(ours, theirs)
    assert (c["detections"], c["found"], c["same_order"]) == (3, 3, False)
    np.testing.assert_allclose([c["max_abs_dev_scores"], c["max_abs_dev_boxes"]], [4e-7, 0.001], rtol=1e-3)


def test_other_label_moved_box_or_score_is_not_found():
    boxes = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], float)
    theirs = dict(zip(("boxes", "scores", "labels"), _detections(boxes, [0.9, 0.6, 0.5], [1, 2, 3])))
    moved = boxes.copy()
    moved[1, 2] += 0.5
    ours = _detections(moved, [0.9, 0.6, 0.5001], [4, 2, 3])  # label, box and score each off once
    c = compare_detections(ours, theirs)
    assert (c["detections"], c["found"], c["same_order"]) == (3, 0, False)
    ours = _detections(boxes[:2], [0.9, 0.6], [1, 2])  # the last one missing (e.g. past the 300-box cut)
    assert compare_detections(ours, theirs)["found"] == 2
