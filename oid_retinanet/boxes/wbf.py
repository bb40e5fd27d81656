"""Weighted boxes fusion (Solovyev et al.), output equal to the `ensemble-boxes` package's
`weighted_boxes_fusion` (version 1.0.9) on the same input, vectorised over boxes and batched over images.

Boxes are x1, y1, x2, y2 in normalised coordinates. What `ensemble-boxes` does, and we do identically:
- per list t (weight w_t): boxes with score < skip_box_thr are dropped (compared in the scores' own dtype);
  coordinates are swapped into order, clipped to [0, 1], and zero-area boxes dropped; a box's confidence
  is score * w_t;
- per label (labels in order of first appearance), boxes sorted by confidence, highest first (numpy's
  `argsort()[::-1]`, so ties come out as numpy orders them); each box joins the fused box of its label with
  the highest IoU strictly above iou_thr (the first on ties), or starts a new cluster;
- a fused box is the confidence-weighted mean of its members, accumulated in float32 as `get_weighted_box`
  does, with confidence = mean (`avg`) or max (`max`) member confidence; a single-box cluster keeps its box
  in float64;
- the final confidence is rescaled: `avg` by min(n_lists, cluster size) / sum(weights) (or by cluster size
  with allows_overflow), `max` by 1 / max(weights), and the package's `box_and_model_avg` and
  `absent_model_aware_avg` rules; the result is sorted by confidence, highest first.
Differences: a wrong number of weights or an unknown conf_type raise ValueError (the package printed a
warning or called exit()); out-of-range coordinates are fixed silently (the package warned per box).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from oid_retinanet.boxes.merge import (
    GreedyWaves,
    box_areas,
    group_by_image_label,
    put_columns,
    size_buckets,
    take_columns,
)

WBF_CONF_TYPES = ("avg", "max", "box_and_model_avg", "absent_model_aware_avg")


def _descending_order(values: np.ndarray, start: np.ndarray, size: np.ndarray) -> np.ndarray:
    """Per segment [start, start + size) of `values`, the positions that `np.argsort(seg)[::-1]` gives.

    Segments are sorted as rows of padded 2-D arrays (bucketed by size); where a segment holds tied values
    (and numpy's order among them is its own) it is redone with np.argsort on exactly the same array.
    """
    n = len(values)
    order = np.empty(n, dtype=np.int64)
    tied_segments = []
    for members in size_buckets(size):
        width = int(size[members].max())
        cols = np.arange(width)
        valid = cols < size[members][:, None]
        index = np.where(valid, start[members][:, None] + cols, 0)
        padded = np.where(valid, -values[index], np.inf)
        rank = np.argsort(padded, axis=1)
        # positions of each row, best first; the padding sorts last
        order[index[valid]] = (start[members][:, None] + rank)[valid]
        ranked = np.take_along_axis(padded, rank, axis=1)
        tie = ((ranked[:, 1:] == ranked[:, :-1]) & valid[:, 1:]).any(axis=1)
        tie |= np.isnan(padded).any(axis=1)  # numpy sorts NaN last, even after the padding
        if tie.any():
            tied_segments.append(members[tie])
    for g in np.concatenate(tied_segments) if tied_segments else ():
        a, b = start[g], start[g] + size[g]
        order[a:b] = a + np.argsort(values[a:b])[::-1]
    return order


def prefilter(image: np.ndarray, list_index: np.ndarray, labels: np.ndarray, scores: np.ndarray,
              boxes: np.ndarray, weights: np.ndarray, skip_box_thr: float
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The package's `prefilter_boxes` on flat boxes of a batch of images (rows in image, list, position order).

    scores are compared with skip_box_thr in their own dtype (as the package's numpy scalars are); boxes are
    ordered, clipped and zero-area boxes dropped. Returns (image, list index, labels int64, confidence =
    score * weight, the box's list weight, boxes (M, 4) float64), rows in input order.
    """
    keep = ~(scores < skip_box_thr)
    w = np.asarray(weights)
    bx = clip_boxes(np.asarray(boxes, dtype=np.float64)[keep].reshape(-1, 4))
    nonzero = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1]) != 0.0
    idx = np.flatnonzero(keep)[nonzero]
    lists = list_index[idx]
    bw = w[lists].astype(np.float64)
    return (image[idx], lists, labels[idx].astype(np.int64), scores[idx].astype(np.float64) * bw, bw,
            bx[nonzero])


def clip_boxes(boxes: np.ndarray) -> np.ndarray:
    """The package's box checks: swap x1 > x2 (and y), then clip each coordinate to [0, 1]."""
    x1, y1, x2, y2 = (boxes[:, k] for k in range(4))
    x1, x2 = np.where(x2 < x1, x2, x1), np.where(x2 < x1, x1, x2)
    y1, y2 = np.where(y2 < y1, y2, y1), np.where(y2 < y1, y1, y2)
    out = np.stack([x1, y1, x2, y2], axis=1)
    out = np.where(out < 0, 0.0, out)
    return np.where(out > 1, 1.0, out)


