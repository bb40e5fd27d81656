"""Stage 4 inference: run a RetinaNet inference model over images and fill the per-image prediction cache.

As ZFTurbo's `get_retinanet_predictions_for_files`: per image, read (BGR), caffe-preprocess, resize
(`min_side`, `max_side`), predict on the image and on its horizontally mirrored copy in one batch, and keep
the boxes normalised by the *resized* image's width and height (the original divided the resized-pixel boxes
by `image.shape[2]` and `image.shape[1]` of the resized batch; `scale` was only used for its debug drawing).
Row 1 of the cache holds the mirrored copy's detections in its own (mirrored) coordinates; the mirror merge
(predict/ensemble.py) maps them back. Without flip the cache has one row (see predict/cache.py).

An image whose cache file exists is skipped (the original's resume rule), so an interrupted run continues
where it stopped; each cache file is written atomically right after its prediction. Images are read and
preprocessed in a thread pool ahead of the model (a bounded number in flight). An unreadable image is logged,
listed in `<cache_dir>/failures.txt` (path, tab, reason; always written, empty when nothing failed) and
skipped. Consecutive images with the same resized shape may share one model call (`batch_size` images,
2 x batch_size rows with flip); images of different shapes never do.

No Keras import here: `model` is anything with `predict_on_batch(x) -> (boxes, scores, labels)`.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm import tqdm

from oid_retinanet.data.preprocess import prepare_image, read_image_bgr
from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path, atomic_write_text, remove_stale_temporaries_in
from oid_retinanet.predict.cache import FAILURES_FILE, cache_file, cache_ids, read_cache, write_cache

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
VISUALIZE_SCORE_THR = 0.3  # the original's show_image_debug


def image_id(path: str | os.PathLike) -> str:
    """ImageId of an image file: its name without the extension (the original: basename minus 4 characters)."""
    return Path(path).stem


def list_images(source: str | os.PathLike) -> list[Path]:
    """Images of a folder (files with an image extension, sorted), a glob pattern (sorted) or a `.txt` list.

    A list file holds one path per line (blank lines and lines starting with '#' ignored), in its order;
    relative paths are taken from the list file's folder. Raises OIDInputError when nothing is found.
    """
    text = os.fspath(source)
    path = Path(text)
    if path.is_dir():
        found = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    elif path.suffix.lower() == ".txt" and path.is_file():
        found = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line and not line.startswith("#"):
                    entry = Path(line)
                    found.append(entry if entry.is_absolute() else path.parent / entry)
    elif glob.has_magic(text):
        found = sorted(Path(p) for p in glob.glob(text) if Path(p).is_file())
    elif path.exists():
        raise OIDInputError("expected a folder, a glob pattern or a .txt list of images", text)
    else:
        raise FileNotFoundError(2, "No such file or directory", text)
    if not found:
        raise OIDInputError("no images found", text)
    return found


def shard(paths: Iterable[str | os.PathLike], i: int, n: int) -> list[Path]:
    """Shard `i` of `n` (0-based): every n-th of the sorted paths, starting at the i-th. Shards partition paths."""
    if n < 1 or not 0 <= i < n:
        raise ValueError(f"shard {i}/{n}: expected 0 <= i < n")
    return sorted(Path(p) for p in paths)[i::n]


def parse_shard(text: str) -> tuple[int, int]:
    """'I/N' -> (I, N), checked."""
    try:
        i, n = (int(v) for v in text.split("/"))
        shard([], i, n)
    except ValueError:
        raise ValueError(f"expected a shard as I/N with 0 <= I < N, got {text!r}") from None
    return i, n


@dataclass
class InferenceReport:
    """What `predict_images` did."""

    images: int = 0
    cached_before: int = 0
    predicted: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)

    def line(self) -> str:
        """One line for the log."""
        return (f"{self.images} images: {self.predicted} predicted, {self.cached_before} already cached, "
                f"{len(self.failures)} unreadable")


@dataclass
class _Prepared:
    path: Path
    image_id: str
    x: np.ndarray | None = None  # float32 (H, W, 3) network input, resized
    error: str | None = None


def _prepare(path: Path, min_side: int, max_side: int) -> _Prepared:
    iid = image_id(path)
    try:
        x, _ = prepare_image(path, min_side=min_side, max_side=max_side)
    except Exception as exc:  # any unreadable image is listed and skipped, never the end of the run
        return _Prepared(path, iid, error=f"{type(exc).__name__}: {exc}")
    return _Prepared(path, iid, x=x)


def normalise_detections(boxes: np.ndarray, labels: np.ndarray, height: int, width: int) -> np.ndarray:
    """Boxes in resized-image pixels (..., N, 4) -> normalised by that image's width and height, as float32.

    Padding entries (label -1) stay -1.
    """
    out = np.asarray(boxes, dtype=np.float32).copy()
    out[..., 0::2] /= np.float32(width)
    out[..., 1::2] /= np.float32(height)
    out[np.asarray(labels) < 0] = -1
    return out


def predict_batch(model, x: np.ndarray, flip: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Detections of a batch of same-shaped network inputs `x` (B, H, W, 3), as the cache holds them per image.

    With flip each image and its mirrored copy go through the model in one call (rows 2i and 2i + 1). Returns
    boxes (B, R, N, 4) normalised by the input's width and height, scores (B, R, N), labels (B, R, N); R = 2
    with flip (row 1: the mirror's detections in its own coordinates), else 1.
    """
    if flip:
        x = np.stack([x, x[:, :, ::-1]], axis=1).reshape(-1, *x.shape[1:])
    boxes, scores, labels = (np.asarray(v) for v in model.predict_on_batch(x))
    rows = 2 if flip else 1
    height, width = x.shape[1:3]
    boxes = normalise_detections(boxes, labels, height, width)
    n = len(x) // rows
    return (boxes.reshape(n, rows, *boxes.shape[1:]), scores.reshape(n, rows, *scores.shape[1:]),
            labels.reshape(n, rows, *labels.shape[1:]))


