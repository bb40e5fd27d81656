"""Callbacks of the training scripts: snapshots written atomically (with the model card), and the per-epoch
validation mAP.

MeanAPCallback replaces keras-retinanet's Evaluate callback: the model is run by a function you supply (so
resizing, batching and box decoding stay with the inference code), and the score is the official Open Images
metric (metric="oid") or keras-retinanet's VOC-style mAP (metric="voc"). `logs["mAP"]` is set before the
callbacks after this one run, so ModelCheckpoint(monitor="mAP", mode="max") and ReduceLROnPlateau can use it:
put it first in the list.
"""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import keras
import numpy as np

from oid_retinanet.data.datasets import LevelData
from oid_retinanet.data.generator import OpenImagesGenerator
from oid_retinanet.evaluate import evaluate_predictions
from oid_retinanet.evaluate.oid_map import EvalClasses, GroundTruth, MetricResult, ground_truth_from_frames
from oid_retinanet.model.anchors import DEFAULT_ANCHOR_PARAMS, AnchorParameters
from oid_retinanet.model.card import ModelCard, save_model
from oid_retinanet.model.retinanet import retinanet_bbox
from oid_retinanet.oid.predictions import ImagePredictions

log = logging.getLogger(__name__)

SNAPSHOT_SUFFIX = ".keras"
_EPOCH = re.compile(r"_(\d+)$")


def snapshot_name(backbone: str, level: str, epoch: int) -> str:
    """`resnet50_oid_level_1_05.keras`: the original's `{backbone}_oid_{epoch:02d}` with the level added."""
    return f"{backbone}_oid_level_{level}_{epoch:02d}{SNAPSHOT_SUFFIX}"


def snapshot_epoch(path: str | os.PathLike) -> int | None:
    """The epoch a snapshot was written after, from the number ending its name (as the original read it)."""
    m = _EPOCH.search(Path(path).stem)
    return int(m.group(1)) if m else None


def snapshots(folder: str | os.PathLike, backbone: str, level: str) -> list[tuple[int, Path]]:
    """(epoch, path) of this backbone's and level's snapshots in `folder`, oldest first."""
    return sorted((snapshot_epoch(p), p) for p in Path(folder).glob(f"{backbone}_oid_level_{level}_*{SNAPSHOT_SUFFIX}")
                  if snapshot_epoch(p) is not None)


def latest_snapshot(folder: str | os.PathLike, backbone: str, level: str) -> Path | None:
    """The snapshot of the highest epoch in `folder` for this backbone and level, if any."""
    found = snapshots(folder, backbone, level)
    return found[-1][1] if found else None


class Snapshot(keras.callbacks.Callback):
    """Save the whole training model (weights, optimizer state, compile settings) after every `every`-th epoch
    and after the last one.

    Written under a temporary name and renamed, so a run killed while saving leaves no half snapshot. card: the
    model card stored inside each snapshot (with the epoch in its `training`). keep > 0: after each save, only
    the `keep` newest snapshots of this backbone and level stay in the folder. write=False (a worker other than 0
    of several): the model is saved into a temporary folder and dropped, since saving a model distributed over
    several processes takes every process's part.
    """

    def __init__(self, folder: str | os.PathLike, backbone: str, level: str, keep: int = 0, every: int = 1,
                 card: ModelCard | None = None, write: bool = True) -> None:
        super().__init__()
        self.write = write
        self.card = card
        self.folder = Path(folder)
        self.backbone = backbone
        self.level = level
        self.keep = keep
        self.every = every

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        if (epoch + 1) % self.every and epoch + 1 != self.params.get("epochs"):
            return
        if not self.write:
            with tempfile.TemporaryDirectory() as scratch:
                self.model.save(Path(scratch) / "part.keras")
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.folder / snapshot_name(self.backbone, self.level, epoch + 1)
        card = self.card.with_(training={**self.card.training, "epoch": epoch + 1}) if self.card else None
        save_model(self.model, final, card)
        log.info("epoch %d: snapshot %s", epoch + 1, final)
        if self.keep > 0:
            for _, old in snapshots(self.folder, self.backbone, self.level)[:-self.keep]:
                old.unlink()
                log.info("removed the older snapshot %s (--keep-snapshots %d)", old, self.keep)


class TrainingLog(keras.callbacks.CSVLogger):
    """A CSV row per epoch with the columns the epoch's logs hold (loss, the head losses, learning rate, mAP).

    Keras' CSVLogger adds a `val_<key>` column for every key when the logs have no validation loss (ours never
    do: the validation set is scored by mAP), all "NA"; this one writes only what was logged.
    """

    def on_epoch_end(self, epoch, logs=None):
        if self.keys is None:
            self.keys = sorted(logs or {})
        super().on_epoch_end(epoch, logs)


