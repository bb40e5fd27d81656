"""Evaluation without Keras or TensorFlow: the official Open Images challenge metric and keras-retinanet's VOC mAP.

    gt = read_ground_truth("boxes.csv", "labels.csv", read_eval_classes("classes.csv"),
                           ExpansionMaps.from_json("hierarchy.json"))
    result = evaluate_predictions(gt, iter_prediction_chunks("predictions.csv"))   # or per-image predictions
    result.mean_ap, result.per_class()

The Keras training callback that scores every epoch lives with training (`oid_retinanet.train.callbacks`).
"""

from __future__ import annotations

from collections.abc import Iterable

from oid_retinanet.evaluate.expand_gt import ExpansionMaps, expand_boxes, expand_csv, expand_image_labels
from oid_retinanet.evaluate.oid_map import (
    DetectionChunk,
    EvalClasses,
    GroundTruth,
    MetricResult,
    OIDChallengeEvaluator,
    chunks_from_image_predictions,
    ground_truth_from_frames,
    iter_prediction_chunks,
    read_eval_classes,
    read_ground_truth,
    write_report,
)
from oid_retinanet.evaluate.voc_map import VOCEvaluator
from oid_retinanet.oid.predictions import ImagePredictions

METRICS = ("oid", "voc")

__all__ = [
    "METRICS", "DetectionChunk", "EvalClasses", "ExpansionMaps", "GroundTruth", "MetricResult",
    "OIDChallengeEvaluator", "VOCEvaluator", "chunks_from_image_predictions", "evaluate_predictions",
    "expand_boxes", "expand_csv", "expand_image_labels", "ground_truth_from_frames", "iter_prediction_chunks",
    "make_evaluator", "read_eval_classes", "read_ground_truth", "write_report",
]


def make_evaluator(gt: GroundTruth, metric: str = "oid", **options) -> OIDChallengeEvaluator | VOCEvaluator:
    """An empty evaluator: metric "oid" (the challenge metric) or "voc" (keras-retinanet's); options go to it."""
    if metric == "oid":
        return OIDChallengeEvaluator(gt, **options)
    if metric == "voc":
        return VOCEvaluator(gt, **options)
    raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")


def evaluate_predictions(gt: GroundTruth, predictions: Iterable[DetectionChunk] | Iterable[ImagePredictions],
                         metric: str = "oid", keep_curves: bool = False, **options) -> MetricResult:
    """Score predictions against the ground truth.

    predictions: DetectionChunks (e.g. from iter_prediction_chunks) or per-image ImagePredictions (boxes x1, y1,
    x2, y2 normalised, as the inference stage yields them); both may be generators.
    """
    evaluator = make_evaluator(gt, metric, **options)
    it = iter(predictions)
    first = next(it, None)
    if first is not None:
        if isinstance(first, DetectionChunk):
            evaluator.add(first)
            for chunk in it:
                evaluator.add(chunk)
        else:
            def images() -> Iterable[ImagePredictions]:
                yield first
                yield from it
            for chunk in chunks_from_image_predictions(images()):
                evaluator.add(chunk)
    return evaluator.evaluate(keep_curves=keep_curves)
