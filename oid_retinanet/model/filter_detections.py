"""keras-retinanet's `filter_detections`: score threshold, non-maximum suppression, top detections, -1 padding.

Class-specific (the default), for one image with boxes (N, 4) x1, y1, x2, y2 and scores (N, K):
for every class keep the anchors with score > 0.05 (strict), suppress by greedy NMS within the class
(a box goes when its IoU with an already kept box of its class is > 0.5, strict), then keep the 300 best over
all classes. Equal scores are ordered by class, then anchor (what TF's NMS and `top_k` over keras-retinanet's
class-major concatenation give). Outputs are padded to 300 with -1: boxes (300, 4), scores (300,), labels
(300,) int32. Class-agnostic: each anchor's best class only, one NMS over all of them (equal scores in anchor
order).

We run one greedy pass over all candidates sorted by (score desc, class, anchor), suppressing only within a
class: the kept set and its order equal keras-retinanet's per-class NMS followed by top-k, and it stops after
300 kept boxes instead of running 443 NMS calls. The IoU is TF's NMS formula (corners min/max-normalised,
0 when an area is <= 0), so results match bit for bit. JAX's jit allows no data-dependent shape: there the same
result comes from a static-shape variant that takes the candidates best first in fixed-size blocks (top_k).
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

SCORE_THRESHOLD = 0.05
NMS_THRESHOLD = 0.5
MAX_DETECTIONS = 300
CLASS_SPECIFIC_FILTER = True
NMS = True
NMS_PREFIX = 4096  # candidates tried first by greedy_nms (a speed setting: results do not depend on it)
STATIC_ROWS = 16384  # JAX: when no more anchors pass the score threshold, only their rows are searched (speed)


def _argsort_descending(x):
    """Indices sorting x (C,) descending, equal values in index order (the one backend-specific sort)."""
    if keras.backend.backend() == "tensorflow":
        return ops.top_k(x, k=ops.shape(x)[0])[1]  # tf.math.top_k: ties keep the lower index first
    return ops.argsort(-x)  # stable on torch (stable=True) and jax


def _normalized_corners(boxes):
    """x1, y1, x2, y2 each (C,) with min/max-normalised corners, and the areas, as TF's NMS computes them."""
    x1, x2 = ops.minimum(boxes[:, 0], boxes[:, 2]), ops.maximum(boxes[:, 0], boxes[:, 2])
    y1, y2 = ops.minimum(boxes[:, 1], boxes[:, 3]), ops.maximum(boxes[:, 1], boxes[:, 3])
    return x1, y1, x2, y2, (x2 - x1) * (y2 - y1)


def _iou_over(corners_a, corners_b):
    """IoU of boxes a with boxes b (broadcast), each x1, y1, x2, y2, area from `_normalized_corners`: TF's
    NMS formula, 0 when an area is <= 0. Symmetric in a and b to the bit (min, max, + and * commute)."""
    ax1, ay1, ax2, ay2, a_area = corners_a
    bx1, by1, bx2, by2, b_area = corners_b
    iw = ops.maximum(ops.minimum(ax2, bx2) - ops.maximum(ax1, bx1), 0.0)
    ih = ops.maximum(ops.minimum(ay2, by2) - ops.maximum(ay1, by1), 0.0)
    inter = iw * ih
    valid = ops.logical_and(a_area > 0, b_area > 0)
    return ops.where(valid, inter / ops.where(valid, a_area + b_area - inter, 1.0), 0.0)


def _greedy(corners, labels, iou_threshold: float, max_output: int):
    """Greedy NMS over the given (sorted) candidates; returns (keep (max_output,) -1 padded, count)."""
    n = ops.shape(corners[0])[0]
    positions = ops.arange(max_output, dtype="int32")
    candidates = ops.arange(n, dtype="int32")

    def cond(alive, keep, count):
        return ops.logical_and(count < max_output, ops.any(alive))

    def body(alive, keep, count):
        pick = ops.cast(ops.argmax(ops.cast(alive, "int32")), "int32")  # first alive = best remaining
        keep = ops.where(positions == count, pick, keep)
        iou = _iou_over(tuple(c[pick] for c in corners), corners)
        suppressed = ops.logical_and(iou > iou_threshold, ops.equal(labels, labels[pick]))
        suppressed = ops.logical_or(suppressed, candidates == pick)
        return ops.logical_and(alive, ops.logical_not(suppressed)), keep, count + 1

    alive = ops.ones((n,), dtype="bool")
    keep = ops.full((max_output,), -1, dtype="int32")
    count = ops.convert_to_tensor(0, dtype="int32")
    _, keep, count = ops.while_loop(cond, body, (alive, keep, count), maximum_iterations=max_output)
    return keep, count


