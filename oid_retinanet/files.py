"""Atomic outputs: write to a temporary name beside the target, rename when complete. CSV inputs and outputs
whose name ends in `.gz` are read and written gzip-compressed, alike everywhere (`open_input`, `native_input`,
`atomic_output`). Tables too large to sort in memory are sorted through files (`sorted_rows`)."""

from __future__ import annotations

import contextlib
import csv
import glob
import gzip
import heapq
import io
import json
import logging
import os
import re
import shutil
import tempfile
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from pathlib import Path

from oid_retinanet.errors import DiskFullError, OIDInputError, is_disk_full

log = logging.getLogger(__name__)


def _process_start(pid: int) -> float | None:
    """When process `pid` started (epoch seconds; -inf where the OS cannot tell), or None if it is not running."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # running, as another user
    try:  # field 22 of /proc/<pid>/stat: clock ticks after boot (not /proc/<pid>'s ctime: when it was first looked at)
        with open(f"/proc/{pid}/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as f:
            boot = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return boot + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError, StopIteration):
        return float("-inf")  # running, start unknown: assume it may be writing


_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.tmp(?P<pid>\d+)(?P<suffix>.*)$")  # atomic_path's temporary names


def is_temporary(name: str) -> bool:
    """Whether a file name is one of atomic_path's temporaries (left by a killed run when no process writes it)."""
    return bool(_TEMPORARY.match(name))


def _remove_if_stale(tmp: Path, pid: int) -> None:
    """Remove a temporary of process `pid` if that process is gone, or if its id now belongs to a process started
    after the file was last written (by more than a second: the boot time is in whole seconds)."""
    if pid == os.getpid():
        return
    started = _process_start(pid)
    with contextlib.suppress(FileNotFoundError, PermissionError):  # gone meanwhile; another user's
        if started is None or started > tmp.stat().st_mtime + 1:
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
            log.info("removed %s, left by an interrupted run (process %s)", tmp, pid)


def remove_stale_temporaries(final: Path, suffix: str = "") -> None:
    """Remove the temporaries of `final` (`.<name>.tmp<pid><suffix>`) that a killed run left."""
    prefix = f".{final.name}.tmp"
    for tmp in final.parent.glob(glob.escape(prefix) + "*" + glob.escape(suffix)):
        pid = tmp.name[len(prefix):len(tmp.name) - len(suffix)]
        if pid.isdigit():
            _remove_if_stale(tmp, int(pid))


