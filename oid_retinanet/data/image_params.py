"""Stage 2: image sizes and hashes, `{subset}_image_params.csv` (ZFTurbo's find_image_parameters.py).

One row per image, header `id,width,height,channel,size,md5`: id is the file name without its extension
(`abc.jpg` -> `abc`, as the original's `basename[:-4]`), width and height in pixels, channel the band count,
size the file's length in bytes, md5 the hex digest of its bytes. The training generator reads width and
height from it.

How we read an image, and where that differs from the original:
- Size and mode come from the image header only (PIL's lazy `Image.open`, never `.load()`), as pyvips did
  for the original when installed; its PIL and OpenCV fallbacks decoded every pixel. EXIF orientation is
  ignored, as it was by pyvips and `np.array(Image.open(f))`.
- Channel rule: the band count of PIL's mode (`len(img.getbands())`): 1 for L, I;16, I, F and 1; 2 for LA;
  3 for RGB, YCbCr, LAB, HSV; 4 for RGBA, RGBX and CMYK. A palette image ('P') counts as 3, or 4 when it
  has transparency, and 'PA' as 4: what pyvips, the original's first reader, reports for a palette PNG,
  whose palette it expands. (The original's PIL fallback gave a 2-D array for L and P images and crashed
  unpacking it.)
- Rows `width,height,channel` = `0,0,0` (size and md5 still written) for files no reader understands, as
  the original wrote, and also for truncated files, which the original usually reported at full size.
  Each such file is logged and listed, with the reason, in `{subset}_image_params_failures.txt` beside the
  CSV (one `path<TAB>reason` per line; the file is always written, empty when every image was fine).
  Files that cannot be opened or read (permissions, vanished, I/O errors) get `0,0,0`, their size if known
  and an empty md5; the original crashed on them.
- Truncation, found without decoding while the bytes stream through md5:
  JPEG (and MPO): complete when an end-of-image marker FF D9 follows the start of the first scan. The
  header is walked segment by segment (segments carry their lengths) to the first SOS, so an EXIF
  thumbnail's own FF D9 does not count; inside entropy-coded data every FF byte is followed by 00 or a
  restart marker, so FF D9 there can only be the real end. Any bytes may follow the EOI (padding, an
  appended MPF image): the image itself is whole. A file cut anywhere in its scan data has no FF D9 after
  the SOS and is flagged. The rule can only be fooled by a comment or table segment between progressive
  scans that happens to hold the bytes FF D9.
  PNG: complete when the IEND chunk (00 00 00 00 'IEND' AE 42 60 82) occurs; trailing bytes are allowed.
  Other formats: PIL's header is trusted.
- Files scanned: `*.jpg` directly in the folder and one level of subfolders below it (`*/*.jpg`), for every
  subset (the original used `train/*/*.jpg` and flat folders elsewhere; the Open Images layouts give the
  same files either way). Other extensions on request (`extensions=("jpg", "jpeg", "png")`), matched
  case-sensitively like the original's glob on Linux; names starting with '.' are skipped, as glob does.
  Two files with one image id (`a.jpg` and `a.png`, or one name in two subfolders) stop the scan with both
  paths named: the CSV would give that ImageID two rows (the original wrote both).
- Row order: sorted by the image's path relative to the folder (the original followed the file system's
  order); compare with the original's files as a multiset of rows.

Resuming: results are appended, one flushed line each, to `{csv}.partial` (columns path, id, width,
height, channel, size, md5, mtime_ns, problem) as workers return them. A new run over the same output
first reads that file, keeps its complete lines (a half-written last line is dropped) whose file still
has the same size and modification time, and scans only the rest (files that could not be read are
retried). When every image is done the CSV and the failures list are written under temporary names and
renamed, and the `.partial` is removed: a CSV under its final name is always complete.
"""

from __future__ import annotations

import csv
import hashlib
import io
import logging
import multiprocessing
import os
import re
import signal
import warnings
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import BinaryIO, NamedTuple

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path, read_rows, row_writer, scratch_folder, sorted_rows, write_rows

log = logging.getLogger(__name__)

HEADER = ("id", "width", "height", "channel", "size", "md5")
PARTIAL_HEADER = ("path", "id", "width", "height", "channel", "size", "md5", "mtime_ns", "problem")
CHUNK_SIZE = 1 << 20  # bytes per read while hashing; most Open Images files fit in one
DEFAULT_EXTENSIONS = ("jpg",)