def greedy_nms(boxes, labels, iou_threshold: float, max_output: int, prefix: int = NMS_PREFIX):
    """Greedy NMS over candidates already sorted by priority; suppression only between equal labels.

    boxes (C, 4), labels (C,) int32. Returns (keep (max_output,) int32 indices, -1 padded; count). Runs first on
    the best `prefix` candidates: when max_output boxes are kept there, the rest cannot change the result
    (each decision depends only on better candidates); otherwise it runs again on all of them.
    """
    corners = _normalized_corners(boxes)
    n = ops.shape(boxes)[0]
    m = ops.minimum(n, prefix)
    keep, count = _greedy(tuple(c[:m] for c in corners), labels[:m], iou_threshold, max_output)
    return ops.cond(ops.logical_or(count >= max_output, m >= n), lambda: (keep, count),
                    lambda: _greedy(corners, labels, iou_threshold, max_output))


def _filter_detections_static(boxes, classification, class_specific_filter: bool, nms: bool,
                              score_threshold: float, max_detections: int, nms_threshold: float,
                              block: int = NMS_PREFIX, rows: int = STATIC_ROWS):
    """`filter_detections` with static shapes only (no `nonzero`), as jax.jit needs: the same results.

    The candidates come best first in blocks of `block`, by top_k over the scores flattened class-major (equal
    scores: lower index first, that is class, then anchor; class-agnostic: anchor). Each block is checked against
    the boxes kept so far, then greedily within itself; it stops at max_detections kept boxes or when no
    candidate is left. Only the top_k reads all anchors x classes; the greedy steps see one block.
    `block` and `rows` change the speed, never the result.
    """
    n = ops.shape(classification)[0]
    if class_specific_filter and 0 < rows < n:
        # Most anchors have no class above the threshold: when at most `rows` anchors do, search their rows only
        # (kept in anchor order, so equal scores order as before) instead of all anchors x classes.
        args = (class_specific_filter, nms, score_threshold, max_detections, nms_threshold, block, 0)
        best = ops.max(classification, axis=1)
        top = ops.sort(ops.top_k(best, rows)[1])
        return ops.cond(ops.sum(ops.cast(best > score_threshold, "int32")) <= rows,
                        lambda: _filter_detections_static(ops.take(boxes, top, axis=0),
                                                          ops.take(classification, top, axis=0), *args),
                        lambda: _filter_detections_static(boxes, classification, *args))
    if class_specific_filter:
        flat = ops.reshape(ops.transpose(classification), (-1,))  # index = class * N + anchor
    else:
        flat = ops.max(classification, axis=1)
        best_label = ops.cast(ops.argmax(classification, axis=1), "int32")
    size = ops.shape(flat)[0]
    passing = flat > score_threshold
    remaining = ops.where(passing, flat, float("-inf"))

    def anchors_and_labels(idx):
        if class_specific_filter:
            return idx % n, idx // n
        return idx, ops.take(best_label, idx)

    positions = ops.arange(max_detections, dtype="int32")
    if not nms:
        k = min(max_detections, size)
        top_scores, top_idx = ops.top_k(remaining, k)
        keep = ops.where(top_scores > score_threshold, ops.cast(top_idx, "int32"), -1)
        keep = ops.concatenate([keep, ops.full((max_detections - k,), -1, "int32")])
    else:
        corners = _normalized_corners(boxes)  # per anchor
        k = min(block, size)
        total = ops.sum(ops.cast(passing, "int32"))
        nms_labels = (lambda labels: labels) if class_specific_filter else ops.zeros_like

        def outer_cond(remaining, done, keep, kept, kept_labels, count):
            return ops.logical_and(count < max_detections, done < total)

        def outer_body(remaining, done, keep, kept, kept_labels, count):
            scores, idx = ops.top_k(remaining, k)
            idx = ops.cast(idx, "int32")
            remaining = ops.scatter_update(remaining, ops.expand_dims(idx, 1), ops.full((k,), float("-inf")))
            anchors, labels = anchors_and_labels(idx)
            labels = nms_labels(labels)
            cand = tuple(ops.take(c, anchors) for c in corners)
            # suppressed by a box kept in an earlier block (kept_labels -1 marks empty slots)
            iou = _iou_over(tuple(ops.expand_dims(c, 1) for c in cand), tuple(ops.expand_dims(c, 0) for c in kept))
            hit = ops.logical_and(iou > nms_threshold, ops.expand_dims(labels, 1) == ops.expand_dims(kept_labels, 0))
            alive = ops.logical_and(scores > score_threshold, ops.logical_not(ops.any(hit, axis=1)))
            within = ops.arange(k, dtype="int32")

            def cond(alive, keep, kept, kept_labels, count):
                return ops.logical_and(count < max_detections, ops.any(alive))

            def body(alive, keep, kept, kept_labels, count):
                pick = ops.cast(ops.argmax(ops.cast(alive, "int32")), "int32")  # first alive = best remaining
                slot = positions == count
                keep = ops.where(slot, idx[pick], keep)
                kept = tuple(ops.where(slot, c[pick], kc) for c, kc in zip(cand, kept))
                kept_labels = ops.where(slot, labels[pick], kept_labels)
                iou = _iou_over(tuple(c[pick] for c in cand), cand)
                suppressed = ops.logical_or(ops.logical_and(iou > nms_threshold, labels == labels[pick]),
                                            within == pick)
                return ops.logical_and(alive, ops.logical_not(suppressed)), keep, kept, kept_labels, count + 1

            _, keep, kept, kept_labels, count = ops.while_loop(
                cond, body, (alive, keep, kept, kept_labels, count), maximum_iterations=max_detections)
            return remaining, done + k, keep, kept, kept_labels, count

        kept = tuple(ops.zeros((max_detections,), "float32") for _ in range(5))
        state = (remaining, ops.convert_to_tensor(0, "int32"), ops.full((max_detections,), -1, "int32"), kept,
                 ops.full((max_detections,), -1, "int32"), ops.convert_to_tensor(0, "int32"))
        keep = ops.while_loop(outer_cond, outer_body, state)[2]
    valid = keep >= 0
    anchors, labels = anchors_and_labels(ops.where(valid, keep, 0))
    out_boxes = ops.take(ops.concatenate([boxes, ops.full((1, 4), -1.0, boxes.dtype)]),
                         ops.where(valid, anchors, n), axis=0)
    out_scores = ops.take(ops.concatenate([flat, ops.full((1,), -1.0, flat.dtype)]), ops.where(valid, keep, size))
    return out_boxes, out_scores, ops.cast(ops.where(valid, labels, -1), "int32")


