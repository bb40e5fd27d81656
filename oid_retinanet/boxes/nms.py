"""Greedy non-maximum suppression, vectorised: one group (`nms`) or many independent groups at once
(`batched_nms`, e.g. every (image, class) pair of a chunk of predictions). Boxes are (N, 4) arrays of
x1, y1, x2, y2 in any one unit; `plus_one` is the IoU convention of boxes/iou.py.

The semantics are those of the originals' `nms_standard` (ZFTurbo 2018, gujingxiao 2019):

- boxes are visited by score, highest first, in the order `np.argsort(scores)[::-1]` gives (numpy's default
  quicksort, whose order for equal scores is numpy's, not stable; we call numpy for every group with ties,
  so the same numpy gives the same order);
- a box is kept unless a box kept before it has an IoU above `iou_thr` with it (an IoU equal to the
  threshold keeps it). Where the union is empty the IoU is 0 (the original divided 0 by 0 and dropped the
  box; only degenerate boxes without `plus_one` meet this).

`batched_nms` runs the original's loop for every group at once: in each round the first undecided box of
every group is kept and the boxes of its group it suppresses are dropped. Rounds = the most boxes one group
keeps (one to a few with the '+1' IoU), each vectorised over all groups; memory is O(N).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from oid_retinanet.boxes.iou import areas


def nms(boxes: np.ndarray, scores: np.ndarray, iou_thr: float, plus_one: bool = False) -> np.ndarray:
    """Indices of the boxes greedy NMS keeps, in keep order (score descending).

    boxes: (N, 4) x1, y1, x2, y2; scores: (N,); a box is suppressed by a kept box with IoU > iou_thr.
    """
    scores = np.asarray(scores, dtype=np.float64)
    return batched_nms(boxes, scores, np.zeros(len(scores), dtype=np.int64), iou_thr, plus_one)


def score_order(scores: np.ndarray, groups: np.ndarray) -> np.ndarray:
    """Indices sorted by group (ascending), then as `np.argsort(group's scores)[::-1]` orders each group.

    The members of a group are taken in index order, as the originals built each group's array. Groups
    without equal scores need no numpy call: descending score is the whole order. Groups with ties are
    sorted by numpy itself, one 2-D argsort per group size, so their tie order is numpy's.
    """
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    n = len(scores)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if np.isnan(scores).any():
        raise ValueError("NaN score: NMS needs comparable scores")
    # Arrow's two-key sort is several times faster than np.lexsort; any order of equal scores will do here
    table = pa.Table.from_arrays([_arrow(groups, pa.int64()), _arrow(scores, pa.float64())], names=["g", "s"])
    indices = pc.sort_indices(table, sort_keys=[("g", "ascending"), ("s", "descending")])
    order = np.frombuffer(indices.buffers()[1], dtype=np.uint64)[indices.offset:indices.offset + n].astype(np.int64)
    g, s = groups[order], scores[order]
    tie = (g[1:] == g[:-1]) & (s[1:] == s[:-1])
    if not tie.any():
        return order
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    sizes = np.diff(np.r_[starts, n])
    tied_group = np.zeros(len(starts), dtype=bool)
    tied_group[np.searchsorted(starts, np.flatnonzero(tie), side="right") - 1] = True
    for size in np.unique(sizes[tied_group]):
        first = starts[tied_group & (sizes == size)]
        slots = first[:, None] + np.arange(size)[None, :]
        members = np.sort(order[slots], axis=1)  # each tied group in index order, as the original saw it
        ranked = np.argsort(scores[members], axis=1)[:, ::-1]  # numpy's quicksort, row by row
        order[slots] = np.take_along_axis(members, ranked, axis=1)
    return order


def batched_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_thr: float,
                plus_one: bool = False) -> np.ndarray:
    """Greedy NMS inside every group at once: kept indices sorted by group, then keep order.

    boxes: (N, 4) x1, y1, x2, y2; scores: (N,) not NaN; groups: (N,) integer group ids (boxes only suppress
    boxes of their own group; the output lists groups in ascending id).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scores = np.asarray(scores, dtype=np.float64)
    groups = np.asarray(groups, dtype=np.int64)
    n = len(scores)
    if len(boxes) != n or len(groups) != n:
        raise ValueError(f"boxes, scores and groups differ in length: {len(boxes)}, {n}, {len(groups)}")
    order = score_order(scores, groups)
    sorted_boxes = boxes[order]
    sorted_groups = groups[order]
    box_areas = areas(sorted_boxes, plus_one)
    keep = np.zeros(n, dtype=bool)
    rest = np.arange(n)  # undecided boxes, in visiting order
    while len(rest):
        # the first undecided box of every group is kept: every box before it is decided
        g = sorted_groups[rest]
        head = np.r_[True, g[1:] != g[:-1]]
        keep[rest[head]] = True
        position = np.arange(len(rest))
        head_of = rest[np.maximum.accumulate(np.where(head, position, 0))][~head]
        others = rest[~head]
        iou = _paired_iou(sorted_boxes[others], sorted_boxes[head_of], box_areas[others], box_areas[head_of],
                          plus_one)
        rest = others[iou <= iou_thr]
    return order[keep]


