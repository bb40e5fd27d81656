"""Download the original's released .h5 models and the ImageNet backbone files: resumable, size- and hash-checked.

`WEIGHT_FILES` is the table of what can be downloaded: ZFTurbo's release assets (2018 level 1, 443 classes, and
2019, 500 classes; training snapshots and converted inference models for ResNet50/101/152) and the ImageNet
ResNet files that keras-retinanet (fizyr's caffe conversion) and keras.applications fetch.

Exact byte sizes: GitHub's release metadata was not reachable when this table was written, so `size` is None
for every entry; the size the server announces (Content-Length, or the total of a Content-Range) is then the
one checked, and it must lie within 10% of the release table's rounded figure (`approx_mb`), which catches an
error page or a wrong file served under the right name. `checksum` ("md5:..." or "sha256:...") is set where
it is published: the md5 sums keras-retinanet and keras.applications check for the ImageNet files.

A download goes to `<file>.part` (an interrupted one resumes from there with an HTTP Range request) and is
renamed to its final name only when complete and checked, so a file under the final name is always whole.
Standard library only (urllib); no Keras import, so `--list` is instant.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import logging
import os
import re
import shutil
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from oid_retinanet.errors import OIDInputError

log = logging.getLogger(__name__)

RELEASE_URL = "https://github.com/ZFTurbo/Keras-RetinaNet-for-Open-Images-Challenge-2018/releases/download/"
FIZYR_IMAGENET_URL = "https://github.com/fizyr/keras-models/releases/download/v0.0.1/"
KERAS_IMAGENET_URL = "https://storage.googleapis.com/tensorflow/keras-applications/resnet/"

KIND_TRAINING = "training"
KIND_INFERENCE = "inference"
KIND_IMAGENET = "imagenet"
KINDS = (KIND_TRAINING, KIND_INFERENCE, KIND_IMAGENET)

PART_SUFFIX = ".part"
CHUNK_BYTES = 1 << 20
TIMEOUT_S = 60.0
RETRIES = 3
RETRY_WAIT_S = 2.0
# How far the announced size may stray from the table's rounded "NNN MB" (which may mean 10^6 or 2^20 bytes).
APPROX_TOLERANCE = 0.10


class DownloadError(OIDInputError):
    """A download that cannot go on: no network, an HTTP error, a size or checksum mismatch, a full disk."""


@dataclass(frozen=True)
class WeightFile:
    """One downloadable file.

    size: exact bytes, or None when not published (the server's announced size is checked instead).
    approx_mb: the rounded size the release page states, for the listing and a plausibility check.
    checksum: 'md5:<hex>' or 'sha256:<hex>', or None.
    classes: class count of a RetinaNet model (443 or 500); 1000 for the ImageNet classifiers.
    source: who published it ('zfturbo', 'fizyr', 'keras').
    """

    name: str
    filename: str
    url: str
    backbone: str
    year: int | None
    kind: str
    classes: int
    approx_mb: int | None
    size: int | None = None
    checksum: str | None = None
    source: str = "zfturbo"


def _release(backbone: str, year: int, tag: str, stem: str, training_mb: int, inference_mb: int) -> list[WeightFile]:
    classes = 443 if year == 2018 else 500
    return [
        WeightFile(f"{backbone}_{year}_{KIND_TRAINING}", f"{stem}.h5", f"{RELEASE_URL}{tag}/{stem}.h5", backbone,
                   year, KIND_TRAINING, classes, training_mb),
        WeightFile(f"{backbone}_{year}_{KIND_INFERENCE}", f"{stem}_converted.h5",
                   f"{RELEASE_URL}{tag}/{stem}_converted.h5", backbone, year, KIND_INFERENCE, classes, inference_mb),
    ]


def _imagenet(depth: int) -> list[WeightFile]:
    # md5 sums: keras-retinanet's models/resnet.py (download_imagenet) and keras.applications' resnet.py
    # (WEIGHTS_HASHES, the include_top=False file).
    fizyr_md5 = {50: "3e9f4e4f77bbe2c9bec13b53ee1c2319", 101: "05dc86924389e5b401a9ea0348a3213c",
                 152: "6ee11ef2b135592f8031058820bb9e71"}
    keras_md5 = {50: "4d473c1dd8becc155b73f8504c6f6626", 101: "88cf7a10940856eca736dc7b7e228a21",
                 152: "ee4c566cf9a93f14d82f913c2dc6dd0c"}
    fizyr_name = f"ResNet-{depth}-model.keras.h5"
    keras_name = f"resnet{depth}_weights_tf_dim_ordering_tf_kernels_notop.h5"
    return [
        WeightFile(f"resnet{depth}_imagenet_fizyr", fizyr_name, FIZYR_IMAGENET_URL + fizyr_name, f"resnet{depth}",
                   None, KIND_IMAGENET, 1000, None, checksum="md5:" + fizyr_md5[depth], source="fizyr"),
        WeightFile(f"resnet{depth}_imagenet_keras", keras_name, KERAS_IMAGENET_URL + keras_name, f"resnet{depth}",
                   None, KIND_IMAGENET, 1000, None, checksum="md5:" + keras_md5[depth], source="keras"),
    ]


# The release tables of the original's README (sizes as stated there, in MB).
WEIGHT_FILES: tuple[WeightFile, ...] = tuple(
    _release("resnet50", 2018, "v1.1", "retinanet_resnet50_level_1", 533, 178)
    + _release("resnet101", 2018, "v1.2", "retinanet_resnet101_level_1_v1.2", 739, 247)
    + _release("resnet152", 2018, "v1.2", "retinanet_resnet152_level_1_v1.2", 918, 308)
    + _release("resnet50", 2019, "v1.3", "retinanet_resnet50_500_classes_0.4594", 534, 178)
    + _release("resnet101", 2019, "v1.3", "retinanet_resnet101_500_classes_0.4986", 752, 251)
    + _release("resnet152", 2019, "v1.3", "retinanet_resnet152_500_classes_0.4991", 932, 312)
    + _imagenet(50) + _imagenet(101) + _imagenet(152)
)


def weight_file(name: str) -> WeightFile:
    """The table entry called `name` (or whose file name is `name`); OIDInputError when there is none."""
    for entry in WEIGHT_FILES:
        if name in (entry.name, entry.filename):
            return entry
    raise OIDInputError(f"unknown weights file {name!r}: expected one of {', '.join(e.name for e in WEIGHT_FILES)}")


def select_weight_files(backbones=None, years=None, kinds=None) -> list[WeightFile]:
    """Entries matching every given filter (None: any). backbones like 'resnet50'; kinds from KINDS."""
    return [e for e in WEIGHT_FILES
            if (not backbones or e.backbone in backbones) and (not years or e.year in years)
            and (not kinds or e.kind in kinds)]


def with_mirror(entry: WeightFile, base_url: str) -> WeightFile:
    """The same entry fetched from `base_url` + its file name (a local mirror, or a test server)."""
    return WeightFile(**{**entry.__dict__, "url": base_url.rstrip("/") + "/" + entry.filename})


def part_path(dest: str | os.PathLike) -> Path:
    """Where the unfinished download of `dest` is kept."""
    dest = Path(dest)
    return dest.with_name(dest.name + PART_SUFFIX)


def local_status(entry: WeightFile, directory: str | os.PathLike) -> tuple[str, int]:
    """('present', bytes), ('partial', bytes so far), ('wrong size', bytes) or ('absent', 0) in `directory`."""
    dest = Path(directory) / entry.filename
    if dest.is_file():
        size = dest.stat().st_size
        return ("wrong size" if entry.size is not None and size != entry.size else "present"), size
    part = part_path(dest)
    if part.is_file():
        return "partial", part.stat().st_size
    return "absent", 0


def format_size(n: int | None) -> str:
    """Bytes as '178.0 MB' (10^6), or '?' when unknown."""
    if n is None:
        return "?"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MB"
    if n >= 1000:
        return f"{n / 1e3:.1f} kB"
    return f"{n} B"


def _hash_file(path: Path, algorithm: str) -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(CHUNK_BYTES), b""):
            h.update(block)
    return h.hexdigest()


def checksum_problem(path: str | os.PathLike, checksum: str | None) -> str | None:
    """Why `path`'s digest differs from `checksum` ('md5:<hex>' / 'sha256:<hex>'), or None when it matches."""
    if not checksum:
        return None
    algorithm, _, expected = checksum.partition(":")
    actual = _hash_file(Path(path), algorithm)
    return None if actual == expected.lower() else f"{algorithm} mismatch: got {actual}, expected {expected}"


def verify_checksum(path: str | os.PathLike, checksum: str | None) -> None:
    """Raise DownloadError when `path`'s digest differs from `checksum`."""
    problem = checksum_problem(path, checksum)
    if problem:
        raise DownloadError(problem, path=str(path))


def _plausible(entry: WeightFile, total: int) -> bool:
    if entry.approx_mb is None:
        return True
    return entry.approx_mb * 1e6 * (1 - APPROX_TOLERANCE) <= total <= entry.approx_mb * 2**20 * (1 + APPROX_TOLERANCE)


_CONTENT_RANGE = re.compile(r"^bytes\s+(\d+)-(\d+)/(\d+|\*)$")
_CONTENT_RANGE_UNSATISFIED = re.compile(r"^bytes\s+\*/(\d+)$")


class _ConnectionLost(Exception):
    """The transfer stopped before the announced end (kept .part; a retry resumes)."""


def _open(url: str, offset: int, timeout: float):
    request = urllib.request.Request(url, headers={"User-Agent": "oid-retinanet"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416:
            return exc  # handled by the caller: the .part may already be complete
        raise DownloadError(f"HTTP {exc.code} {exc.reason}: {url}") from None
    except urllib.error.URLError as exc:
        host = urllib.parse.urlsplit(url).netloc
        raise DownloadError(f"cannot reach {host} ({_reason(exc.reason)}); check the network connection: {url}") \
            from None
    except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as exc:
        raise _ConnectionLost(_reason(exc)) from None


def _reason(reason) -> str:
    if isinstance(reason, BaseException):
        return reason.strerror if isinstance(reason, OSError) and reason.strerror else (str(reason) or
                                                                                         type(reason).__name__)
    return str(reason)


def _copy_stream(response, fh, bar, remaining: int | None) -> tuple[int, str | None]:
    """Copy the body into fh: (bytes written, why it stopped early or None). Stops at `remaining` bytes."""
    written = 0
    while remaining is None or written < remaining:
        want = CHUNK_BYTES if remaining is None else min(CHUNK_BYTES, remaining - written)
        try:
            block = response.read(want)
        except (TimeoutError, socket.timeout, ConnectionError, http.client.HTTPException) as exc:
            return written, _reason(exc)
        if not block:
            break
        fh.write(block)
        written += len(block)
        if bar is not None:
            bar.update(len(block))
    return written, None


def _check_total(entry: WeightFile, total: int | None, url: str) -> None:
    if total is None:
        return
    if entry.size is not None and total != entry.size:
        raise DownloadError(f"size mismatch: the server offers {total} bytes for {entry.filename}, "
                            f"expected {entry.size}: {url}")
    if entry.size is None and not _plausible(entry, total):
        raise DownloadError(f"size mismatch: the server offers {format_size(total)} for {entry.filename}, "
                            f"the release table says about {entry.approx_mb} MB: {url}")


def _check_disk(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise DownloadError(f"disk full: {format_size(needed)} still to download, {format_size(free)} free",
                            path=str(directory))


def _transfer_once(entry: WeightFile, part: Path, timeout: float, progress: bool) -> int | None:
    """One HTTP request continuing `part`; returns the file's total size when known, raises _ConnectionLost."""
    offset = part.stat().st_size if part.exists() else 0
    response = _open(entry.url, offset, timeout)
    status = response.status if hasattr(response, "status") else response.code
    headers = response.headers
    if status == 416:
        response.close()
        m = _CONTENT_RANGE_UNSATISFIED.match(headers.get("Content-Range", ""))
        total = int(m.group(1)) if m else None
        if total is not None and total == offset:
            _check_total(entry, total, entry.url)
            return total  # the .part already holds everything
        if not offset:
            raise DownloadError(f"HTTP 416 for a request from byte 0: {entry.url}")
        log.info("%s: %s does not fit the server's file; downloading from the start", entry.url, part.name)
        part.unlink()  # longer than the file: from another file or another version of it
        return _transfer_once(entry, part, timeout, progress)
    with response:
        length = headers.get("Content-Length")
        length = int(length) if length is not None and length.isdigit() else None
        if status == 206:
            m = _CONTENT_RANGE.match(headers.get("Content-Range", ""))
            if not m or int(m.group(1)) != offset:
                raise DownloadError(f"the server answered a request from byte {offset} with "
                                    f"Content-Range {headers.get('Content-Range')!r}: {entry.url}")
            total = int(m.group(3)) if m.group(3) != "*" else None
            mode = "ab"
        else:
            if offset:
                log.info("%s: the server ignored the range request; downloading from the start", entry.url)
            offset, total, mode = 0, length, "wb"
        _check_total(entry, total, entry.url)
        remaining = (total - offset) if total is not None else length
        if remaining is not None:
            _check_disk(part.parent, remaining)
        bar = tqdm(total=total, initial=offset, unit="B", unit_scale=True, desc=entry.filename,
                   disable=not progress, leave=False)
        try:
            with open(part, mode) as fh:
                written, broken = _copy_stream(response, fh, bar, remaining)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise DownloadError("disk full while writing", path=str(part)) from None
            raise
        finally:
            bar.close()
    have = offset + written
    if broken is not None or (remaining is not None and written < remaining):
        raise _ConnectionLost(f"connection lost after {have} of {total if total is not None else '?'} bytes"
                              + (f": {broken}" if broken else ""))
    return total if total is not None else have


def download(entry: WeightFile, directory: str | os.PathLike, progress: bool = True, retries: int = RETRIES,
             timeout: float = TIMEOUT_S, retry_wait: float = RETRY_WAIT_S) -> Path:
    """Download `entry` into `directory` (created if needed) and return the final path.

    A file already there under its final name is kept (its size is checked when the table knows it). Otherwise
    the transfer goes to `<name>.part`, resumes from it (HTTP Range) on a rerun and after each of up to
    `retries` dropped connections, and is renamed when its size (and checksum, where known) is right.
    Raises DownloadError with a one-line message for no network, HTTP errors, size or checksum mismatch and a
    full disk.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dest = directory / entry.filename
    state, size = local_status(entry, directory)
    if state == "present":
        log.info("%s: already present (%s)", dest, format_size(size))
        return dest
    if state == "wrong size":
        raise DownloadError(f"already exists with {size} bytes, expected {entry.size}; delete it to download "
                            "again", path=str(dest))
    part = part_path(dest)
    attempt = 0
    while True:
        try:
            total = _transfer_once(entry, part, timeout, progress)
            break
        except _ConnectionLost as exc:
            attempt += 1
            if attempt > retries:
                have = part.stat().st_size if part.exists() else 0
                raise DownloadError(f"download interrupted ({exc}); {format_size(have)} kept in {part.name}, "
                                    "run again to resume", path=str(dest)) from None
            log.warning("%s: %s; resuming (retry %d of %d)", entry.filename, exc, attempt, retries)
            time.sleep(retry_wait * attempt)
    have = part.stat().st_size
    if have != total or (entry.size is not None and have != entry.size):
        part.unlink()
        raise DownloadError(f"size mismatch: downloaded {have} bytes, expected "
                            f"{entry.size if entry.size is not None else total}; the partial file was removed",
                            path=str(dest))
    problem = checksum_problem(part, entry.checksum)
    if problem:
        part.unlink()
        raise DownloadError(f"{problem}; the download was removed", path=str(dest))
    os.replace(part, dest)
    log.info("%s: downloaded (%s)", dest, format_size(have))
    return dest