def _flat_nonzero(mask):
    """The indices where the 1-D `mask` is true, int32, in order. On TensorFlow without `ops.nonzero`'s unstacking
    of the int64 index column, which TFLite has no builtin for (so the filter converts to TFLite builtins)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.cast(tf.reshape(tf.where(mask), [-1]), "int32")
    return ops.cast(ops.nonzero(mask)[0], "int32")


def filter_detections(boxes, classification, class_specific_filter: bool = CLASS_SPECIFIC_FILTER, nms: bool = NMS,
                      score_threshold: float = SCORE_THRESHOLD, max_detections: int = MAX_DETECTIONS,
                      nms_threshold: float = NMS_THRESHOLD):
    """One image: boxes (N, 4), classification (N, K) -> boxes (M, 4), scores (M,), labels (M,) int32, -1 padded.

    keras.ops with data-dependent shapes inside (eager torch, or TF graphs); M = max_detections. On JAX, whose
    jit allows no data-dependent shape, the static-shape variant computes the same result.
    """
    if keras.backend.backend() == "jax":
        return _filter_detections_static(boxes, classification, class_specific_filter, nms, score_threshold,
                                         max_detections, nms_threshold)
    num_anchors = ops.shape(classification)[0]
    if class_specific_filter:
        num_classes = ops.shape(classification)[1]
        flat = _flat_nonzero(ops.reshape(classification, (-1,)) > score_threshold)  # anchor * K + class
        anchor_idx, labels = flat // num_classes, flat % num_classes
        scores = ops.take(ops.reshape(classification, (-1,)), flat)
    else:
        best = ops.max(classification, axis=1)
        best_label = ops.cast(ops.argmax(classification, axis=1), "int32")
        anchor_idx = _flat_nonzero(best > score_threshold)
        scores = ops.take(best, anchor_idx)
        labels = ops.take(best_label, anchor_idx)
    anchor_idx = ops.cast(anchor_idx, "int32")
    labels = ops.cast(labels, "int32")
    # Order by (score desc, class, anchor), class-agnostic by (score desc, anchor): sort by the unique key
    # class * N + anchor (or anchor), then stably by score.
    key = labels * ops.cast(num_anchors, "int32") + anchor_idx if class_specific_filter else anchor_idx
    order = ops.argsort(key)
    order = ops.take(order, _argsort_descending(ops.take(scores, order)))
    anchor_idx, labels, scores = (ops.take(t, order) for t in (anchor_idx, labels, scores))
    cand_boxes = ops.take(boxes, anchor_idx, axis=0)

    if nms:
        nms_labels = labels if class_specific_filter else ops.zeros_like(labels)
        keep, count = greedy_nms(cand_boxes, nms_labels, nms_threshold, max_detections)
    else:
        count = ops.minimum(ops.shape(scores)[0], max_detections)
        positions = ops.arange(max_detections, dtype="int32")
        keep = ops.where(positions < count, positions, -1)
    # Gather through one extra row of -1 so that padding slots (keep == -1) need no special case, even when
    # there is no candidate at all.
    n = ops.shape(scores)[0]
    safe = ops.where(keep >= 0, keep, n)
    out_boxes = ops.take(ops.concatenate([cand_boxes, ops.full((1, 4), -1.0, cand_boxes.dtype)]), safe, axis=0)
    out_scores = ops.take(ops.concatenate([scores, ops.full((1,), -1.0, scores.dtype)]), safe)
    out_labels = ops.take(ops.concatenate([labels, ops.full((1,), -1, "int32")]), safe)
    return out_boxes, out_scores, ops.cast(out_labels, "int32")


def _map_images(fn, boxes, classification, max_detections: int):
    """Apply the per-image `fn` over the batch (tf.map_fn in TF graphs, a loop elsewhere)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        sig = (tf.TensorSpec((max_detections, 4), tf.float32), tf.TensorSpec((max_detections,), tf.float32),
               tf.TensorSpec((max_detections,), tf.int32))
        return tf.map_fn(lambda args: fn(args[0], args[1]), (boxes, classification), fn_output_signature=sig)
    outs = [fn(boxes[i], classification[i]) for i in range(int(ops.shape(boxes)[0]))]
    return tuple(ops.stack([o[j] for o in outs]) for j in range(3))


