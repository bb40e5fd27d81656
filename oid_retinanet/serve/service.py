"""The web demo's model service: reading an upload safely, one model thread for all requests, the answer.

The answer for an image is what the pipeline writes for it, number for number:

- stage 4 (`retinanet_inference_example.py`): the image is preprocessed and resized by `prepare_image`, and
  predicted with its mirrored copy in one model call when flip TTA is on (`predict_batch`); the two rows are
  merged as `write_mirror_merged_csv` merges a cache file (the original's filter, the weighted merge with
  weights 1/2 each, the box limit, clipping); without flip the single row keeps its scores. The merged boxes
  are formatted as the stage-4 CSV writes them (scores with 6 decimals, coordinates with 4) and read back, so
  the API gives the CSV's numbers;
- stage 5: the parent classes are what the expansion (`expand_block`, the stage-5 script's defaults: the
  2018 name-keyed lookup, NMS at 0.75 with the '+1') adds to that CSV row.

Uploads are decoded from memory (nothing is written under a name the client chose): the image's header is
checked first (one of `UPLOAD_FORMATS`, at most `max_pixels` pixels) so that a decompression bomb is refused
before its pixels are decoded. Requests go through one thread that owns the model (`ModelWorker`): a queue
in arrival order, where requests waiting with the same input shape and flip setting share a model call (up to
`max_batch`).
"""

from __future__ import annotations

import concurrent.futures
import io
import logging
import os
import queue
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from oid_retinanet.data.preprocess import pil_to_bgr, prepare_image, resized_shape
from oid_retinanet.oid.classes import ClassList, read_class_descriptions
from oid_retinanet.oid.predictions import (
    PredictionBlock,
    arrow_strings,
    check_labels_and_boxes,
    parse_prediction_strings,
)
from oid_retinanet.predict.ensemble import DECIMALS, MIRROR_DEFAULTS, format_rows, mirror_merge_image
from oid_retinanet.predict.expand import DEFAULT_IOU_THR, ParentTable, expand_block, load_parent_table
from oid_retinanet.predict.inference import predict_batch

log = logging.getLogger(__name__)

# What PIL may open for an upload: the usual photo formats (no EPS, which PIL hands to Ghostscript, and none
# of the rarer plugins).
UPLOAD_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")
DEFAULT_MAX_PIXELS = 40_000_000
# Peak memory of decoding and preprocessing an upload, per pixel: the uint8 BGR image, PIL's decoded copy and the
# float32 network input before its resize (a 36-megapixel PNG measured +0.53 GB, 14.7 bytes a pixel).
DECODE_BYTES_PER_PIXEL = 16
DEFAULT_MAX_BATCH = 4
_ROW_ID = "upload"
_SOURCE = "<upload>"


class RequestError(Exception):
    """A request the server refuses: the HTTP status and a one-line message for the client."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


# ----------------------------------------------------------------------------------------------------------
# Reading an upload


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, str]:
    """An uploaded image file's bytes -> ((H, W, 3) uint8 BGR, PIL format name), read as `read_image_bgr` reads.

    Raises RequestError: 415 for anything that is not an image of UPLOAD_FORMATS, 422 for an image of more
    than `max_pixels` pixels (checked on the header, before decoding) or one that cannot be decoded (truncated,
    damaged).
    """
    try:
        img = Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS)
    except UnidentifiedImageError:
        raise RequestError(415, "not an image this server reads (expected JPEG, PNG, BMP, TIFF, WebP, GIF or "
                                "PPM)") from None
    except Image.DecompressionBombError as exc:
        raise RequestError(422, f"image refused: {exc}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise RequestError(422, f"cannot read the image header ({exc})") from None
    with img:
        width, height = img.size
        if width * height > max_pixels:
            raise RequestError(422, f"image of {width}x{height} = {width * height / 1e6:.1f} megapixels; this "
                                    f"server reads at most {max_pixels / 1e6:g} megapixels")
        try:
            bgr = pil_to_bgr(img)  # read_image_bgr's rule ('clip' for 16-bit images)
        except Image.DecompressionBombError as exc:
            raise RequestError(422, f"image refused: {exc}") from None
        except (OSError, SyntaxError, ValueError, EOFError) as exc:
            raise RequestError(422, f"cannot decode the {img.format} image, truncated or damaged ({exc})") from None
        fmt = img.format or "unknown"
    return bgr, fmt


def decode_cost(data: bytes) -> int:
    """Estimated peak bytes of decoding `data` (DECODE_BYTES_PER_PIXEL x the header's size; 0 when the header
    cannot be read, which decode_image then refuses)."""
    try:
        with Image.open(io.BytesIO(data), formats=UPLOAD_FORMATS) as img:
            width, height = img.size
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError, ValueError, EOFError):
        return 0
    return width * height * DECODE_BYTES_PER_PIXEL


@dataclass
class PreparedImage:
    """An upload ready for the model: `x` the float32 network input (resized), the original size and format."""

    x: np.ndarray
    width: int
    height: int
    format: str
    decode_seconds: float = 0.0


def prepare_upload(data: bytes, min_side: int, max_side: int, max_pixels: int = DEFAULT_MAX_PIXELS
                   ) -> PreparedImage:
    """Decode an upload (`decode_image`) and preprocess and resize it as stage 4 does (`prepare_image`)."""
    start = time.perf_counter()
    bgr, fmt = decode_image(data, max_pixels)
    height, width = bgr.shape[:2]
    if min(resized_shape(bgr.shape, min_side, max_side)) < 1:
        raise RequestError(422, f"image of {width}x{height} is too narrow to resize to sides {min_side}/{max_side}")
    x, _ = prepare_image(bgr, min_side=min_side, max_side=max_side)
    return PreparedImage(x, width, height, fmt, time.perf_counter() - start)


# ----------------------------------------------------------------------------------------------------------
# Class lists and the parent classes


@dataclass(frozen=True)
class ParentExpansion:
    """Stage 5's expansion for the demo: the parent table, the names of its classes, the NMS settings."""

    table: ParentTable
    names: ClassList
    iou_thr: float
    plus_one: bool
    rule: str