def filter_settings(model) -> dict:
    """The detection filter of an inference model (FilterDetections' settings: thresholds, limit, NMS), which
    decides what its cache files hold; {} for a training model."""
    from oid_retinanet.model.retinanet import inference_settings

    return inference_settings(model).get("filter", {})


def model_num_classes(model) -> int:
    """Class count of a loaded RetinaNet model (its classification output's last axis)."""
    return int(model.get_layer("classification").output.shape[-1])


def _check_unique_ids(paths: Sequence[Path]) -> None:
    seen: dict[str, Path] = {}
    for p in paths:
        iid = image_id(p)
        if iid in seen:
            raise OIDInputError(f"ImageId {iid!r} also comes from {seen[iid]}: both would use one cache file", str(p))
        seen[iid] = p


def uncached(paths: Sequence[Path], cache_dir: str | os.PathLike) -> list[Path]:
    """The images of `paths` without a finished cache file in `cache_dir`: what a resumed run still predicts (one
    listing of the folder, not a file test per image: 99,999 test images)."""
    done = set(cache_ids(cache_dir))
    return [p for p in paths if image_id(p) not in done]


def predict_images(model, paths: Sequence[str | os.PathLike], cache_dir: str | os.PathLike, min_side: int,
                   max_side: int, flip: bool = True, batch_size: int = 1, workers: int = 2,
                   progress: bool | None = None, failures_file: bool = True) -> InferenceReport:
    """Predict every image of `paths` without a cache file in `cache_dir` and write its cache file.

    model: an inference model (`predict_on_batch` -> boxes (B, N, 4) in input pixels, scores, labels).
    flip: also predict the mirrored image (cache row 1). batch_size: images per model call (only images of the
    same resized shape share a call). workers: threads reading and preprocessing ahead of the model.
    progress: tqdm bar (None: only on a terminal). Unreadable images go to `<cache_dir>/failures.txt` (unless
    failures_file is False: a part of a run whose driver writes it, `predict.ray_inference`).
    """
    if batch_size < 1 or workers < 1:
        raise ValueError(f"batch_size and workers must be positive, got {batch_size}, {workers}")
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries_in(cache_dir)
    paths = [Path(p) for p in paths]
    _check_unique_ids(paths)
    report = InferenceReport(images=len(paths))
    todo = uncached(paths, cache_dir)
    report.cached_before = len(paths) - len(todo)
    log.info("%d images, %d already cached, %d to predict (sides %d/%d, flip %s)", len(paths), report.cached_before,
             len(todo), min_side, max_side, flip)

    def predict(batch: list[_Prepared]) -> None:
        boxes, scores, labels = predict_batch(model, np.stack([p.x for p in batch]), flip)
        for k, item in enumerate(batch):
            write_cache(cache_file(cache_dir, item.image_id), boxes[k], scores[k], labels[k])
        report.predicted += len(batch)
        bar.update(len(batch))

    prefetch = 2 * workers + batch_size
    pending: deque[Future] = deque()
    batch: list[_Prepared] = []
    bar = tqdm(total=len(todo), unit="img", desc="predicting", disable=None if progress is None else not progress)
    try:
        with (ThreadPoolExecutor(max_workers=workers, thread_name_prefix="read-image") as pool,
              contextlib.ExitStack() as stack):
            # Runs before the pool's exit, which then waits only for running reads, not for queued ones.
            stack.callback(pool.shutdown, wait=False, cancel_futures=True)
            queue = iter(todo)
            for p in queue:
                pending.append(pool.submit(_prepare, p, min_side, max_side))
                if len(pending) >= prefetch:
                    break
            while pending:
                item = pending.popleft().result()
                nxt = next(queue, None)
                if nxt is not None:
                    pending.append(pool.submit(_prepare, nxt, min_side, max_side))
                if item.error is not None:
                    log.warning("skipping %s: %s", item.path, item.error)
                    report.failures.append((str(item.path), item.error))
                    bar.update(1)
                    continue
                if batch and batch[0].x.shape != item.x.shape:
                    predict(batch)
                    batch = []
                batch.append(item)
                if len(batch) >= batch_size:
                    predict(batch)
                    batch = []
            if batch:
                predict(batch)
                batch = []
    finally:
        bar.close()
        if failures_file:
            write_failures(cache_dir, report.failures)
    log.info("%s", report.line())
    return report