@keras.saving.register_keras_serializable(package="oid_retinanet")
class FilterDetections(keras.layers.Layer):
    """[boxes (B, N, 4), classification (B, N, K)] -> [boxes (B, M, 4), scores (B, M), labels (B, M) int32]."""

    def __init__(self, nms: bool = NMS, class_specific_filter: bool = CLASS_SPECIFIC_FILTER,
                 nms_threshold: float = NMS_THRESHOLD, score_threshold: float = SCORE_THRESHOLD,
                 max_detections: int = MAX_DETECTIONS, **kwargs):
        kwargs.pop("parallel_iterations", None)  # a keras-retinanet option with no effect on results
        super().__init__(**kwargs)
        self.nms = bool(nms)
        self.class_specific_filter = bool(class_specific_filter)
        self.nms_threshold = float(nms_threshold)
        self.score_threshold = float(score_threshold)
        self.max_detections = int(max_detections)

    def call(self, inputs):
        boxes, classification = ops.cast(inputs[0], "float32"), ops.cast(inputs[1], "float32")

        def one(b, c):
            return filter_detections(b, c, class_specific_filter=self.class_specific_filter, nms=self.nms,
                                     score_threshold=self.score_threshold, max_detections=self.max_detections,
                                     nms_threshold=self.nms_threshold)

        return list(_map_images(one, boxes, classification, self.max_detections))

    def compute_output_spec(self, inputs):
        batch = inputs[0].shape[0]
        m = self.max_detections
        return [keras.KerasTensor((batch, m, 4), "float32"), keras.KerasTensor((batch, m), "float32"),
                keras.KerasTensor((batch, m), "int32")]

    def compute_output_shape(self, input_shape):
        batch = input_shape[0][0]
        return [(batch, self.max_detections, 4), (batch, self.max_detections), (batch, self.max_detections)]

    def get_config(self):
        config = super().get_config()
        config.update(nms=self.nms, class_specific_filter=self.class_specific_filter,
                      nms_threshold=self.nms_threshold, score_threshold=self.score_threshold,
                      max_detections=self.max_detections)
        return config


