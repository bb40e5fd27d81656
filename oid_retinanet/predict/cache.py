"""The per-image prediction cache of stage 4: one `<ImageId>.npz` per image in a cache folder.

The original (ZFTurbo's `get_retinanet_predictions_for_files`) pickled, per image, the model's output for a
batch of two: the image and its mirrored copy. We keep the same arrays in an uncompressed `.npz`
(`numpy.savez`, no pickle) with three members:

- `boxes`  float32 (R, N, 4): x1, y1, x2, y2 normalised by the resized image's width and height (not
  clipped: values slightly outside [0, 1] occur). R = 2: row 0 is the image, row 1 its mirrored copy, in the
  mirrored image's own coordinates (the merge maps them back with x1' = 1 - x2, x2' = 1 - x1). R = 1 when
  inference ran without flip.
- `scores` float32 (R, N): each row sorted by score, highest first.
- `labels` int32 (R, N): class index into the model's label list.

N is the model's detection limit (300 for the released models); unused entries are padding with score -1,
label -1 and box -1, always after the real detections. float64 boxes and scores are accepted on reading
and kept as they are. Files are written under a temporary name and renamed, so a file under its final name
is always complete; the temporary names do not end in `.npz` and are never read as caches.

The folder also holds `classes.csv` (MID,DisplayName per line, in label order): the class list of the model
that wrote it, so that the stages reading the folder name its label indices right without being told, and a
second model with another class list cannot write into the same folder.

`settings.json` records everything else the cache files depend on: the cache format (CACHE_FORMAT), the
weights file (its SHA-256; the name only for people), the sides, flip and the model's detection filter. A
run with other settings stops before predicting, naming each difference; `--overwrite-cache` empties the
folder and starts it afresh. A folder written before settings were recorded is taken as it is.

The recorded fixtures pack many images into one file (`ids` (n,), `boxes` (n, R, N, 4), `scores` (n, R, N),
`labels` (n, R, N)); `read_packed` and `unpack_to_dir` read that layout.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import struct
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path, check_settings, remove_stale_temporaries_in
from oid_retinanet.oid.classes import (
    CLASSES_FILE,
    ClassList,
    class_list_difference,
    read_class_descriptions,
    write_class_descriptions,
)

CACHE_SUFFIX = ".npz"
MEMBERS = ("boxes", "scores", "labels")
SETTINGS_FILE = "settings.json"  # what else the predictions depend on
FAILURES_FILE = "failures.txt"  # the images stage 4 could not read
CACHE_FORMAT = 1  # raise when what a cache file holds, or how it is computed, changes
log = logging.getLogger(__name__)
_NPY_HEADER = re.compile(r"\{'descr': '([<>|=]?[a-zA-Z]\d*)', 'fortran_order': False, 'shape': \(([\d, ]*)\), *\}")


@dataclass
class ImageCache:
    """One image's cached detections: `boxes` (R, N, 4), `scores` (R, N), `labels` (R, N); see the module doc."""

    boxes: np.ndarray
    scores: np.ndarray
    labels: np.ndarray

    @property
    def rows(self) -> int:
        """1 (the image) or 2 (the image and its mirrored copy)."""
        return self.boxes.shape[0]


def cache_folder_name(model: str) -> str:
    """The default cache folder of a model (stage 4: its weights file's stem; stage 6's defaults: the original's
    `level_K_resnetN`): `cache_retinanet_<model>`."""
    return f"cache_retinanet_{model}"


def cache_file(cache_dir: str | os.PathLike, image_id: str) -> Path:
    """The cache file of `image_id` in `cache_dir`."""
    return Path(cache_dir) / f"{image_id}{CACHE_SUFFIX}"


def check_arrays(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, source: str,
                 n_classes: int | None = None, packed: bool = False) -> None:
    """Raise OIDInputError naming `source` unless the arrays have the cache's shapes and types.

    n_classes: also check every label is padding (-1) or a class index below it. packed: the arrays carry a
    leading image axis (the fixtures' layout).
    """
    lead = boxes.shape[:1] if packed else ()
    what = "(n, R, N, 4)" if packed else "(R, N, 4)"
    if boxes.ndim != 3 + packed or boxes.shape[-1] != 4 or boxes.shape[packed] not in (1, 2):
        raise OIDInputError(f"boxes have shape {boxes.shape}, expected {what} with R 1 or 2", source)
    if scores.shape != boxes.shape[:-1] or labels.shape != boxes.shape[:-1]:
        raise OIDInputError(f"scores {scores.shape} and labels {labels.shape} do not match boxes {boxes.shape} "
                            f"(expected {lead + boxes.shape[packed:-1]})", source)
    if boxes.dtype.kind != "f" or scores.dtype.kind != "f":
        raise OIDInputError(f"boxes ({boxes.dtype}) and scores ({scores.dtype}) must be floating point", source)
    if labels.dtype.kind not in "iu":
        raise OIDInputError(f"labels ({labels.dtype}) must be integers", source)
    if not (np.isfinite(boxes).all() and np.isfinite(scores).all()):
        raise OIDInputError("boxes or scores hold NaN or infinity", source)
    if labels.size and labels.min() < -1:
        raise OIDInputError(f"label {int(labels.min())} is negative (only -1 marks padding)", source)
    if n_classes is not None and labels.size and labels.max() >= n_classes:
        raise OIDInputError(f"label {int(labels.max())} is out of range for a list of {n_classes} classes", source)