def load_parent_expansion(model_classes: ClassList, labels_csv: str, hierarchy_json: str,
                          hierarchy_names_csv: str | None = None, corrected: bool = False,
                          iou_thr: float | None = None) -> ParentExpansion:
    """The parent table as the stage-5 script builds it (`load_parent_table`), extended so that every MID of
    the model is a key (those outside `labels_csv` get no parents).

    labels_csv, hierarchy_json, hierarchy_names_csv: the stage-5 script's 2018 defaults are the 500-class
    list, the v4 hierarchy and the v4 class list. corrected: parents keyed by MID, IoU without the '+1'.
    """
    table = load_parent_table(labels_csv, hierarchy_json, hierarchy_names_csv, corrected=corrected)
    missing = [m for m in dict.fromkeys(model_classes.mids) if m not in set(table.child_mids)]
    if missing:
        table = ParentTable.from_mapping({**table.as_dict(), **{m: [] for m in missing}}, table.source)
    names = read_class_descriptions(labels_csv, allow_aliases=True)
    thr = DEFAULT_IOU_THR["2018"] if iou_thr is None else iou_thr
    return ParentExpansion(table, names, thr, plus_one=not corrected, rule="corrected" if corrected else "2018")


# ----------------------------------------------------------------------------------------------------------
# From the model's rows to the answer


@dataclass(frozen=True)
class MergeSettings:
    """Stage 4's mirror merge: boxes under `skip_box_thr` dropped, merged at `iou_thr`, at most `limit_boxes`."""

    skip_box_thr: float = MIRROR_DEFAULTS["skip_box_thr"]
    iou_thr: float = MIRROR_DEFAULTS["iou_thr"]
    limit_boxes: int = MIRROR_DEFAULTS["limit_boxes"]
    type: str = MIRROR_DEFAULTS["type"]


def mirror_merge(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray,
                 settings: MergeSettings = MergeSettings()) -> np.ndarray:
    """One image's model rows merged as stage 4's CSV merges them (`ensemble.mirror_merge_image`)."""
    return mirror_merge_image(boxes, scores, labels, settings.skip_box_thr, settings.iou_thr, settings.limit_boxes,
                              settings.type)


def csv_prediction_string(rows: np.ndarray, mids: np.ndarray) -> str:
    """Merged rows as the stage-4 CSV writes their PredictionString (6-decimal scores, 4-decimal coordinates)."""
    text = format_rows([_ROW_ID], np.zeros(len(rows), dtype=np.int64), rows, mids, *DECIMALS["mirror"]).decode()
    return text[len(_ROW_ID) + 1:].rstrip("\n")


def parse_prediction_string(prediction_string: str) -> PredictionBlock:
    """One PredictionString, parsed as the pipeline parses a CSV row (`numbers`: score, x1, y1, x2, y2)."""
    return parse_prediction_strings(_SOURCE, arrow_strings([_ROW_ID]), arrow_strings([prediction_string]))