def write_failures(cache_dir: str | os.PathLike, failures: Sequence[tuple[str, str]]) -> None:
    """`<cache_dir>/failures.txt`: one `path<TAB>reason` line per unreadable image (empty when none was)."""
    text = "".join(f"{p}\t{' '.join(reason.split())}\n" for p, reason in failures)
    atomic_write_text(Path(cache_dir) / FAILURES_FILE, text)


def _draw(image: np.ndarray, boxes: np.ndarray, captions: Sequence[str]) -> np.ndarray:
    import cv2

    out = image.copy()
    thick = max(1, round(min(out.shape[:2]) / 300))
    for b, caption in zip(boxes.astype(int), captions):
        cv2.rectangle(out, (int(b[0]), int(b[1])), (int(b[2]), int(b[3])), (0, 255, 0), thick)
        (tw, th), _ = cv2.getTextSize(caption, cv2.FONT_HERSHEY_PLAIN, 1, 1)
        y = max(int(b[1]), th + 2)
        cv2.rectangle(out, (int(b[0]), y - th - 2), (int(b[0]) + tw, y), (0, 0, 0), -1)
        cv2.putText(out, caption, (int(b[0]), y - 1), cv2.FONT_HERSHEY_PLAIN, 1, (255, 255, 255), 1)
    return out


def visualize(paths: Sequence[str | os.PathLike], cache_dir: str | os.PathLike, out_dir: str | os.PathLike, k: int,
              labels: Sequence[str] | Callable[[int], str], score_thr: float = VISUALIZE_SCORE_THR) -> list[Path]:
    """Draw the cached detections (row 0, score >= score_thr) of the first `k` cached images of `paths`.

    labels: the display name of each label index. Boxes are scaled back by the original image's size. Writes
    `<out_dir>/<ImageId>.jpg`; returns the files written.
    """
    import cv2

    name = labels if callable(labels) else (lambda i: labels[i])
    written: list[Path] = []
    for p in paths:
        if len(written) >= k:
            break
        path = cache_file(cache_dir, image_id(p))
        if not path.exists():
            continue
        cache = read_cache(path)
        try:
            image = read_image_bgr(p)
        except (OIDInputError, OSError) as exc:
            log.warning("cannot draw %s: %s", p, exc)
            continue
        keep = cache.scores[0] >= score_thr
        h, w = image.shape[:2]
        boxes = cache.boxes[0][keep] * np.array([w, h, w, h], dtype=np.float32)
        captions = [f"{name(int(lab))} {s:.3f}" for lab, s in zip(cache.labels[0][keep], cache.scores[0][keep])]
        out = Path(out_dir) / f"{image_id(p)}.jpg"
        with atomic_path(out) as tmp:
            tmp_jpg = tmp.with_name(tmp.name + ".jpg")  # cv2 picks the format by the extension
            try:
                if not cv2.imwrite(str(tmp_jpg), _draw(image, boxes, captions)):
                    raise OSError(f"cv2 could not write {out}")
                os.replace(tmp_jpg, tmp)
            finally:
                if tmp_jpg.exists():
                    tmp_jpg.unlink()
        written.append(out)
    return written