def _paired_iou(a: np.ndarray, b: np.ndarray, area_a: np.ndarray, area_b: np.ndarray,
                plus_one: bool) -> np.ndarray:
    """IoU of a[k] with b[k] for every k, the arithmetic of iou.pairwise_iou (so the same floats)."""
    one = 1.0 if plus_one else 0.0
    w = np.minimum(a[:, 2], b[:, 2]) - np.maximum(a[:, 0], b[:, 0]) + one
    h = np.minimum(a[:, 3], b[:, 3]) - np.maximum(a[:, 1], b[:, 1]) + one
    inter = np.maximum(w, 0.0) * np.maximum(h, 0.0)
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = inter / union
    return np.where(union > 0, iou, 0.0)


def _arrow(values: np.ndarray, kind: pa.DataType) -> pa.Array:
    """A numpy array as an Arrow array without a copy (pa.array() would import pandas to check its type)."""
    values = np.ascontiguousarray(values)
    return pa.Array.from_buffers(kind, len(values), [None, pa.py_buffer(values)])


# ----------------------------------------------------------------------------------------------------------
# Soft-NMS

SOFT_NMS_METHODS = ("gaussian", "linear", "hard")


def batched_soft_nms(boxes: np.ndarray, scores: np.ndarray, groups: np.ndarray, iou_thr: float = 0.3,
                     sigma: float = 0.5, score_thr: float = 0.001, method: str = "gaussian",
                     plus_one: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Soft-NMS (Bodla et al. 2017) inside every group at once: (kept indices ascending, their decayed scores).

    As the 2019 repository's `py_cpu_softnms(dets, Nt=iou_thr, sigma, thresh=score_thr, method)`: the box of
    highest current score is taken, every other undecided box of its group is decayed by its IoU with it
    (gaussian: exp(-IoU^2 / sigma); linear: 1 - IoU above iou_thr; hard: 0 above iou_thr), and so on until each
    group is decided; boxes whose score ends above score_thr are kept. Equal scores: the lower index first.
    Rounds = the largest group, each vectorised over all groups.
    """
    if method not in SOFT_NMS_METHODS:
        raise ValueError(f"unknown soft-NMS method {method!r}: one of {', '.join(SOFT_NMS_METHODS)}")
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    groups = np.asarray(groups, dtype=np.int64)
    n = len(groups)
    order = np.argsort(groups, kind="stable")  # groups contiguous, each in index order
    b, g = boxes[order], groups[order]
    s = np.asarray(scores, dtype=np.float64)[order].copy()
    box_areas = areas(b, plus_one)
    rest = np.arange(n)  # undecided positions, group-contiguous
    while len(rest):
        gr, sr = g[rest], s[rest]
        starts = np.flatnonzero(np.r_[True, gr[1:] != gr[:-1]])
        segment = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(rest)]))
        is_max = sr == np.maximum.reduceat(sr, starts)[segment]
        _, first = np.unique(segment[is_max], return_index=True)
        picked = np.flatnonzero(is_max)[first]  # the first box of highest score in each group
        undecided = np.ones(len(rest), dtype=bool)
        undecided[picked] = False
        others, head = rest[undecided], rest[picked][segment[undecided]]
        iou = _paired_iou(b[others], b[head], box_areas[others], box_areas[head], plus_one)
        if method == "gaussian":
            s[others] *= np.exp(-(iou * iou) / sigma)
        else:
            s[others] *= np.where(iou > iou_thr, 0.0 if method == "hard" else 1.0 - iou, 1.0)
        rest = others
    keep = s > score_thr
    kept = order[keep]
    at = np.argsort(kept)
    return kept[at], s[keep][at]
