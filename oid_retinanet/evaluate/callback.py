"""A Keras callback that scores the model on a validation set every epoch and logs the mAP into `logs`.

It replaces keras-retinanet's Evaluate callback: the model is run by a function you supply (so resizing,
batching and box decoding stay with the inference code), and the score is the official Open Images metric
(metric="oid") or keras-retinanet's VOC-style mAP (metric="voc"). `logs["mAP"]` is set before the callbacks
after this one run, so ModelCheckpoint(monitor="mAP", mode="max") and ReduceLROnPlateau can use it: put this
callback first in the list.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import keras

from oid_retinanet.evaluate import evaluate_predictions
from oid_retinanet.evaluate.oid_map import GroundTruth, MetricResult
from oid_retinanet.files import atomic_write_text
from oid_retinanet.oid.predictions import ImagePredictions

log = logging.getLogger(__name__)


class MeanAPCallback(keras.callbacks.Callback):
    """Every `every` epochs: predictions = predict(model), score them against `ground_truth`, logs[log_key] = mAP.

    predict: called with the model being trained; returns (or yields) ImagePredictions, boxes x1, y1, x2, y2
    normalised to [0, 1] (or in pixels with metric="voc", plus_one=True, as the 2018 keras-retinanet scored them).
    options: passed to the evaluator (e.g. score_threshold, max_detections, weighted_average for "voc").
    The last result (per-class AP and counts) is kept in `last_result`, and written as a table to `report_path`
    when given.
    """

    def __init__(self, predict: Callable[[keras.Model], Iterable[ImagePredictions]], ground_truth: GroundTruth,
                 metric: str = "oid", log_key: str = "mAP", every: int = 1, verbose: int = 1,
                 report_path: str | None = None, **options) -> None:
        super().__init__()
        self.predict = predict
        self.ground_truth = ground_truth
        self.metric = metric
        self.log_key = log_key
        self.every = max(1, int(every))
        self.verbose = verbose
        self.report_path = report_path
        self.options = options
        self.last_result: MetricResult | None = None

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every:
            return
        result = evaluate_predictions(self.ground_truth, self.predict(self.model), metric=self.metric,
                                      **self.options)
        self.last_result = result
        if logs is not None:
            logs[self.log_key] = result.mean_ap
        if self.verbose:
            log.info("epoch %d: %s %s = %.4f over %d classes", epoch + 1, self.metric, self.log_key,
                     result.mean_ap, result.num_scored)
        if self.report_path:
            atomic_write_text(self.report_path, f"epoch {epoch + 1} {self.metric} {self.log_key} "
                              f"{result.mean_ap:.6f}\n{result.per_class().to_string()}\n")