def remove_stale_temporaries_in(folder: str | os.PathLike) -> None:
    """Remove every temporary a killed run left in `folder`, in one listing: for folders that get many files, each
    written with `atomic_path(..., clean=False)` (a listing per file would make writing n files O(n^2))."""
    if not os.path.isdir(folder):
        return
    with os.scandir(folder) as entries:
        stale = [(Path(e.path), int(m["pid"])) for e in entries if (m := _TEMPORARY.match(e.name)) and e.is_file()]
    for tmp, pid in stale:
        _remove_if_stale(tmp, pid)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, suffix: str = "", clean: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to `path` (ending in `suffix`, for writers that look at it); on success it
    replaces `path`, on error it is removed. Temporaries of `path` that a killed run left are removed first
    (`clean`; a writer of many files into one folder cleans it once with `remove_stale_temporaries_in` instead).

    An interrupted run never leaves a half-written file under the final name; a full disk raises DiskFullError
    naming `path` (one line and exit 2 from a script).
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    if clean:
        remove_stale_temporaries(final, suffix)
    tmp = final.with_name(f".{final.name}.tmp{os.getpid()}{suffix}")
    try:
        yield tmp
        os.replace(tmp, final)
    except OSError as exc:
        if is_disk_full(exc):
            raise DiskFullError(str(final) if exc.filename in (None, str(tmp)) else exc.filename) from None
        raise
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` atomically (UTF-8, '\\n' line ends)."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")


def write_csv(df, path: str | os.PathLike) -> None:
    """DataFrame.to_csv(index=False) under a temporary name, renamed when complete; gzipped for a `.gz` name."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False, compression={"method": "gzip", "mtime": 0} if is_gzip(path) else None)


def check_settings(record: str | os.PathLike, settings: dict, remedy: str) -> bool:
    """A resumable output's settings: compare `settings` (JSON values) with those recorded in `record` and raise
    OIDInputError naming every difference (keys ending in `_name` are for people and not compared; `remedy` ends
    the message), or record them there when there is no record yet (True then)."""
    record = Path(record)
    if not record.is_file():
        record.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(settings, indent=1) + "\n")
        return True
    try:
        recorded = json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise OIDInputError(f"not a readable settings record ({exc}); {remedy}", str(record)) from None
    diffs = [f"{key} {recorded.get(key)!r} -> {value!r}" for key, value in settings.items()
             if not key.endswith("_name") and recorded.get(key) != value]
    if diffs:
        raise OIDInputError(f"made with other settings ({'; '.join(diffs)}): {remedy}", str(record))
    return False


GZIP_LEVEL = 6  # zlib's default: a third of the size of a prediction CSV at about 20 MB/s a core


def is_gzip(path: str | os.PathLike) -> bool:
    """Whether a file is read and written gzip-compressed: its name ends in `.gz`."""
    return os.fspath(path).endswith(".gz")


def open_input(path: str | os.PathLike, mode: str = "rb", **kwargs):
    """open(path, mode), decompressing a `.gz` file (text modes take encoding/newline as open does)."""
    if is_gzip(path):
        return gzip.open(path, mode if "b" in mode else mode.replace("t", "") + "t", **kwargs)
    return open(path, mode, **kwargs)


@contextlib.contextmanager
def reading(path: str | os.PathLike) -> Iterator[None]:
    """Turn the errors of a damaged or truncated `.gz` input, wherever its reading meets them, into an
    OIDInputError naming the file."""
    try:
        yield
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise OIDInputError(f"damaged or truncated gzip file ({exc})", os.fspath(path)) from None
    except OSError as exc:  # pyarrow's decompressor ("Truncated compressed stream"); not a missing file
        if not is_gzip(path) or isinstance(exc, (FileNotFoundError, PermissionError, IsADirectoryError)):
            raise
        raise OIDInputError(f"damaged or truncated gzip file ({exc})", os.fspath(path)) from None


@contextlib.contextmanager
def native_input(path: str | os.PathLike):
    """(stream, raw) for pyarrow's readers: a native file, decompressed for `.gz`; `raw.tell()` is the bytes of the
    file read so far (for progress against its size)."""
    import pyarrow as pa

    with pa.OSFile(os.fspath(path)) as raw:
        if not is_gzip(path):
            yield raw, raw
            return
        with pa.CompressedInputStream(raw, "gzip") as stream:
            yield stream, raw


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, mode: str = "wb", **kwargs) -> Iterator:
    """A file object writing `path` atomically (`atomic_path`), gzip-compressed when its name ends in `.gz` (with
    no time stamp: the same rows give the same bytes). Text modes take encoding/newline as open does."""
    with atomic_path(path) as tmp, open(tmp, "wb" if is_gzip(path) else mode, **({} if is_gzip(path) else kwargs)) as f:
        if not is_gzip(path):
            yield f
            return
        with gzip.GzipFile(fileobj=f, mode="wb", compresslevel=GZIP_LEVEL, mtime=0, filename="") as z:
            if "b" in mode:
                yield z
                return
            text = io.TextIOWrapper(z, **kwargs)
            yield text
            text.flush()
            text.detach()  # the gzip stream closes with its own context


def row_writer(f):
    """csv.writer for the files we write and read back ourselves (a resumable run's record, sort runs): lines end
    in '\\r\\n', so that a field holding either character is quoted (csv quotes only the line end's characters)."""
    return csv.writer(f, lineterminator="\r\n")


def write_rows(path: str | os.PathLike, rows: Iterable[Sequence[str]]) -> int:
    """Write `rows` to a CSV file of ours (`row_writer`); how many there were."""
    n = 0
    with open(path, "w", encoding="utf-8", errors="surrogateescape", newline="") as f:
        writer = row_writer(f)
        for n, row in enumerate(rows, 1):
            writer.writerow(row)
    return n


def read_rows(path: str | os.PathLike) -> Iterator[list[str]]:
    """The rows of a CSV file `write_rows` wrote, as they are read."""
    with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
        yield from csv.reader(f)


@contextlib.contextmanager
def scratch_folder(prefix: str) -> Iterator[Path]:
    """A temporary folder in TMPDIR, `<prefix><pid>-<random>`, removed after. Those of `prefix` that a killed run
    left (SIGKILL, power loss: its process gone) are removed first."""
    for old in Path(tempfile.gettempdir()).glob(glob.escape(prefix) + "*-*"):
        pid = old.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit():
            _remove_if_stale(old, int(pid))
    with tempfile.TemporaryDirectory(prefix=f"{prefix}{os.getpid()}-") as folder:
        yield Path(folder)


SORT_RUN_ROWS = 20_000  # rows sorted in memory at a time by sorted_rows: 2-5 MB of short rows (a file path, an id)


def sorted_rows(rows: Iterable[Sequence[str]], key: Callable | None = None,
                run_rows: int | None = None) -> Iterator[list[str]]:
    """`rows` (sequences of strings) sorted by `key`, holding at most `run_rows` of them in memory: an external
    merge sort. Each run of `run_rows` rows is sorted and written to a CSV file in a `scratch_folder`, then the
    runs are merged as they are read, and the folder is removed. Stable: rows with equal keys keep their order.
    Fewer rows than `run_rows` (default SORT_RUN_ROWS) are sorted in memory and never written. Yields lists."""
    rows, run_rows = iter(rows), run_rows or SORT_RUN_ROWS
    run = sorted(map(list, islice(rows, run_rows)), key=key)
    if len(run) < run_rows:
        yield from run
        return
    with scratch_folder("oid-sort-") as folder:
        runs = []
        while run:
            runs.append(folder / f"run{len(runs)}.csv")
            write_rows(runs[-1], run)
            run = sorted(map(list, islice(rows, run_rows)), key=key)
        yield from heapq.merge(*map(read_rows, runs), key=key)