def parent_predictions(row: PredictionBlock, expansion: ParentExpansion) -> PredictionBlock:
    """The parent boxes stage 5 adds to a parsed row (its --only-new output for that row)."""
    text = bytes(expand_block(row, expansion.table, expansion.iou_thr, expansion.plus_one,
                              return_only_new=True)).decode()
    return parse_prediction_string(text[len(_ROW_ID) + 1:].rstrip("\n"))


def _box_entries(mids: np.ndarray, names: np.ndarray, scores: np.ndarray, boxes: np.ndarray, width: int, height: int,
                 labels: np.ndarray | None, min_score: float) -> list[dict]:
    """JSON entries, highest score first: boxes normalised (x1, y1, x2, y2) and in pixels of the upload."""
    keep = np.flatnonzero(scores >= min_score)
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    pixels = np.round(boxes[keep] * np.array([width, height, width, height], dtype=np.float64), 2)
    label_list = [None] * len(keep) if labels is None else labels[keep].astype(int).tolist()
    return [{"label": lab, "mid": str(mid), "name": str(name), "score": score, "box": box, "box_px": px}
            for lab, mid, name, score, box, px in zip(label_list, mids[keep], names[keep], scores[keep].tolist(),
                                                      boxes[keep].tolist(), pixels.tolist())]


# ----------------------------------------------------------------------------------------------------------
# The model thread


@dataclass
class ModelOutput:
    """One image's rows from the model (as `predict_batch` gives them) and how they were computed."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray
    model_seconds: float
    queue_seconds: float
    batch_images: int


@dataclass
class _Job:
    x: np.ndarray
    flip: bool
    future: concurrent.futures.Future = field(default_factory=concurrent.futures.Future)
    queued_at: float = field(default_factory=time.perf_counter)

    @property
    def key(self) -> tuple:
        return self.x.shape, self.flip


class ModelWorker:
    """The one thread that calls the model. Jobs run in arrival order; jobs already waiting with the first
    one's input shape and flip setting join its model call, up to `max_batch` images."""

    def __init__(self, model, max_batch: int = DEFAULT_MAX_BATCH):
        if max_batch < 1:
            raise ValueError(f"max_batch must be positive, got {max_batch}")
        self.model = model
        self.max_batch = max_batch
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._count_lock = threading.Lock()
        self._waiting = 0
        self.calls = 0

    def start(self) -> None:
        """Start the thread (once)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="model", daemon=True)
            self._thread.start()

    def stop(self, timeout: float | None = None) -> None:
        """Finish the jobs already queued, then end the thread."""
        if self._thread is not None:
            self._jobs.put(None)
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def waiting(self) -> int:
        """Images queued and not yet in a model call."""
        return self._waiting

    def _count(self, n: int) -> None:
        with self._count_lock:
            self._waiting += n

    def submit(self, x: np.ndarray, flip: bool) -> concurrent.futures.Future:
        """Queue one network input (H, W, 3); the future's result is a ModelOutput."""
        job = _Job(x, flip)
        self._count(1)
        self._jobs.put(job)
        return job.future

    def _run(self) -> None:
        backlog: deque[_Job | None] = deque()
        while True:
            if not backlog:
                backlog.append(self._jobs.get())
            while True:  # everything waiting now is a candidate for this call
                try:
                    backlog.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            first = backlog[0]
            if first is None:
                for job in backlog:
                    if job is not None and job.future.set_running_or_notify_cancel():
                        job.future.set_exception(RuntimeError("the model service stopped"))
                self._count(-sum(job is not None for job in backlog))
                return
            batch, rest = [], deque()
            for job in backlog:
                if job is not None and len(batch) < self.max_batch and job.key == first.key:
                    batch.append(job)
                else:
                    rest.append(job)
            backlog = rest
            self._count(-len(batch))
            self._predict([job for job in batch if job.future.set_running_or_notify_cancel()])

    def _predict(self, batch: list[_Job]) -> None:
        if not batch:
            return
        start = time.perf_counter()
        try:
            boxes, scores, labels = predict_batch(self.model, np.stack([job.x for job in batch]), batch[0].flip)
        except Exception as exc:  # a failed call fails its requests, never the thread
            log.exception("model call failed for %d images of shape %s", len(batch), batch[0].x.shape)
            for job in batch:
                job.future.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        self.calls += 1
        for k, job in enumerate(batch):
            job.future.set_result(ModelOutput(boxes[k], scores[k], labels[k], seconds, start - job.queued_at,
                                              len(batch)))