def fuse_batch(image: np.ndarray, list_index: np.ndarray, labels: np.ndarray, conf: np.ndarray,
               box_weight: np.ndarray, boxes: np.ndarray, weights: np.ndarray, iou_thr: float = 0.55,
               conf_type: str = "avg", allows_overflow: bool = False
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Weighted boxes fusion of a batch of prefiltered images (see `prefilter`), rows in input order per image.

    weights: the per-list weights as given to the package (their dtype is kept for the sums). Returns
    (image, boxes (K, 4), scores, labels (float64)), images in increasing order, each sorted as the package
    sorts its result.
    """
    if conf_type not in WBF_CONF_TYPES:
        raise ValueError(f"unknown conf_type {conf_type!r}, expected one of {', '.join(WBF_CONF_TYPES)}")
    m = len(image)
    if m == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 4)), np.zeros(0), np.zeros(0)
    groups = group_by_image_label(image, labels)
    by_conf = _descending_order(conf[groups.order], groups.start, groups.size)
    order = groups.order[by_conf]
    s_boxes = np.ascontiguousarray(np.take(boxes, order, axis=0).T)  # rows x1, y1, x2, y2
    s_conf, s_w = conf[order], box_weight[order]
    s_areas = box_areas(s_boxes)
    s_model_bit = np.left_shift(1, list_index[order].astype(np.int64))

    # Clusters by slot: group g owns slots start[g] + column. During the waves only what the matching needs
    # is kept up to date (the float32 sum of conf * box and the conf sum, giving the fused box); the rest
    # follows from the members, recorded in order, at the end.
    acc = np.empty((4, m), dtype=np.float32)  # get_weighted_box's float32 sum of conf * box
    c_conf = np.empty(m)
    creator = np.arange(m)  # sorted position of the cluster's first box (any valid index while unused)
    first = groups.start
    put_columns(acc, first, (s_conf[first] * take_columns(s_boxes, first)).astype(np.float32))
    c_conf[first] = s_conf[first]
    creator[first] = first
    joined_slot, joined_pos = [], []

    waves = GreedyWaves(groups.start, groups.size, np.ones(groups.count, dtype=np.int64), s_boxes, s_areas,
                        iou_thr, nan_matches=True)
    for t in range(waves.steps):
        g, pos, col = waves.wave(t)
        hit = col >= 0
        if hit.any():
            gh, ch, p = g[hit], col[hit], pos[hit]
            sl = groups.start[gh] + ch
            b1 = s_conf[p]
            a32 = (take_columns(acc, sl).astype(np.float64) + b1 * take_columns(s_boxes, p)).astype(np.float32)
            put_columns(acc, sl, a32)
            c_conf[sl] += b1
            with np.errstate(invalid="ignore", divide="ignore"):  # all-zero confidences give NaN, as the package
                fused = (a32.astype(np.float64) / c_conf[sl]).astype(np.float32).astype(np.float64)
            waves.move(gh, ch, fused, box_areas(fused))
            joined_slot.append(sl)
            joined_pos.append(p)
        if not hit.all():
            miss = ~hit
            gm, p = g[miss], pos[miss]
            sl = groups.start[gm] + waves.add(gm, p)
            put_columns(acc, sl, (s_conf[p] * take_columns(s_boxes, p)).astype(np.float32))
            c_conf[sl] = s_conf[p]
            creator[sl] = p
    n_clusters = waves.count

    # the other fields of get_weighted_box, from the members in the order they joined
    joined_slot = np.concatenate(joined_slot) if joined_slot else np.zeros(0, dtype=np.int64)
    joined_pos = np.concatenate(joined_pos) if joined_pos else np.zeros(0, dtype=np.int64)
    c_count = 1 + np.bincount(joined_slot, minlength=m)
    c_wsum = s_w[creator]  # garbage in unused slots, never read
    np.add.at(c_wsum, joined_slot, s_w[joined_pos])
    c_max = s_conf[creator]
    np.maximum.at(c_max, joined_slot, s_conf[joined_pos])
    c_models = s_model_bit[creator]
    np.bitwise_or.at(c_models, joined_slot, s_model_bit[joined_pos])

    # clusters in the package's concatenation order: labels by first appearance, clusters in creation order
    first_seen = groups.order[groups.start]
    g_sorted = np.lexsort((first_seen, image[first_seen]))
    nc = n_clusters[g_sorted]
    slots = np.repeat(groups.start[g_sorted], nc) + (np.arange(int(nc.sum())) - np.repeat(np.cumsum(nc) - nc, nc))
    count = c_count[slots]
    multi = count > 1
    # a single-box cluster is its box as prefiltered (float64); a fused one is get_weighted_box's float32
    single_pos = creator[slots]
    out_boxes = np.take(s_boxes, single_pos, axis=1)
    c_score = s_conf[single_pos]
    c_w = s_w[single_pos]
    ms = slots[multi]
    with np.errstate(invalid="ignore", divide="ignore"):
        out_boxes[:, multi] = (take_columns(acc, ms).astype(np.float64) / c_conf[ms]).astype(np.float32)
    top = c_max[ms] if conf_type == "max" else c_conf[ms] / count[multi]
    c_score[multi] = top.astype(np.float32)
    c_w[multi] = c_wsum[ms].astype(np.float32)
    score = _rescale(c_score, c_w, count, c_models[slots], weights, conf_type, allows_overflow)
    out_image = np.repeat(image[first_seen[g_sorted]], nc)
    out_labels = np.repeat(labels[first_seen[g_sorted]], nc).astype(np.float64)
    out_labels[multi] = out_labels[multi].astype(np.float32)
    img_start = np.flatnonzero(np.r_[True, out_image[1:] != out_image[:-1]]) if len(out_image) else np.zeros(0, int)
    img_size = np.diff(np.append(img_start, len(out_image)))
    final = _descending_order(score, img_start, img_size)
    return out_image[final], out_boxes.T[final], score[final], out_labels[final]


def _rescale(score: np.ndarray, w: np.ndarray, count: np.ndarray, models: np.ndarray, weights: np.ndarray,
             conf_type: str, allows_overflow: bool) -> np.ndarray:
    if conf_type == "max":
        return score / weights.max()
    if conf_type == "avg":
        n = count if allows_overflow else np.minimum(len(weights), count)
        return score * n / weights.sum()
    # the package sums the weights of a cluster's (or the absent) models with numpy: do the same per mask
    if len(weights) > 62:
        raise ValueError(f"conf_type {conf_type!r} supports at most 62 box lists, got {len(weights)}")
    w64 = weights.astype(np.float64)
    masks, inverse = np.unique(models, return_inverse=True)
    bits = (masks[:, None] >> np.arange(len(weights))[None, :]) & 1 == 1
    if conf_type == "box_and_model_avg":
        present = np.array([w64[b].sum() for b in bits])[inverse]
        return score * count / w * present / weights.sum()
    absent = np.array([weights[~b].sum() for b in bits])[inverse]
    return score * count / (w + absent)


def weighted_boxes_fusion(boxes_list: Sequence, scores_list: Sequence, labels_list: Sequence,
                          weights: Sequence[float] | None = None, iou_thr: float = 0.55, skip_box_thr: float = 0.0,
                          conf_type: str = "avg", allows_overflow: bool = False
                          ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`ensemble_boxes.weighted_boxes_fusion`, same arguments and result (boxes (K, 4), scores, labels).

    boxes_list: per model, (N_t, 4) x1, y1, x2, y2 normalised; scores_list, labels_list: per model (N_t,).
    weights: per model (default 1 each).
    """
    w = np.ones(len(boxes_list)) if weights is None else np.array(weights)
    if len(w) != len(boxes_list):
        raise ValueError(f"{len(w)} weights for {len(boxes_list)} box lists")
    if conf_type not in WBF_CONF_TYPES:
        raise ValueError(f"unknown conf_type {conf_type!r}, expected one of {', '.join(WBF_CONF_TYPES)}")
    parts = []
    for t, (b, s, lab) in enumerate(zip(boxes_list, scores_list, labels_list)):
        b, s, lab = np.asarray(b), np.asarray(s), np.asarray(lab)
        if len(b) != len(s) or len(b) != len(lab):
            raise ValueError(f"list {t}: {len(b)} boxes, {len(s)} scores, {len(lab)} labels")
        keep = ~(s < skip_box_thr)  # in the list's own score dtype
        parts.append((np.full(int(keep.sum()), t), lab[keep], s[keep].astype(np.float64),
                      b[keep].astype(np.float64).reshape(-1, 4)))
    if not parts:
        return np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,))
    lists, labels, scores, boxes = (np.concatenate([p[k] for p in parts]) for k in range(4))
    image, lists, labels, conf, bw, boxes = prefilter(np.zeros(len(lists), dtype=np.int64), lists, labels, scores,
                                                      boxes, w, -np.inf)
    if len(lists) == 0:
        return np.zeros((0, 4)), np.zeros((0,)), np.zeros((0,))
    _, out_boxes, scores, out_labels = fuse_batch(image, lists, labels, conf, bw, boxes, w, iou_thr, conf_type,
                                                  allows_overflow)
    return out_boxes, scores, out_labels
