"""The simple VOC-style mAP that keras-retinanet's Evaluate callback logged during the originals' training.

Rules of fizyr/keras-retinanet `keras_retinanet/utils/eval.py` (`_get_detections`, `evaluate`, `_compute_ap`) and
`callbacks/eval.py`, as used in 2018-2019:

- per image, detections with score > score_threshold (0.05), the max_detections (100) best of the image over all
  classes, in score order;
- per class, on every image: each detection in that order takes the box of its class with the highest overlap
  (first on ties; group-of boxes are plain boxes, image-level labels are not used); overlap >= 0.5 and the box
  not detected yet -> true positive, otherwise false positive; a class without boxes on the image -> false
  positive;
- all detections of the class sorted by score, precision = tp / max(tp + fp, eps), recall = tp / num_annotations,
  AP by the VOC 2010+ all-points interpolation;
- mAP = sum of AP over the classes / number of classes with at least one annotation (classes without annotations
  add 0 and are not counted), or with `weighted_average` the AP weighted by the number of annotations.

The overlap is keras-retinanet's `compute_overlap`: 0 unless the boxes overlap in width and height. The versions
the originals ran (2018) added 1 to widths and heights (pixel boxes): `plus_one=True` reproduces that when boxes are
in pixels; on normalised boxes leave it off.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from oid_retinanet.evaluate.oid_map import (
    MATCHING_IOU_THRESHOLD,
    DetectionStore,
    GroundTruth,
    MetricResult,
    _score_entries,
    best_overlaps,
    first_per_box,
    rank_in_group,
)

log = logging.getLogger(__name__)

SCORE_THRESHOLD = 0.05
MAX_DETECTIONS = 100


class VOCEvaluator(DetectionStore):
    """keras-retinanet's per-epoch mAP on the same inputs as the OID evaluator; add() chunks, then evaluate()."""

    metric = "voc"

    def __init__(self, gt: GroundTruth, iou_threshold: float = MATCHING_IOU_THRESHOLD,
                 score_threshold: float | None = SCORE_THRESHOLD, max_detections: int | None = MAX_DETECTIONS,
                 plus_one: bool = False, weighted_average: bool = False) -> None:
        super().__init__(gt)
        self.iou_threshold = iou_threshold
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        self.plus_one = plus_one
        self.weighted_average = weighted_average

    def _keep(self, img, cls, scores, boxes):
        if self.score_threshold is None:
            return None
        above = scores > self.score_threshold
        self.counts["dropped_score_not_above_threshold"] += int((~above).sum())
        return above

    def _evaluate(self, keep_curves: bool) -> MetricResult:
        """Match per class and image, AP per class, and the mean as the Evaluate callback computed it."""
        started = time.perf_counter()
        gt, n_classes = self.gt, len(self.gt.classes)
        img, cls, scores, boxes, seq = self.detections()
        self._parts = []
        order = np.lexsort((seq, -scores, img))  # per image by score, ties in input order (stable argsort(-s))
        img, cls, scores, boxes = img[order], cls[order], scores[order], boxes[order]
        if self.max_detections:
            top = rank_in_group(img) < self.max_detections
            self.counts["dropped_over_max_detections"] = int((~top).sum())
            img, cls, scores, boxes = img[top], cls[top], scores[top], boxes[top]
        by_class = np.lexsort((np.arange(len(img)), cls, img))  # per image and class, keeping the score order
        img, cls, scores, boxes = img[by_class], cls[by_class], scores[by_class], boxes[by_class]
        key = img * n_classes + cls
        self.counts["evaluated"] = len(key)

        gt_key = gt.box_image * n_classes + gt.box_class
        gt_order = np.argsort(gt_key, kind="stable")
        best, overlap = best_overlaps(key, boxes, gt_key[gt_order], gt.boxes[gt_order],
                                      "voc+1" if self.plus_one else "voc")
        tp = np.zeros(len(key), dtype=bool)
        tp[first_per_box(best, overlap >= self.iou_threshold)] = True

        num_gt = np.bincount(gt.box_class, minlength=n_classes).astype(np.float64)
        self.timings["match"] = time.perf_counter() - started
        started = time.perf_counter()
        result = _score_entries(self.metric, gt, cls, img, scores, tp.astype(np.float64),
                                np.arange(len(key)), num_gt, np.bincount(cls, minlength=n_classes),
                                dict(self.counts), keep_curves, reverse_ties=False, eps_precision=True)
        present = np.flatnonzero(num_gt > 0)
        if self.weighted_average:
            total = float(sum(num_gt[present].tolist()))
            result.mean_ap = sum((num_gt[c] * result.ap[c] for c in present), 0.0) / total if total else np.nan
        else:
            result.mean_ap = sum(result.ap[present].tolist(), 0.0) / len(present) if len(present) else np.nan
        result.mean_ap = float(result.mean_ap)
        self.timings["ap"] = time.perf_counter() - started
        self.log_counts("VOC-style metric")
        return result