# subset -> (root, folder under it): "dataset" is a00's DATASET_PATH, "input" its INPUT_PATH.
SUBSET_FOLDERS = {
    "2018": {"validation": ("dataset", "validation"), "train": ("dataset", "train"), "test": ("dataset", "test"),
             "kaggle_test": ("input", "kaggle/challenge2018_test")},
    "2019": {"validation": ("dataset", "validation"), "train": ("dataset", "train"), "test": ("dataset", "test"),
             "kaggle_test": ("input", "test")},
}
# The order the 2018 original's __main__ ran them.
SUBSETS_2018 = ("validation", "train", "test", "kaggle_test")

_JPEG_EOI = b"\xff\xd9"
_PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"
_MD5_RE = re.compile(r"[0-9a-f]{32}")


class FileParams(NamedTuple):
    """What one file gives: pixel size and band count (0 when unreadable or truncated), bytes, md5."""

    width: int
    height: int
    channel: int
    size: int
    md5: str        # "" when the file could not be opened
    mtime_ns: int
    problem: str    # "" when the image is readable and complete, else why its row is 0,0,0


@dataclass
class ScanSummary:
    """What one scan wrote, for the script's report."""

    subset: str
    csv_path: Path
    images: int = 0
    reused: int = 0           # rows taken from an earlier interrupted run's .partial
    failures: int = 0

    def line(self) -> str:
        """One line for the console."""
        reused = f", {self.reused} from an earlier partial run" if self.reused else ""
        return (f"{self.subset}: {self.images} images{reused}, {self.failures} unreadable or truncated "
                f"-> {self.csv_path}")


def channel_count(img: Image.Image) -> int:
    """Bands of an opened image: len(getbands()), a palette counted as RGB (3) or RGBA (4) as pyvips does."""
    if img.mode == "P":
        return 4 if "transparency" in img.info else 3
    if img.mode == "PA":
        return 4
    return len(img.getbands())


def jpeg_scan_start(f: BinaryIO | bytes) -> int | None:
    """Offset just past the first start-of-scan segment of a JPEG (file object read from 0, or bytes); None
    when there is none before the end of the data or an EOI comes first.

    Walks the marker segments from SOI by their lengths, so data inside APP segments (an EXIF thumbnail
    with its own FF D8 ... FF D9) is skipped, as decoders skip it.
    """
    if isinstance(f, bytes):
        f = io.BytesIO(f)
    size = f.seek(0, os.SEEK_END)
    f.seek(0)
    if f.read(2) != b"\xff\xd8":
        return None
    while True:
        byte = f.read(1)
        if not byte:
            return None
        if byte != b"\xff":  # junk between segments: decoders skip to the next FF
            continue
        byte = f.read(1)
        while byte == b"\xff":  # fill bytes
            byte = f.read(1)
        if not byte:
            return None
        marker = byte[0]
        if marker in (0x00, 0x01, 0xD8) or 0xD0 <= marker <= 0xD7:  # stand-alone markers
            continue
        length = f.read(2)
        if marker == 0xD9 or len(length) < 2:  # EOI before any scan, or the data ends in the header
            return None
        end = f.tell() - 2 + int.from_bytes(length, "big")
        if marker == 0xDA:
            return end if end <= size else None
        f.seek(end)


def _open_header(source: str | io.BytesIO) -> tuple[int, int, int, str]:
    """(width, height, channel, format) from the header only; raises whatever PIL raises for non-images."""
    # No pixel is decoded, so the decompression-bomb limit only rejects large but honest images.
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(source) as img:
                width, height = img.size
                return width, height, channel_count(img), img.format or ""
    finally:
        Image.MAX_IMAGE_PIXELS = limit


def _find_last(marker: bytes, chunk: bytes, tail: bytes, base: int) -> int:
    """Absolute offset of the last `marker` in tail + chunk (chunk starts at `base`), or -1."""
    k = chunk.rfind(marker)
    if k >= 0:
        return base + k
    if tail:
        joint = tail + chunk[:len(marker) - 1]
        k = joint.rfind(marker)
        if k >= 0:
            return base - len(tail) + k
    return -1


def read_image_params(path: str | os.PathLike, chunk_size: int = CHUNK_SIZE) -> FileParams:
    """Header size, band count, byte size and md5 of one file, reading its bytes once in `chunk_size` pieces.

    Never raises for a bad file: unreadable, non-image and truncated files give width = height = channel
    = 0 and say why in `problem` (see the module docstring for the truncation rules); a file that cannot
    be opened or read to its end also gets an empty md5.
    """
    try:
        with open(path, "rb") as f:
            return _read_open_file(f, os.fspath(path), chunk_size)
    except OSError as exc:
        try:
            st = os.stat(path)
            size, mtime = st.st_size, st.st_mtime_ns
        except OSError:
            size, mtime = 0, 0
        return FileParams(0, 0, 0, size, "", mtime, f"cannot read: {exc.strerror or exc}")


