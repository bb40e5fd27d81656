"""Move, copy or shrink the images of one or more folders into another, in parallel and resumably.

gujingxiao's labelProcess/resize_move_images.py moved every entry of one folder (sub-folders too) into
another with shutil.move, one at a time, printing a count every 1000. Here:
- plain files only; sub-folders are left where they are and counted in the log;
- a name already present at the destination is skipped (a rerun resumes; shutil.move would have replaced
  it), the source is left in place;
- every file reaches its final name complete: a move within one file system is a rename, anything else
  (a copy, a move across file systems, a resized image) is written under a temporary name and renamed;
- with max_side, images whose longer side is larger are shrunk to it (never enlarged) and re-encoded in the
  format their extension names (JPEG at `quality`, PNG stays PNG), EXIF and ICC profile kept; smaller ones
  are copied (or moved) byte for byte;
- a file that cannot be read or written is logged and returned as a failure; the others go on;
- the destination records the resize settings (SETTINGS_FILE): a rerun with others stops, naming them.
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import errno
import logging
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path, check_settings, is_temporary, remove_stale_temporaries_in

log = logging.getLogger(__name__)

SETTINGS_FILE = ".resize_move_settings.json"  # what the destination's resized files were made with
STATUSES = ("moved", "copied", "resized", "skipped", "failed")


@dataclass(frozen=True)
class Task:
    """One file to transfer."""

    src: str
    dst: str


@dataclass(frozen=True)
class Result:
    """What happened to one file: status is one of STATUSES; detail says why for 'failed' and 'skipped'."""

    src: str
    status: str
    detail: str = ""


@dataclass
class TransferSummary:
    """Counts per status, and the failures as (source path, reason)."""

    counts: Counter = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)

    def add(self, result: Result) -> None:
        self.counts[result.status] += 1
        if result.status == "failed":
            self.failures.append((result.src, result.detail))

    def line(self) -> str:
        return ", ".join(f"{self.counts[s]} {s}" for s in STATUSES)


def target_size(width: int, height: int, max_side: int | None) -> tuple[int, int]:
    """(width, height) scaled so the longer side is at most max_side, aspect ratio kept, never enlarged.

    The longer side becomes exactly max_side, the other is rounded (at least 1): 1000x500 at 400 -> 400x200.
    """
    if max_side is None or max(width, height) <= max_side:
        return width, height
    if max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    if width >= height:
        return max_side, max(1, round(height * max_side / width))
    return max(1, round(width * max_side / height)), max_side


def _copy_atomic(src: str, dst: str) -> None:
    with atomic_path(dst, clean=False) as tmp:  # plan_transfers cleaned the folder once
        shutil.copy2(src, tmp)


def _move(src: str, dst: str) -> None:
    try:
        os.rename(src, dst)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _copy_atomic(src, dst)  # across file systems: copy whole, then remove the source
        os.remove(src)


def _save_format(path: str, fallback: str | None) -> str:
    from PIL import Image

    fmt = Image.registered_extensions().get(os.path.splitext(path)[1].lower(), fallback)
    if fmt is None:
        raise ValueError("no image format for this file name")
    return "JPEG" if fmt == "MPO" else fmt


def resize_image(src: str, dst: str, max_side: int, quality: int = 95) -> bool:
    """Write `src` shrunk to max_side (see target_size) to `dst` under a temporary name, renamed when
    complete. Returns False, writing nothing, when it needs no shrinking."""
    from PIL import Image

    with Image.open(src) as im:
        size = target_size(im.width, im.height, max_side)
        if size == im.size:
            return False
        fmt = _save_format(dst, im.format)
        info = dict(im.info)
        # decode JPEGs at a reduced scale that is still at least twice the target, as Image.thumbnail does
        im.draft(None, (size[0] * 2, size[1] * 2))
        small = im.resize(size, Image.Resampling.LANCZOS)
    options: dict = {}
    if info.get("icc_profile"):
        options["icc_profile"] = info["icc_profile"]
    if fmt == "JPEG":
        options["quality"] = quality
        if info.get("exif"):
            options["exif"] = info["exif"]
    with atomic_path(dst, clean=False) as tmp:
        small.save(tmp, format=fmt, **options)
    return True


def transfer_one(task: Task, move: bool, max_side: int | None = None, quality: int = 95) -> Result:
    """Move or copy one file, shrinking it first with max_side; any error becomes a 'failed' Result."""
    try:
        if os.path.exists(task.dst):
            return Result(task.src, "skipped", "present at the destination")
        if max_side is not None and resize_image(task.src, task.dst, max_side, quality):
            if move:
                os.remove(task.src)
            return Result(task.src, "resized")
        if move:
            _move(task.src, task.dst)
            return Result(task.src, "moved")
        _copy_atomic(task.src, task.dst)
        return Result(task.src, "copied")
    except Exception as exc:  # one bad file must not stop the others
        return Result(task.src, "failed", f"{type(exc).__name__}: {exc}")


def _transfer_batch(tasks: Sequence[Task], move: bool, max_side: int | None, quality: int) -> list[Result]:
    return [transfer_one(t, move, max_side, quality) for t in tasks]


def plan_transfers(sources: Sequence[str], dst: str) -> tuple[list[Task], list[Result]]:
    """(tasks, skipped): one task per plain file of the source folders, in name order; names present at the
    destination, or taken by an earlier source, are skipped up front."""
    dst_real = os.path.realpath(dst)
    remove_stale_temporaries_in(dst)  # once: each file is then written without a listing of its own
    present = set(os.listdir(dst)) if os.path.isdir(dst) else set()
    tasks: list[Task] = []
    skipped: list[Result] = []
    claimed: dict[str, str] = {}
    for src in sources:
        if os.path.realpath(src) == dst_real:
            raise OIDInputError("source and destination are the same folder", src)
        folders = 0
        with os.scandir(src) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if not entry.is_file():
                folders += entry.is_dir()
                continue
            if is_temporary(entry.name) or entry.name == SETTINGS_FILE:
                continue
            if entry.name in present:
                skipped.append(Result(entry.path, "skipped", "present at the destination"))
            elif entry.name in claimed:
                skipped.append(Result(entry.path, "skipped", f"name taken by {claimed[entry.name]}"))
            else:
                claimed[entry.name] = entry.path
                tasks.append(Task(entry.path, os.path.join(dst, entry.name)))
        if folders:
            log.warning("%s: %d sub-folder(s) left in place (give them as sources to take their files)", src,
                        folders)
    return tasks, skipped


def _batches(tasks: Sequence[Task], size: int) -> Iterator[Sequence[Task]]:
    for i in range(0, len(tasks), size):
        yield tasks[i:i + size]


def transfer_images(sources: Sequence[str], dst: str, move: bool, max_side: int | None = None,
                    quality: int = 95, workers: int | None = None, batch_size: int = 16,
                    progress: bool = True) -> TransferSummary:
    """Move (move=True) or copy every plain file of the `sources` folders into `dst`, shrinking images whose
    longer side exceeds max_side. Files already at the destination are skipped.

    workers: parallel workers (default the CPU count); processes when resizing, threads otherwise, 1 runs
    in this process. Finished files stay finished if the run is interrupted.
    """
    if max_side is not None and max_side < 1:
        raise ValueError(f"max_side must be at least 1, got {max_side}")
    if not 1 <= quality <= 100:
        raise ValueError(f"quality must be in 1..100, got {quality}")
    for src in sources:
        if not os.path.exists(src):
            raise FileNotFoundError(errno.ENOENT, "No such folder", src)
        if not os.path.isdir(src):
            raise NotADirectoryError(errno.ENOTDIR, "Not a folder", src)
    tasks, skipped = plan_transfers(sources, dst)
    # names already there are skipped, so a rerun with another size would mix two sizes in one folder
    check_settings(os.path.join(dst, SETTINGS_FILE), {"max_side": max_side, "quality": quality if max_side else None},
                   "rerun with those settings, or choose another destination")
    summary = TransferSummary()
    for r in skipped:
        summary.add(r)
    if skipped:
        log.info("%d file(s) skipped: already at the destination", len(skipped))
    workers = workers or os.cpu_count() or 1
    desc = "resize" if max_side else ("move" if move else "copy")
    with logging_redirect_tqdm(), tqdm(total=len(tasks), desc=desc, unit="file",
                                       disable=not progress or not tasks) as bar:
        for results in _run(tasks, workers, batch_size, move, max_side, quality):
            for r in results:
                summary.add(r)
                if r.status == "failed":
                    log.warning("%s: %s", r.src, r.detail)
            bar.update(len(results))
    return summary


def _run(tasks: Sequence[Task], workers: int, batch_size: int, move: bool, max_side: int | None,
         quality: int) -> Iterator[list[Result]]:
    if workers <= 1 or len(tasks) <= batch_size:
        for batch in _batches(tasks, batch_size):
            yield _transfer_batch(batch, move, max_side, quality)
        return
    # resizing is CPU work (processes); a plain move or copy waits on the disk (threads)
    pool_type = cf.ProcessPoolExecutor if max_side is not None else cf.ThreadPoolExecutor
    batches = _batches(tasks, batch_size)
    with pool_type(max_workers=workers) as pool:
        pending: set[cf.Future] = set()
        try:
            # a bounded window of batches in flight, so millions of files never become millions of futures
            for batch in batches:
                pending.add(pool.submit(_transfer_batch, batch, move, max_side, quality))
                if len(pending) >= 4 * workers:
                    done, pending = cf.wait(pending, return_when=cf.FIRST_COMPLETED)
                    for f in done:
                        yield f.result()
            for f in cf.as_completed(pending):
                yield f.result()
        except BaseException:
            for f in pending:
                f.cancel()
            raise


def write_failures(path: str, failures: Sequence[tuple[str, str]]) -> None:
    """The failures as a CSV (path, error), written atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "error"])
            writer.writerows(failures)
