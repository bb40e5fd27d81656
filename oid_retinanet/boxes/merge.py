"""The originals' weighted merge of several box lists (ZFTurbo 2018, gujingxiao 2019), exactly, vectorised.

Boxes are x1, y1, x2, y2 in normalised coordinates, float64. Each image has an ordered set of lists (in the
pipeline: [model 0 image, model 0 mirror, model 1 image, ...]) and each list has a weight (the original:
1 / number of lists). The original's `merge_all_boxes_for_image`:

- list 0's boxes are the initial clusters (they never merge with each other), each with its list's weight;
- every box of lists 1, 2, ... in order is compared with the clusters of its label; IoU is the plain area
  ratio (no '+1'); the cluster with the highest IoU wins, the first one on ties, and only IoU strictly above
  the threshold counts. A matched cluster becomes the weighted mean of itself and the box (weights: the
  cluster's summed weight and the box's list weight); its score is the weighted mean (`avg`), the larger
  score (`max`) or `sqrt(s1 * s2)` (`mul`, weights ignored); its weight grows by the list weight. An
  unmatched box becomes a new cluster;
- finally each cluster's score is multiplied by its summed weight. Several boxes of one list can join one
  cluster, so the summed weight and the score can exceed 1 (kept, as the original wrote them).

2018 (`variant="2018"`): a box is compared with the clusters as they are at that moment, including those made
or moved by earlier boxes of its own list (the result depends on the order of the boxes).
2019 (`variant="2019"`): the boxes of list j are compared with a snapshot of the clusters taken before list j,
and a merge starts from the snapshot's box and score, using the cluster's current weight: when several boxes
of one list match one cluster, the last merge overwrites the earlier ones while every box's weight is added.
Boxes of list j never match clusters made by list j.

Output per image: a (K, 6) float64 array `[label, score, x1, y1, x2, y2]` in the original's order (list 0's
boxes, then new clusters in the order their first box came), equal to the original's to the last bit.

Speed: clusters of different labels never interact, so the greedy order matters only within one label of one
image. The work runs on a batch of images at once (`GreedyWaves`): at step t every (image, label) group
handles its t-th box, with one broadcast IoU of all those boxes against all clusters of their groups. The
2019 variant matches a whole list at once against its snapshot (`best_matches`). Python loops run over steps
(the largest group's box count), lists and ranks, never over boxes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

CONF_TYPES = ("avg", "max", "mul")
VARIANTS = ("2018", "2019")


# ---- shared machinery (also used by boxes/wbf.py) ----------------------------------------------------------

@dataclass
class Groups:
    """Boxes grouped by (image, label): `order` sorts the boxes group by group, each group in input order.

    `start[g]` is group g's first position in sorted order and `size[g]` its box count; position p in sorted
    order is the box `order[p]`.
    """

    order: np.ndarray
    start: np.ndarray
    size: np.ndarray

    @property
    def count(self) -> int:
        return len(self.start)

    def group_of_sorted(self) -> np.ndarray:
        """Group index of every sorted position."""
        return np.repeat(np.arange(self.count), self.size)


def group_by_image_label(image: np.ndarray, labels: np.ndarray) -> Groups:
    """Group boxes by (image, label), keeping input order inside each group (stable sorts)."""
    n = len(image)
    if n == 0:
        empty = np.zeros(0, dtype=np.int64)
        return Groups(empty, empty, empty)
    if labels.min() >= 0 and labels.max() < 2**16 and image.min() >= 0 and image.max() < 2**16:
        # two stable radix passes (numpy sorts 16-bit integers by radix): labels, then images
        by_label = np.argsort(labels.astype(np.uint16), kind="stable")
        order = by_label[np.argsort(image[by_label].astype(np.uint16), kind="stable")]
    else:
        order = np.lexsort((labels, image))
    si, sl = image[order], labels[order]
    new = np.empty(n, dtype=bool)
    new[0] = True
    np.not_equal(si[1:], si[:-1], out=new[1:])
    new[1:] |= sl[1:] != sl[:-1]
    start = np.flatnonzero(new)
    size = np.diff(np.append(start, n))
    return Groups(order.astype(np.int64), start, size)


def size_buckets(size: np.ndarray) -> list[np.ndarray]:
    """Indices of `size` bucketed by power-of-two size class (sizes 1, 2, 3-4, 5-8, ...), for padded 2-D
    layouts that waste at most half their cells."""
    size_class = np.searchsorted(2 ** np.arange(63, dtype=np.int64), size)
    order = np.argsort(size_class, kind="stable")
    bounds = np.flatnonzero(np.diff(size_class[order])) + 1
    return np.split(order, bounds) if len(order) else []


def box_areas(boxes: np.ndarray) -> np.ndarray:
    """(x2 - x1) * (y2 - y1) of boxes stored as rows x1, y1, x2, y2 (shape (4, N)), no '+1'."""
    return (boxes[2] - boxes[0]) * (boxes[3] - boxes[1])


def take_columns(boxes: np.ndarray, index: np.ndarray) -> np.ndarray:
    """boxes[:, index] for (4, M) boxes (np.take is several times faster than fancy indexing here)."""
    return np.take(boxes, index, axis=1)


def put_columns(boxes: np.ndarray, index: np.ndarray, values: np.ndarray) -> None:
    """boxes[:, index] = values, row by row (faster than 2-D fancy assignment)."""
    for row, v in zip(boxes, values):
        row[index] = v


class Workspace:
    """Scratch buffers for `best_matches`, sized for at most `size` pairs, reused across calls (fresh
    allocations of this size cost page faults on every call)."""

    def __init__(self, size: int):
        self.size = size
        self.floats = np.empty((7, size))
        self.slot = np.empty(size, dtype=np.int64)
        self.mask = np.empty(size, dtype=bool)
        self.arange = np.arange(size)


def best_matches(clusters: np.ndarray, cluster_areas: np.ndarray, first: np.ndarray, count: np.ndarray,
                 queries: np.ndarray, query_areas: np.ndarray, iou_thr: float, ws: Workspace | None = None
                 ) -> np.ndarray:
    """For each query i, the cluster slot in [first[i], first[i] + count[i]) whose IoU with query i is the
    highest and strictly above `iou_thr` (the first such slot on ties), or -1.

    clusters (4, M) and queries (4, Q) hold rows x1, y1, x2, y2. IoU is the originals' formula bit for bit:
    `inter = max(0, xB - xA) * max(0, yB - yA)`, 0 when inter is 0, else `inter / (area_a + area_b - inter)`.
    All pairs are evaluated in one vectorised pass; ws must hold at least count.sum() pairs.
    """
    result = np.full(len(first), -1, dtype=np.int64)
    q = np.flatnonzero(count > 0)
    if len(q) == 0:
        return result
    n = count[q]
    ends = np.cumsum(n)
    seg_start = ends - n
    total = int(ends[-1])
    if ws is None or ws.size < total:
        ws = Workspace(total)
    rep = np.repeat(np.arange(len(q)), n)
    slot = ws.slot[:total]
    np.take(seg_start - first[q], rep, out=slot)
    np.subtract(ws.arange[:total], slot, out=slot)
    a, b, w, h, union, iou, _ = ws.floats[:, :total]
    qb = queries[:, q]
    # w = min(x2) - max(x1), h likewise, clamped at 0
    np.take(clusters[2], slot, out=a)
    np.take(qb[2], rep, out=b)
    np.minimum(a, b, out=w)
    np.take(clusters[0], slot, out=a)
    np.take(qb[0], rep, out=b)
    np.maximum(a, b, out=a)
    np.subtract(w, a, out=w)
    np.take(clusters[3], slot, out=a)
    np.take(qb[3], rep, out=b)
    np.minimum(a, b, out=h)
    np.take(clusters[1], slot, out=a)
    np.take(qb[1], rep, out=b)
    np.maximum(a, b, out=a)
    np.subtract(h, a, out=h)
    np.maximum(w, 0.0, out=w)
    np.maximum(h, 0.0, out=h)
    inter = np.multiply(w, h, out=w)
    np.take(cluster_areas, slot, out=union)
    np.take(query_areas[q], rep, out=b)
    np.add(union, b, out=union)
    np.subtract(union, inter, out=union)
    hit = np.greater(inter, 0.0, out=ws.mask[:total])
    iou.fill(0.0)
    np.divide(inter, union, out=iou, where=hit)
    seg_max = np.maximum.reduceat(iou, seg_start)
    above = seg_max > iou_thr
    if not above.any():
        return result
    np.take(np.where(above, seg_max, np.nan), rep, out=b)
    cand = np.flatnonzero(np.equal(iou, b, out=hit))
    cand_seg = rep[cand]
    keep = np.empty(len(cand), dtype=bool)
    keep[0] = True
    np.not_equal(cand_seg[1:], cand_seg[:-1], out=keep[1:])
    result[q[cand_seg[keep]]] = slot[cand[keep]]
    return result


class GreedyWaves:
    """Greedy matching of each group's boxes, in order, against the group's growing set of clusters.

    Group g owns the sorted positions start[g] .. start[g] + size[g] - 1 of `boxes` ((4, M) rows x1, y1, x2,
    y2); its first n0[g] boxes are its initial clusters, the others come one per wave. `wave(t)` gives, for
    every group with more than t boxes left, its t-th box and the column (cluster index in order of
    creation) of the cluster with the highest IoU strictly above iou_thr, the first on ties, or -1; the
    caller then moves that cluster (`move`) or makes the box a new one (`add`).

    Cluster boxes live in one dense row per group, groups bucketed by size so rows are of similar width, and
    unused columns hold an empty box (x1 = +inf, x2 = -inf) whose IoU is 0: a wave is a few broadcast
    operations over (active groups x clusters) per bucket, without gathers. IoU is the originals' formula bit
    for bit (see `best_matches`). nan_matches: a NaN IoU (a cluster box of NaN) wins and matches, as in
    ensemble-boxes (numpy's argmax takes the first NaN, and `not iou <= thr` holds); otherwise NaN never
    matches, as in the originals' Python comparisons.
    """

    def __init__(self, start: np.ndarray, size: np.ndarray, n0: np.ndarray, boxes: np.ndarray, areas: np.ndarray,
                 iou_thr: float, nan_matches: bool = False):
        self.start, self.n0, self.boxes, self.areas, self.iou_thr = start, n0, boxes, areas, iou_thr
        self.nan_matches = nan_matches
        self.count = n0.astype(np.int64).copy()
        rest = size - n0
        self.steps = int(rest.max()) if len(rest) else 0
        active = np.flatnonzero(rest > 0)
        size_class = np.searchsorted(2 ** np.arange(63, dtype=np.int64), size[active])
        self.buckets = []  # (groups by rest descending, -rest, width, offset)
        self.offset = np.zeros(len(start), dtype=np.int64)  # flat position of each group's column 0
        total = 0
        scratch = 0
        for k in np.unique(size_class):
            members = active[size_class == k]
            members = members[np.argsort(-rest[members], kind="stable")]
            width = int(size[members].max())
            self.offset[members] = total + width * np.arange(len(members))
            self.buckets.append((members, -rest[members], width, total))
            total += width * len(members)
            scratch = max(scratch, width * len(members))
        self.geom = np.empty((5, total))  # x1, y1, x2, y2, area
        self.geom[0:2] = np.inf
        self.geom[2:4] = -np.inf
        self.geom[4] = 0.0
        rank = np.arange(int(n0[active].sum())) - np.repeat(np.cumsum(n0[active]) - n0[active], n0[active])
        dst = np.repeat(self.offset[active], n0[active]) + rank
        src = np.repeat(start[active], n0[active]) + rank
        put_columns(self.geom[:4], dst, take_columns(boxes, src))
        self.geom[4, dst] = areas[src]
        self.scratch = np.empty((4, scratch))

    def wave(self, t: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(groups, sorted positions of their t-th box, matched column or -1) for the groups still going."""
        out_g, out_pos, out_col = [], [], []
        for members, neg_rest, width, offset in self.buckets:
            n_active = int(np.searchsorted(neg_rest, -t, side="left"))
            if n_active == 0:
                continue
            g = members[:n_active]
            pos = self.start[g] + self.n0[g] + t
            nc = self.count[g]
            cols = int(nc.max())
            col = np.full(n_active, -1, dtype=np.int64)
            if cols:
                col = self._match(offset, width, n_active, cols, pos, nc)
            out_g.append(g)
            out_pos.append(pos)
            out_col.append(col)
        if not out_g:
            empty = np.zeros(0, dtype=np.int64)
            return empty, empty, empty
        return np.concatenate(out_g), np.concatenate(out_pos), np.concatenate(out_col)

    def _match(self, offset: int, width: int, rows: int, cols: int, pos: np.ndarray, nc: np.ndarray) -> np.ndarray:
        block = self.geom[:, offset:offset + width * rows].reshape(5, rows, width)[:, :, :cols]
        x1, y1, x2, y2, area = block
        q = take_columns(self.boxes, pos)[:, :, None]
        n = rows * cols
        w, h, tmp, iou = (buf[:n].reshape(rows, cols) for buf in self.scratch)
        np.minimum(x2, q[2], out=w)
        np.maximum(x1, q[0], out=tmp)
        np.subtract(w, tmp, out=w)
        np.minimum(y2, q[3], out=h)
        np.maximum(y1, q[1], out=tmp)
        np.subtract(h, tmp, out=h)
        np.maximum(w, 0.0, out=w)
        np.maximum(h, 0.0, out=h)
        inter = np.multiply(w, h, out=w)
        union = np.add(area, self.areas[pos][:, None], out=h)
        np.subtract(union, inter, out=union)
        iou.fill(0.0)
        if self.nan_matches:  # the package divides NaN intersections too
            np.divide(inter, union, out=iou, where=~np.less_equal(inter, 0.0))
        else:
            np.divide(inter, union, out=iou, where=np.greater(inter, 0.0))
        best = iou.argmax(axis=1)
        value = iou[np.arange(rows), best]
        hit = ~(value <= self.iou_thr) if self.nan_matches else value > self.iou_thr
        return np.where(hit & (best < nc), best, -1)

    def move(self, g: np.ndarray, col: np.ndarray, boxes: np.ndarray, areas: np.ndarray) -> None:
        """Cluster `col` of group g now has box `boxes` (4, k)."""
        at = self.offset[g] + col
        put_columns(self.geom[:4], at, boxes)
        self.geom[4, at] = areas

    def add(self, g: np.ndarray, pos: np.ndarray) -> np.ndarray:
        """Sorted boxes `pos` become new clusters of their groups g (distinct); returns their columns."""
        col = self.count[g].copy()
        at = self.offset[g] + col
        put_columns(self.geom[:4], at, take_columns(self.boxes, pos))
        self.geom[4, at] = self.areas[pos]
        self.count[g] += 1
        return col


# ---- the original's filter -----------------------------------------------------------------------------------

def filter_rows(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, skip_box_thr: float,
                mirrored: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The original's `filter_boxes` on cached rows: boxes (K, N, 4), scores and labels (K, N).

    Each row is read up to its first score below `skip_box_thr` (scores are sorted; padding has score -1
    and label -1 and is never kept). Mirrored rows (default: every row but the first, as one cache's rows)
    are mapped back: x1' = 1 - x2, x2' = 1 - x1. The comparison and the mirror arithmetic are in float64,
    as the original's Python floats. Returns (row index, labels int64, scores float64, boxes float64
    (M, 4)), in row then position order.
    """
    n_rows, n = scores.shape
    if mirrored is None:
        mirrored = np.arange(n_rows) > 0
    stop = scores.astype(np.float64) < skip_box_thr
    stop |= labels < 0
    length = np.where(stop.any(axis=1), stop.argmax(axis=1), n)
    keep = np.arange(n)[None, :] < length[:, None]
    rows = np.repeat(np.arange(n_rows), length)
    out_boxes = boxes[keep].astype(np.float64)
    flip = mirrored[rows]
    if flip.any():
        x1 = out_boxes[flip, 0]
        out_boxes[flip, 0] = 1 - out_boxes[flip, 2]
        out_boxes[flip, 2] = 1 - x1
    return rows, labels[keep].astype(np.int64), scores[keep].astype(np.float64), out_boxes


# ---- the weighted merge ----------------------------------------------------------------------------------------

@dataclass
class BoxBatch:
    """Boxes of a batch of images, flat, ordered by image, then list, then position in the list.

    `image` (M,) image index in the batch; `list_index` (M,) list number inside the image (0 = the first
    list, whose boxes seed the clusters); `labels` (M,) int; `scores` (M,) float64; `boxes` (M, 4) float64
    x1, y1, x2, y2 normalised; `weights` (M,) float64, the weight of the box's list.
    """

    image: np.ndarray
    list_index: np.ndarray
    labels: np.ndarray
    scores: np.ndarray
    boxes: np.ndarray
    weights: np.ndarray

    def __len__(self) -> int:
        return len(self.image)


def _check_conf(conf_type: str, variant: str) -> None:
    if conf_type not in CONF_TYPES:
        raise ValueError(f"unknown merge type {conf_type!r}, expected one of {', '.join(CONF_TYPES)}")
    if variant not in VARIANTS:
        raise ValueError(f"unknown variant {variant!r}, expected one of {', '.join(VARIANTS)}")


def _merged_scores(conf_type: str, s1: np.ndarray, s2: np.ndarray, w1: np.ndarray, w2: np.ndarray) -> np.ndarray:
    if conf_type == "avg":
        return (w1 * s1 + w2 * s2) / (w1 + w2)
    if conf_type == "max":
        return np.maximum(s1, s2)
    return np.sqrt(s1 * s2)


def merge_batch(batch: BoxBatch, iou_thr: float = 0.55, conf_type: str = "avg", variant: str = "2018"
                ) -> tuple[np.ndarray, np.ndarray]:
    """Merge every image of `batch` as the original's `merge_all_boxes_for_image` (see the module doc).

    Returns (image (K,), rows (K, 6) float64 `[label, score, x1, y1, x2, y2]`), images in increasing order,
    each image's rows in the original's order, scores already multiplied by the clusters' summed weights.
    """
    _check_conf(conf_type, variant)
    if len(batch) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 6))
    step_image, step_list = np.diff(batch.image), np.diff(batch.list_index)
    if (step_image < 0).any() or ((step_image == 0) & (step_list < 0)).any():
        raise ValueError("boxes must come image by image, and list by list inside an image")
    groups = group_by_image_label(batch.image, batch.labels)
    order = groups.order
    # sorted by group, each group in input order: its list-0 boxes come first and seed its clusters in place
    s = _Sorted(batch.list_index[order], np.ascontiguousarray(batch.boxes[order].T), batch.scores[order],
                batch.weights[order], order)
    n0 = np.add.reduceat((s.lists == 0).astype(np.int64), groups.start)
    c = _Clusters(s.boxes.copy(), s.areas.copy(), s.scores.copy(), s.weights.copy(), order.copy(), n0.copy())
    if variant == "2018":
        _merge_growing(groups, n0, s, c, iou_thr, conf_type)
    else:
        _merge_snapshot(groups, s, c, iou_thr, conf_type, Workspace(len(batch)))

    nc = c.count
    slots = np.repeat(groups.start, nc) + (np.arange(int(nc.sum())) - np.repeat(np.cumsum(nc) - nc, nc))
    slots = slots[np.argsort(c.creator[slots], kind="stable")]
    rows = np.empty((len(slots), 6))
    rows[:, 0] = batch.labels[c.creator[slots]]
    rows[:, 1] = c.scores[slots] * c.weights[slots]
    rows[:, 2:] = c.boxes[:, slots].T
    return batch.image[c.creator[slots]], rows


@dataclass
class _Sorted:
    """The input boxes in group order; boxes as rows x1, y1, x2, y2 (4, M)."""

    lists: np.ndarray
    boxes: np.ndarray
    scores: np.ndarray
    weights: np.ndarray
    index: np.ndarray  # input position of each sorted box

    def __post_init__(self) -> None:
        self.areas = box_areas(self.boxes)


@dataclass
class _Clusters:
    """Cluster state by slot (group g owns slots start[g]...; count[g] of them are in use)."""

    boxes: np.ndarray
    areas: np.ndarray
    scores: np.ndarray
    weights: np.ndarray
    creator: np.ndarray  # input position of the box that made the cluster: the output order
    count: np.ndarray

    def merge(self, slot: np.ndarray, s: _Sorted, pos: np.ndarray, w1: np.ndarray, conf_type: str
              ) -> tuple[np.ndarray, np.ndarray]:
        """Cluster `slot` (its box and score) merged with sorted box `pos`: the original's
        `merge_boxes_weighted(cluster, box, w1, box weight)`; weights are not touched. Returns the new
        boxes (4, k) and areas."""
        w2 = s.weights[pos]
        self.scores[slot] = _merged_scores(conf_type, self.scores[slot], s.scores[pos], w1, w2)
        merged = (w1 * take_columns(self.boxes, slot) + w2 * take_columns(s.boxes, pos)) / (w1 + w2)
        put_columns(self.boxes, slot, merged)
        areas = box_areas(merged)
        self.areas[slot] = areas
        return merged, areas

    def add(self, slot: np.ndarray, s: _Sorted, pos: np.ndarray) -> None:
        """New clusters at `slot` made of sorted boxes `pos`."""
        put_columns(self.boxes, slot, take_columns(s.boxes, pos))
        self.areas[slot] = s.areas[pos]
        self.scores[slot] = s.scores[pos]
        self.weights[slot] = s.weights[pos]
        self.creator[slot] = s.index[pos]


def _merge_growing(groups: Groups, n0: np.ndarray, s: _Sorted, c: _Clusters, iou_thr: float,
                   conf_type: str) -> None:
    """2018: step t handles the t-th box after list 0 of every group, against the clusters as they are."""
    waves = GreedyWaves(groups.start, groups.size, n0, s.boxes, s.areas, iou_thr)
    for t in range(waves.steps):
        g, pos, col = waves.wave(t)
        hit = col >= 0
        if hit.any():
            gh, ch, p = g[hit], col[hit], pos[hit]
            sl = groups.start[gh] + ch
            w1 = c.weights[sl]
            merged, areas = c.merge(sl, s, p, w1, conf_type)
            c.weights[sl] = w1 + s.weights[p]
            waves.move(gh, ch, merged, areas)
        if not hit.all():
            miss = ~hit
            gm, p = g[miss], pos[miss]
            c.add(groups.start[gm] + waves.add(gm, p), s, p)
    c.count = waves.count


def _merge_snapshot(groups: Groups, s: _Sorted, c: _Clusters, iou_thr: float, conf_type: str,
                    ws: Workspace) -> None:
    """2019: all boxes of list j against the clusters as they were before list j, then the overwrites."""
    gid = groups.group_of_sorted()
    for j in range(1, int(s.lists.max()) + 1):
        pos = np.flatnonzero(s.lists == j)  # sorted by group, then input order
        if len(pos) == 0:
            continue
        g = gid[pos]
        first, count = groups.start[g], c.count[g]
        slot = np.full(len(pos), -1, dtype=np.int64)
        # pairs can outnumber the boxes here (every box of the list against its group's clusters): in pieces
        ends = np.cumsum(count)
        for a, b in _pieces(ends, ws.size):
            slot[a:b] = best_matches(c.boxes, c.areas, first[a:b], count[a:b], s.boxes[:, pos[a:b]],
                                     s.areas[pos[a:b]], iou_thr, ws)
        hit = slot >= 0
        if hit.any():
            sl, p = slot[hit], pos[hit]
            by_slot = np.argsort(sl, kind="stable")  # each cluster's boxes in list order
            sl, p = sl[by_slot], p[by_slot]
            first_of_run = np.ones(len(sl), dtype=bool)
            first_of_run[1:] = sl[1:] != sl[:-1]
            last_of_run = np.ones(len(sl), dtype=bool)
            last_of_run[:-1] = first_of_run[1:]
            run_start = np.flatnonzero(first_of_run)
            rank = np.arange(len(sl)) - np.repeat(run_start, np.diff(np.append(run_start, len(sl))))
            # weights add one box at a time, in list order, as the original's running sum
            w1 = np.empty(len(sl))
            for r in range(int(rank.max()) + 1):
                at = np.flatnonzero(rank == r)
                w1[at] = c.weights[sl[at]]
                c.weights[sl[at]] += s.weights[p[at]]
            # only the last merge into a cluster survives: snapshot box and score merged with it
            c.merge(sl[last_of_run], s, p[last_of_run], w1[last_of_run], conf_type)
        if not hit.all():
            miss = ~hit
            gm, p = g[miss], pos[miss]
            new_group = np.ones(len(gm), dtype=bool)
            new_group[1:] = gm[1:] != gm[:-1]
            run_start = np.flatnonzero(new_group)
            rank = np.arange(len(gm)) - np.repeat(run_start, np.diff(np.append(run_start, len(gm))))
            c.add(groups.start[gm] + c.count[gm] + rank, s, p)
            np.add.at(c.count, gm, 1)


def _pieces(ends: np.ndarray, limit: int) -> list[tuple[int, int]]:
    """Split queries (cumulative pair counts `ends`) into consecutive runs of at most `limit` pairs each
    (a single query over the limit forms its own run)."""
    out, a, base = [], 0, 0
    while a < len(ends):
        b = max(int(np.searchsorted(ends, base + limit, side="right")), a + 1)
        out.append((a, b))
        base = int(ends[b - 1])
        a = b
    return out


def merge_all_boxes_for_image(lists: Sequence[np.ndarray], iou_thr: float = 0.55, conf_type: str = "avg",
                              variant: str = "2018", weights: Sequence[float] | None = None) -> np.ndarray:
    """The original's `merge_all_boxes_for_image` for one image.

    lists: one (K_j, 6) array `[label, score, x1, y1, x2, y2]` per list, in order. weights: one per list
    (default, the original: 1 / len(lists) each). Returns the (K, 6) float64 merged rows.
    """
    if weights is None:
        weights = [1 / len(lists)] * len(lists) if len(lists) else []
    if len(weights) != len(lists):
        raise ValueError(f"{len(weights)} weights for {len(lists)} lists")
    arrays = [np.asarray(a, dtype=np.float64).reshape(-1, 6) for a in lists]
    sizes = [len(a) for a in arrays]
    flat = np.concatenate(arrays) if arrays else np.zeros((0, 6))
    batch = BoxBatch(image=np.zeros(len(flat), dtype=np.int64),
                     list_index=np.repeat(np.arange(len(arrays)), sizes),
                     labels=flat[:, 0].astype(np.int64), scores=flat[:, 1].copy(), boxes=flat[:, 2:].copy(),
                     weights=np.repeat(np.asarray(weights, dtype=np.float64), sizes))
    return merge_batch(batch, iou_thr, conf_type, variant)[1]