def _read_open_file(f: BinaryIO, path: str, chunk_size: int) -> FileParams:
    st = os.fstat(f.fileno())
    head = f.read(chunk_size)
    digest = hashlib.md5(head, usedforsecurity=False)
    whole = len(head) < chunk_size
    problem = ""
    try:
        width, height, channel, fmt = _open_header(io.BytesIO(head) if whole else path)
    except UnidentifiedImageError:
        width = height = channel = 0
        fmt, problem = "", "not a readable image: no image format recognised"
    except Exception as exc:  # PIL raises many kinds for headers it cannot parse
        width = height = channel = 0
        fmt, problem = "", f"not a readable image: {_one_line(exc)}"
    if fmt in ("JPEG", "MPO"):
        marker, after = _JPEG_EOI, jpeg_scan_start(io.BytesIO(head) if whole else f)
        f.seek(len(head))
        if after is None:  # PIL found a scan where the walk did not: any EOI after the SOI counts
            after = 2
    elif fmt == "PNG":
        marker, after = _PNG_IEND, 0
    else:
        marker, after = b"", 0
    last = _find_last(marker, head, b"", 0) if marker else -1
    keep = 1 - len(marker)  # the bytes a marker straddling two chunks can have in the first one
    offset, tail = len(head), head[keep:] if marker else b""
    while not whole:
        chunk = f.read(chunk_size)
        if not chunk:
            break
        digest.update(chunk)
        if marker:
            found = _find_last(marker, chunk, tail, offset)
            last = found if found >= 0 else last
            tail = (tail + chunk[keep:])[keep:]
        offset += len(chunk)
    if marker and not problem and last < after:
        what = "end-of-image marker after the scan data" if marker is _JPEG_EOI else "IEND chunk"
        problem = f"truncated {fmt}: no {what}"
    if problem:
        width = height = channel = 0
    return FileParams(width, height, channel, st.st_size, digest.hexdigest(), st.st_mtime_ns, problem)


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{type(exc).__name__}: {exc}".split())