def write_cache(path: str | os.PathLike, boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray) -> None:
    """Write one image's cache file atomically (boxes float32 (R, N, 4), scores float32 (R, N), labels int32)."""
    boxes = np.asarray(boxes, dtype=np.float32)
    scores = np.asarray(scores, dtype=np.float32)
    labels = np.asarray(labels, dtype=np.int32)
    check_arrays(boxes, scores, labels, str(path))
    with atomic_path(path, clean=False) as tmp, open(tmp, "wb") as f:  # callers clean the folder once
        np.savez(f, boxes=boxes, scores=scores, labels=labels)


def _parse_stored_npz(data: bytes) -> dict[str, np.ndarray] | None:
    """The arrays of an uncompressed .npz as numpy.savez writes it, read straight from its bytes (np.load
    costs some 150 us a file in zipfile and header parsing), CRCs checked. None for anything else: the
    caller then uses np.load, which reads every valid file and raises on broken ones."""
    try:
        return _parse_members(data)
    except (struct.error, ValueError, TypeError, IndexError):
        return None


def _parse_members(data: bytes) -> dict[str, np.ndarray] | None:
    out: dict[str, np.ndarray] = {}
    pos = 0
    while data.startswith(b"PK\x03\x04", pos):
        flags, method = struct.unpack_from("<HH", data, pos + 6)
        crc, size = struct.unpack_from("<II", data, pos + 14)
        name_len, extra_len = struct.unpack_from("<HH", data, pos + 26)
        if method != 0 or flags & 0x08:
            return None
        name = data[pos + 30:pos + 30 + name_len].decode("utf-8", "replace")
        extra = pos + 30 + name_len
        start = extra + extra_len
        if size == 0xFFFFFFFF:  # zip64: the real size is in the extra field (tag 1: sizes, 8 bytes each)
            if extra_len < 20 or struct.unpack_from("<HH", data, extra) != (1, 16):
                return None
            size, = struct.unpack_from("<Q", data, extra + 12)
        member = data[start:start + size]
        if len(member) != size or not member.startswith(b"\x93NUMPY") or not name.endswith(".npy"):
            return None
        if zlib.crc32(member) != crc:  # as zipfile checks
            return None
        if member[6] == 1:
            header_len, = struct.unpack_from("<H", member, 8)
            offset = 10
        else:
            header_len, = struct.unpack_from("<I", member, 8)
            offset = 12
        match = _NPY_HEADER.match(member[offset:offset + header_len].decode("latin1"))
        if match is None:
            return None
        dtype = np.dtype(match.group(1))
        shape = tuple(int(v) for v in match.group(2).replace(",", " ").split())
        count = int(np.prod(shape, dtype=np.int64))
        offset += header_len
        if dtype.hasobject or len(member) - offset != count * dtype.itemsize:
            return None
        out[name[:-4]] = np.frombuffer(member, dtype=dtype, count=count, offset=offset).reshape(shape)
        pos = start + size
    return out if out else None


def read_cache(path: str | os.PathLike, n_classes: int | None = None) -> ImageCache:
    """Read and check one cache file; anything unreadable or misshapen raises OIDInputError naming the file.

    The arrays may be read-only views of the file's bytes.
    """
    source = str(path)
    with open(path, "rb") as f:
        data = f.read()
    arrays = _parse_stored_npz(data)
    if arrays is None or any(m not in arrays for m in MEMBERS):
        arrays = _load_npz(source)
    boxes, scores, labels = (arrays[m] for m in MEMBERS)
    check_arrays(boxes, scores, labels, source, n_classes)
    return ImageCache(boxes, scores, labels)


def _load_npz(source: str) -> dict[str, np.ndarray]:
    try:
        with np.load(source, allow_pickle=False) as data:
            missing = [m for m in MEMBERS if m not in data.files]
            if missing:
                raise OIDInputError(f"not a prediction cache: no {', '.join(missing)} "
                                    f"(has {', '.join(data.files) or 'nothing'})", source)
            return {m: data[m] for m in MEMBERS}
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError) as exc:
        if isinstance(exc, OIDInputError):
            raise
        raise OIDInputError(f"not a readable prediction cache ({type(exc).__name__}: {exc})", source) from None


def cache_ids(cache_dir: str | os.PathLike) -> list[str]:
    """ImageIds of the finished cache files in `cache_dir`, sorted."""
    folder = Path(cache_dir)
    if not folder.is_dir():
        raise OIDInputError("cache folder not found", str(folder))
    n = len(CACHE_SUFFIX)
    return sorted(e.name[:-n] for e in os.scandir(folder)
                  if e.name.endswith(CACHE_SUFFIX) and not e.name.startswith(".") and e.is_file())