# ----------------------------------------------------------------------------------------------------------
# The service


@dataclass
class ModelInfo:
    """What the health endpoint and the page say about the model."""

    name: str
    backbone: str
    min_side: int
    max_side: int
    labels_source: str


class DetectionService:
    """One model and everything needed to answer a request: labels, sides, merge and expansion settings.

    model: an inference model (`predict_on_batch` -> boxes in input pixels, scores, labels), or anything that
    behaves so. parents: the expansion, or None to answer without parent classes.
    """

    def __init__(self, model, labels: ClassList, info: ModelInfo, parents: ParentExpansion | None = None,
                 merge: MergeSettings = MergeSettings(), max_batch: int = DEFAULT_MAX_BATCH):
        self.labels = labels
        self.info = info
        self.parents = parents
        self.merge = merge
        self.worker = ModelWorker(model, max_batch)
        self._mids = np.array(labels.mids, dtype=object)
        self._names = np.array(labels.names, dtype=object)
        self._started = False
        self._lock = threading.Lock()

    @property
    def min_side(self) -> int:
        return self.info.min_side

    @property
    def max_side(self) -> int:
        return self.info.max_side

    def start(self, warmup: bool = True) -> None:
        """Start the model thread; with warmup, first run two small inputs of different shapes through the
        model, so that requests of any shape reuse its compiled function (Keras retraces on new shapes)."""
        with self._lock:
            if self._started:
                return
            self.worker.start()
            if warmup:
                t = time.perf_counter()
                for h, w, flip in ((64, 96, True), (96, 64, False)):
                    self.worker.submit(np.zeros((h, w, 3), dtype=np.float32), flip).result()
                log.info("model warmed up in %.1f s", time.perf_counter() - t)
            self._started = True

    def stop(self) -> None:
        """Finish queued requests and end the model thread."""
        with self._lock:
            self.worker.stop()
            self._started = False

    @property
    def ready(self) -> bool:
        return self._started and self.worker.alive

    def submit(self, image: PreparedImage, flip: bool) -> concurrent.futures.Future:
        """Queue an image for the model; the future's result is a ModelOutput."""
        return self.worker.submit(image.x, flip)

    def answer(self, image: PreparedImage, output: ModelOutput, flip: bool, parents: bool = True,
               min_score: float = 0.0) -> dict:
        """The JSON answer for one image (see app.py for its fields)."""
        start = time.perf_counter()
        rows = mirror_merge(output.boxes, output.scores, output.labels, self.merge)
        leaf = parse_prediction_string(csv_prediction_string(rows, self._mids))
        label = rows[:, 0].astype(np.int64)
        detections = _box_entries(self._mids[label], self._names[label], leaf.numbers[:, 0], leaf.numbers[:, 1:],
                                  image.width, image.height, label, min_score)
        result = {
            "image": {"width": image.width, "height": image.height, "format": image.format,
                      "input": list(image.x.shape[:2])},
            "flip": flip,
            "detections": detections,
        }
        if parents and self.parents is not None:
            found = parent_predictions(leaf, self.parents)
            mids = check_labels_and_boxes(found, self.parents.names)
            names = np.array([self.parents.names.name(m) for m in mids], dtype=object)
            result["parents"] = _box_entries(mids, names, found.numbers[:, 0], found.numbers[:, 1:], image.width,
                                             image.height, None, min_score)
        else:
            result["parents"] = []
        result["timing_ms"] = {"decode": round(1000 * image.decode_seconds, 1),
                               "queue": round(1000 * output.queue_seconds, 1),
                               "model": round(1000 * output.model_seconds, 1),
                               "boxes": round(1000 * (time.perf_counter() - start), 1)}
        result["batch_images"] = output.batch_images
        return result

    def describe(self) -> dict:
        """The model's description for the health endpoint: file names, never the server's paths."""
        return {"name": os.path.basename(self.info.name), "backbone": self.info.backbone,
                "classes": len(self.labels), "labels": os.path.basename(self.info.labels_source),
                "min_side": self.info.min_side, "max_side": self.info.max_side,
                "parents": self.parents.rule if self.parents is not None else None,
                "merge": {"skip_box_thr": self.merge.skip_box_thr, "iou_thr": self.merge.iou_thr,
                          "limit_boxes": self.merge.limit_boxes, "type": self.merge.type}}