def image_id(name: str, extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> str:
    """The original's id: the file name without its extension (`abc.jpg` -> `abc`)."""
    for ext in _dotted(extensions):
        if name.endswith(ext):
            return name[:-len(ext)]
    return os.path.splitext(name)[0]


def _dotted(extensions: Iterable[str]) -> tuple[str, ...]:
    return tuple("." + e.lstrip(".") for e in extensions)


def walk_images(folder: str | os.PathLike, extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> Iterator[str]:
    """Relative paths ('name.jpg' or 'sub/name.jpg', '/'-separated) of the images in `folder`, in the file
    system's order: files directly in the folder and in its immediate subfolders, with one of `extensions` (no dot
    needed, case-sensitive); names starting with '.' are skipped as glob skips them."""
    suffixes = _dotted(extensions)
    with os.scandir(folder) as top:
        for entry in top:
            if entry.name.startswith("."):
                continue
            if entry.is_dir():
                with os.scandir(entry.path) as sub:
                    yield from (f"{entry.name}/{e.name}" for e in sub
                                if e.name.endswith(suffixes) and not e.name.startswith(".") and e.is_file())
            elif entry.name.endswith(suffixes) and entry.is_file():
                yield entry.name


def list_images(folder: str | os.PathLike, extensions: Sequence[str] = DEFAULT_EXTENSIONS) -> list[str]:
    """`walk_images` sorted, as a list (scan_images sorts through files instead: see `sorted_rows`)."""
    return sorted(walk_images(folder, extensions))


def partial_path(csv_path: str | os.PathLike) -> Path:
    """Where the rows of an unfinished scan of `csv_path` are kept."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.name + ".partial")


def failures_path(csv_path: str | os.PathLike) -> Path:
    """`{subset}_image_params_failures.txt` for `{subset}_image_params.csv`."""
    csv_path = Path(csv_path)
    return csv_path.with_name(csv_path.stem + "_failures.txt")


def _params(row: Sequence[str]) -> FileParams:
    """The FileParams of a `.partial` row (path, id, then FileParams' fields as strings)."""
    width, height, channel, size, md5, mtime, problem = row[2:]
    return FileParams(int(width), int(height), int(channel), int(size), md5, int(mtime), problem)


def partial_rows(path: str | os.PathLike) -> Iterator[list[str]]:
    """The complete rows of a `.partial` file, in the file's order (later rows of one path win), as strings.

    A last line without its newline (the run was killed while writing it) and malformed lines are dropped;
    a file with another header gives nothing.
    """
    dropped = 0
    with open(path, encoding="utf-8", errors="surrogateescape", newline="\n") as f:
        rows = csv.reader(line for line in f if line.endswith("\n"))  # only the last line can lack it
        try:
            if next(rows, None) != list(PARTIAL_HEADER):
                log.warning("%s: not a partial image-params file, starting afresh", path)
                return
            for row in rows:
                try:
                    md5 = _params(row).md5  # ValueError: not 9 fields, or a number that is not one
                except ValueError:
                    md5 = "malformed"
                if md5 and not _MD5_RE.fullmatch(md5):
                    dropped += 1
                    continue
                yield row
        except csv.Error:  # cut inside a quoted field
            dropped += 1
    if dropped:
        log.warning("%s: %d malformed lines ignored", path, dropped)


def _latest(rows: Iterable[list[str]]) -> Iterator[list[str]]:
    """The last row of each run of rows with one path (rows sorted stably by path: the last is the latest)."""
    for _, same in groupby(rows, key=itemgetter(0)):
        yield deque(same, maxlen=1)[0]


def _still_valid(folder: str, rel: str, params: FileParams) -> bool:
    if not params.md5:  # could not be read last time: try again
        return False
    try:
        st = os.stat(os.path.join(folder, rel))
    except OSError:
        return False
    return st.st_size == params.size and st.st_mtime_ns == params.mtime_ns


def _scan_one(path: str) -> tuple[str, FileParams]:
    return path, read_image_params(path)


def _ignore_sigint() -> None:
    # Ctrl-C goes to the parent, which keeps the .partial and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _results(paths: Iterable[str], workers: int) -> Iterator[tuple[str, FileParams]]:
    """(path, params) of `paths`, in their order (the workers read ahead)."""
    if workers <= 1:
        yield from map(_scan_one, paths)
        return
    with multiprocessing.get_context().Pool(workers, initializer=_ignore_sigint) as pool:
        yield from pool.imap(_scan_one, paths, chunksize=16)


def _check_unique_ids(folder: str, rels: Iterable[str], extensions: Sequence[str]) -> None:
    """OIDInputError when two files give one ImageID (`a.jpg` and `a.png`, or `a.jpg` in two subfolders): found by
    sorting the (id, path) pairs through files (`sorted_rows`), so memory does not grow with the listing."""
    pairs = sorted_rows((image_id(r.rsplit("/", 1)[-1], extensions), r) for r in rels)
    shared = (group for group in (list(g) for _, g in groupby(pairs, key=itemgetter(0))) if len(group) > 1)
    first = next(shared, None)
    if first is None:
        return
    # two rows with one ImageID would give later stages two sizes for one image (stage 4 refuses the same)
    more = sum(1 for _ in shared)
    more = f" ({more} more ids are shared)" if more else ""
    raise OIDInputError(f"image id {first[0][0]} names {len(first)} files: {', '.join(r for _, r in first)}{more}; "
                        "keep one, or scan one extension (--extensions) or folder (--images) at a time", path=folder)


def _plan(folder: str, listing: Path, earlier: Iterator[list[str]], plan: Path, partial) -> int:
    """Write `plan`: for each image of the sorted `listing`, in its order, the row an earlier run wrote when the
    file has not changed since (also written to the new `partial`), else only its path (to be scanned). `earlier`:
    that run's rows sorted by path, one a path. Returns how many rows were taken."""
    taken = 0
    row = next(earlier, None)
    with open(plan, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        out = row_writer(f)
        for (rel,) in read_rows(listing):
            while row is not None and row[0] < rel:
                row = next(earlier, None)
            if row is not None and row[0] == rel and _still_valid(folder, rel, _params(row)):
                out.writerow(row)
                partial.writerow(row)
                taken += 1
            else:
                out.writerow((rel,))
    return taken


def scan_images(folder: str | os.PathLike, csv_path: str | os.PathLike, subset: str | None = None,
                workers: int | None = None, extensions: Sequence[str] = DEFAULT_EXTENSIONS,
                progress: bool | None = None) -> ScanSummary:
    """Write `csv_path` (id,width,height,channel,size,md5) for every image under `folder`, resuming if possible.

    Memory does not grow with the images: the listing is sorted through files (`sorted_rows`) into a temporary
    folder (TMPDIR; about 100 bytes of disk a file, twice that when resuming: 0.2 GB for 1,743,042 images), an
    earlier run's `.partial` rows likewise, and each image's row streams to the `.partial` file (what a resumed
    run keeps) and, in the listing's order, to the CSV's temporary file. workers: processes (default
    os.cpu_count(); 1 scans in this process). progress: tqdm bar (None: only on a terminal). Raises
    OIDInputError when `folder` is not a folder.
    """
    folder = os.fspath(folder)
    csv_path = Path(csv_path)
    if not os.path.isdir(folder):
        raise OIDInputError("no such images folder", path=folder)
    subset = subset or csv_path.stem.removesuffix("_image_params")
    workers = (os.cpu_count() or 1) if workers is None else workers
    partial = partial_path(csv_path)
    with scratch_folder("oid-scan-") as work:
        listing, plan = work / "listing.csv", work / "plan.csv"
        images = write_rows(listing, sorted_rows((r,) for r in walk_images(folder, extensions)))
        if not images:
            log.warning("%s: no %s files in it or its subfolders", folder, "/".join(_dotted(extensions)))
        _check_unique_ids(folder, (r for r, in read_rows(listing)), extensions)

        # Rewrite the partial with the rows kept, then append each new row as it arrives.
        earlier = _latest(sorted_rows(partial_rows(partial), key=itemgetter(0))) if partial.exists() else iter(())
        with atomic_path(partial) as tmp, open(tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
            writer = row_writer(f)
            writer.writerow(PARTIAL_HEADER)
            reused = _plan(folder, listing, earlier, plan, writer)
        if reused:
            log.info("%s: resuming, %d of %d images done in %s", subset, reused, images, partial)
        summary = ScanSummary(subset, csv_path, images=images, reused=reused)

        failures = []
        with open(partial, "a", encoding="utf-8", errors="surrogateescape", newline="") as f, \
                atomic_path(csv_path) as out_tmp, \
                open(out_tmp, "w", encoding="utf-8", errors="surrogateescape", newline="") as out, \
                tqdm(total=images, initial=reused, desc=subset, unit="img", disable=_disabled(progress)) as bar:
            writer, rows = row_writer(f), csv.writer(out, lineterminator="\n")
            rows.writerow(HEADER)
            todo = (os.path.join(folder, row[0]) for row in read_rows(plan) if len(row) == 1)
            results = _results(todo, workers if images - reused > 1 else 1)
            try:
                for row in read_rows(plan):
                    rel = row[0]
                    if len(row) == 1:
                        _, params = next(results)
                        image = image_id(rel.rsplit("/", 1)[-1], extensions)
                        writer.writerow((rel, image, *params))
                        f.flush()
                        bar.update()
                    else:
                        image, params = row[1], _params(row)
                    rows.writerow((image, *params[:5]))
                    if params.problem:
                        failures.append((os.path.join(folder, rel), params.problem))
            except KeyboardInterrupt:
                log.warning("%s: interrupted after %d of %d images; run again to resume from %s", subset, bar.n,
                            images, partial)
                raise
            finally:
                results.close()

    for path, problem in failures:
        log.warning("%s: %s", path, problem)
    summary.failures = len(failures)
    with atomic_path(failures_path(csv_path)) as tmp:
        tmp.write_text("".join(f"{p}\t{why}\n" for p, why in failures), encoding="utf-8", errors="surrogateescape")
    partial.unlink()
    log.info("%s", summary.line())
    return summary


def _disabled(progress: bool | None) -> bool | None:
    return None if progress is None else not progress


def subset_folders(layout: str, dataset_path: str, input_path: str) -> dict[str, str]:
    """subset -> image folder of the 2018 or 2019 original, under the given dataset and input paths."""
    roots = {"dataset": dataset_path, "input": input_path}
    return {s: os.path.join(roots[root], sub) for s, (root, sub) in SUBSET_FOLDERS[layout].items()}


def scan_subsets(folders: dict[str, str], output_path: str | os.PathLike, workers: int | None = None,
                 extensions: Sequence[str] = DEFAULT_EXTENSIONS, progress: bool | None = None) -> list[ScanSummary]:
    """Scan each subset's folder into output_path/{subset}_image_params.csv, skipping absent folders.

    Raises OIDInputError when none of the folders exists.
    """
    summaries = []
    for subset, folder in folders.items():
        if not os.path.isdir(folder):
            log.info("%s: skipped, no folder %s", subset, folder)
            continue
        csv_path = Path(output_path) / f"{subset}_image_params.csv"
        summaries.append(scan_images(folder, csv_path, subset, workers, extensions, progress))
    if not summaries:
        raise OIDInputError("no image folder found for " + ", ".join(f"{s} ({f})" for s, f in folders.items()))
    return summaries