def filter_detections_np(boxes: np.ndarray, classification: np.ndarray,
                         class_specific_filter: bool = CLASS_SPECIFIC_FILTER, nms: bool = NMS,
                         score_threshold: float = SCORE_THRESHOLD, max_detections: int = MAX_DETECTIONS,
                         nms_threshold: float = NMS_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """numpy `filter_detections` for one image, written the way keras-retinanet runs it (per-class NMS, top-k).

    An independent reference for the graph version, and usable on raw model outputs outside any graph.
    """
    boxes = np.asarray(boxes, np.float32)
    classification = np.asarray(classification, np.float32)
    if class_specific_filter:
        per_class = [(np.full(classification.shape[0], c), classification[:, c])
                     for c in range(classification.shape[1])]
    else:
        per_class = [(classification.argmax(axis=1), classification.max(axis=1))]
    all_idx, all_labels, all_scores = [], [], []
    for labels, scores in per_class:
        idx = np.flatnonzero(scores > np.float32(score_threshold))
        if nms and idx.size:
            idx = idx[_nms_np(boxes[idx], scores[idx], nms_threshold, max_detections)]
        all_idx.append(idx)
        all_labels.append(labels[idx])
        all_scores.append(scores[idx])
    idx, labels, scores = (np.concatenate(a) if a else np.zeros(0) for a in (all_idx, all_labels, all_scores))
    top = np.argsort(-scores, kind="stable")[:max_detections]
    out_boxes = np.full((max_detections, 4), -1, np.float32)
    out_scores = np.full(max_detections, -1, np.float32)
    out_labels = np.full(max_detections, -1, np.int32)
    out_boxes[:top.size] = boxes[idx[top].astype(int)]
    out_scores[:top.size] = scores[top]
    out_labels[:top.size] = labels[top]
    return out_boxes, out_scores, out_labels


def _nms_np(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float, max_output: int) -> np.ndarray:
    """TF's greedy NMS (float32 IoU, strict >, ties by index) on one class: the kept indices, best first."""
    order = np.argsort(-scores, kind="stable")
    x1, x2 = np.minimum(boxes[:, 0], boxes[:, 2]), np.maximum(boxes[:, 0], boxes[:, 2])
    y1, y2 = np.minimum(boxes[:, 1], boxes[:, 3]), np.maximum(boxes[:, 1], boxes[:, 3])
    areas = (x2 - x1) * (y2 - y1)
    keep: list[int] = []
    alive = np.ones(len(order), bool)
    for pos, i in enumerate(order):
        if not alive[pos]:
            continue
        keep.append(i)
        if len(keep) == max_output:
            break
        rest = order[pos + 1:]
        iw = np.maximum(np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]), np.float32(0))
        ih = np.maximum(np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]), np.float32(0))
        inter = iw * ih
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = inter / (areas[i] + areas[rest] - inter)
        iou = np.where((areas[i] > 0) & (areas[rest] > 0), iou, np.float32(0))
        alive[pos + 1:] &= ~(iou > np.float32(iou_threshold))
    return np.asarray(keep, dtype=np.int64)