class MeanAPCallback(keras.callbacks.Callback):
    """Every `every` epochs: predictions = predict(model), score them against `ground_truth`, logs[log_key] = mAP.

    predict: called with the model being trained; returns (or yields) ImagePredictions, boxes x1, y1, x2, y2
    normalised to [0, 1] (or in pixels with metric="voc", plus_one=True, as the 2018 keras-retinanet scored them).
    options: passed to the evaluator (e.g. score_threshold, max_detections, weighted_average for "voc").
    The last result (per-class AP and counts) is kept in `last_result`. report_path: every evaluation is appended
    to it as the original's callback appended to `mAP_stat_<backbone>.txt`: a line per class, `N instances of
    class NAME with average precision: AP` (0 for a class without boxes), then `Ep E: mAP: M`.
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
            with open(self.report_path, "a", encoding="utf-8") as f:  # one write per epoch, as the original
                f.write("".join(line + "\n" for line in ap_lines(result)) + f"Ep {epoch + 1}: mAP: "
                        f"{result.mean_ap:.4f}\n")


def ap_lines(result: MetricResult) -> list[str]:
    """keras-retinanet's per-class lines: `N instances of class NAME with average precision: AP` (AP 0 for a class
    without boxes, as it printed)."""
    table = result.per_class()
    return [f"{n:.0f} instances of class {name} with average precision: {0.0 if ap != ap else ap:.4f}"
            for name, n, ap in zip(table["name"], table["num_gt"].fillna(0), table["AP"])]


def level_ground_truth(data: LevelData) -> GroundTruth:
    """The boxes of a level's images as ground truth. Images without boxes have none, so detections on them are
    not scored: a check of a level's model, not the challenge score (use evaluate_oid_map.py)."""
    import pandas as pd

    rows = pd.DataFrame({
        "ImageID": np.repeat(data.image_ids, np.diff(data.offsets)),
        "LabelName": np.asarray(data.classes.mids, dtype=object)[data.labels],
        "XMin": data.boxes[:, 0], "YMin": data.boxes[:, 1], "XMax": data.boxes[:, 2], "YMax": data.boxes[:, 3],
        "IsGroupOf": 0,
    })
    return ground_truth_from_frames(rows, None, EvalClasses.from_mids(data.classes.mids, data.classes.names))


def predict_generator(generator: OpenImagesGenerator, model: keras.Model,
                      anchor_params: AnchorParameters = DEFAULT_ANCHOR_PARAMS) -> Iterator[ImagePredictions]:
    """Detections of the inference model built on `model` (with these anchors) for every image of a sequential
    generator."""
    prediction_model = retinanet_bbox(model, anchor_params=anchor_params)
    mids = np.asarray(generator.data.classes.mids, dtype=object)
    for group in generator.groups:
        for i in group:
            x, _, _ = generator.load_entry(int(i), None)
            boxes, scores, labels = (np.asarray(v)[0] for v in prediction_model.predict_on_batch(x[None]))
            keep = labels >= 0
            h, w = x.shape[:2]
            norm = boxes[keep] / np.array([w, h, w, h], np.float32)
            yield ImagePredictions(str(generator.data.image_ids[i]), mids[labels[keep]], scores[keep], norm)


def evaluation_callback(generator: OpenImagesGenerator, metric: str = "voc", report_path: str | None = None,
                        local: bool = False, **options) -> MeanAPCallback:
    """`logs["mAP"]` on the validation generator after every epoch; the per-class table to `report_path`.
    local: evaluate a copy in this process alone (`LocalTwin`: worker 0 of several). options: the evaluator's
    (weighted_average for "voc")."""
    twin = LocalTwin() if local else (lambda model: model)
    return MeanAPCallback(lambda model: predict_generator(generator, twin(model), generator.config.anchor_params),
                          level_ground_truth(generator.data),
                          metric=metric, report_path=report_path, **options)


class LocalTwin:
    """A copy of a model that lives in this process alone, outside the multi-process distribution, with the
    trained model's weights copied in when called: what worker 0 evaluates on while the other workers wait."""

    def __init__(self) -> None:
        self.twin = None

    def __call__(self, model: keras.Model) -> keras.Model:
        if self.twin is None:
            shared = keras.distribution.distribution()
            keras.distribution.set_distribution(None)
            try:
                self.twin = keras.models.clone_model(model)
            finally:
                keras.distribution.set_distribution(shared)
        self.twin.set_weights(model.get_weights())
        return self.twin