def iter_cache_dir(cache_dir: str | os.PathLike, ids: Iterable[str] | None = None,
                   n_classes: int | None = None) -> Iterator[tuple[str, ImageCache]]:
    """Yield (ImageId, cache) for `ids` (default: every cache file in the folder, sorted by ImageId)."""
    for image_id in cache_ids(cache_dir) if ids is None else ids:
        yield image_id, read_cache(cache_file(cache_dir, image_id), n_classes)


def recorded_classes(cache_dir: str | os.PathLike) -> ClassList | None:
    """The class list recorded in a cache folder, or None (a folder written before it was recorded)."""
    path = Path(cache_dir) / CLASSES_FILE
    return read_class_descriptions(str(path), any_ids=True) if path.is_file() else None


def check_classes(cache_dir: str | os.PathLike, labels: ClassList) -> None:
    """Raise OIDInputError unless the folder's recorded class list (if any) has the MIDs of `labels`, in order."""
    recorded = recorded_classes(cache_dir)
    detail = None if recorded is None else class_list_difference(recorded, labels)
    if detail is None:
        return
    raise OIDInputError(f"this cache folder holds predictions of another class list: {detail}; use another cache "
                        f"folder, or the class list it was written with", str(Path(cache_dir) / CLASSES_FILE))


def record_classes(cache_dir: str | os.PathLike, labels: ClassList) -> None:
    """Record `labels` as the cache folder's class list (creating the folder), or check the one recorded there."""
    check_classes(cache_dir, labels)
    path = Path(cache_dir) / CLASSES_FILE
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        write_class_descriptions(str(path), zip(labels.mids, labels.names))


def file_sha256(path: str | os.PathLike) -> str:
    """SHA-256 of a file (about a second for a 440 MB snapshot)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def record_settings(cache_dir: str | os.PathLike, settings: dict, overwrite: bool = False) -> None:
    """Record what the folder's predictions depend on (`settings`, JSON values; CACHE_FORMAT is added), or
    check them against the recorded ones: OIDInputError naming every difference. Keys ending in `_name` are for
    people and not compared. overwrite: empty the folder of predictions first (cache files, classes.csv,
    failures.txt, the drawn images) and record these settings."""
    folder = Path(cache_dir)
    path = folder / SETTINGS_FILE
    settings = {"format": CACHE_FORMAT, **settings}
    if overwrite and folder.is_dir():
        for image_id in cache_ids(folder):
            cache_file(folder, image_id).unlink()
        for name in (CLASSES_FILE, FAILURES_FILE, SETTINGS_FILE):
            (folder / name).unlink(missing_ok=True)
        shutil.rmtree(folder / "visualize", ignore_errors=True)
        log.info("%s: emptied (--overwrite-cache)", folder)
    had_predictions = folder.is_dir() and bool(cache_ids(folder))
    if check_settings(path, settings, "run with the recorded settings, use another --cache-dir, or --overwrite-cache "
                                      "to start it afresh") and had_predictions:
        log.warning("%s holds predictions of an earlier version, which recorded no settings: this run's are "
                    "recorded now and the folder's are assumed to be the same", folder)


def caches_classes(cache_dirs: Iterable[str | os.PathLike]) -> ClassList | None:
    """The class list recorded in the cache folders (None if none records one); folders that disagree are an error."""
    found = [(Path(d), c) for d in cache_dirs if (c := recorded_classes(d)) is not None]
    for folder, classes in found[1:]:
        check_classes(folder, found[0][1])
    return found[0][1] if found else None


def read_packed(path: str | os.PathLike) -> tuple[list[str], np.ndarray, np.ndarray, np.ndarray]:
    """Read a packed cache file (the fixtures' layout): ids, boxes (n, R, N, 4), scores, labels (n, R, N)."""
    source = str(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [m for m in ("ids", *MEMBERS) if m not in data.files]
            if missing:
                raise OIDInputError(f"not a packed prediction cache: no {', '.join(missing)}", source)
            ids, boxes, scores, labels = data["ids"], data["boxes"], data["scores"], data["labels"]
    except (zipfile.BadZipFile, EOFError, ValueError, KeyError) as exc:
        if isinstance(exc, OIDInputError):
            raise
        raise OIDInputError(f"not a readable packed prediction cache ({type(exc).__name__}: {exc})",
                            source) from None
    if ids.ndim != 1 or len(boxes) != len(ids):
        raise OIDInputError(f"ids {ids.shape} and boxes {boxes.shape} do not match (expected (n,) and "
                            f"(n, R, N, 4))", source)
    check_arrays(boxes, scores, labels, source, packed=True)
    return [str(i) for i in ids], boxes, scores, labels


def unpack_to_dir(packed: str | os.PathLike, cache_dir: str | os.PathLike) -> list[str]:
    """Write every image of a packed cache file as its own cache file in `cache_dir`; returns the ImageIds."""
    ids, boxes, scores, labels = read_packed(packed)
    Path(cache_dir).mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries_in(cache_dir)
    for n, image_id in enumerate(ids):
        write_cache(cache_file(cache_dir, image_id), boxes[n], scores[n], labels[n])
    return ids
