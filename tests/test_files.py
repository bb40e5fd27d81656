"""oid_retinanet.files: atomic outputs, the temporaries a killed run leaves, and the external sort.

Rule (hand-worked cases): a rerun removes `.<name>.tmp<pid><suffix>` of its own output when process <pid> is
gone, or when that id now belongs to a process started after the file was last written (the id was reused);
a temporary whose process is running and older than the file, and every other name, stay.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from operator import itemgetter

import numpy as np
import pytest

from oid_retinanet.files import atomic_path, remove_stale_temporaries_in, scratch_folder, sorted_rows


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process start times come from /proc")
@pytest.mark.parametrize("suffix", ["", ".keras"])
def test_stale_temporaries_of_the_output_are_removed(tmp_path, suffix):
    out = tmp_path / "out.csv"
    dead = tmp_path / f".out.csv.tmp{_dead_pid()}{suffix}"
    running = tmp_path / f".out.csv.tmp{os.getppid()}{suffix}"  # our parent: started before the file
    keep = [running, tmp_path / f".other.csv.tmp{_dead_pid()}{suffix}", tmp_path / f".out.csv.tmpabc{suffix}",
            tmp_path / "out.csv.tmp1"]
    for path in [dead, *keep]:
        path.write_text("half")
    with atomic_path(out, suffix=suffix) as tmp:
        assert tmp.name == f".out.csv.tmp{os.getpid()}{suffix}"
        tmp.write_text("done")
    assert out.read_text() == "done"
    assert not dead.exists() and all(p.exists() for p in keep)

    os.utime(running, (1_000_000, 1_000_000))  # written long before our parent started: its id was reused
    with atomic_path(out, suffix=suffix) as tmp:
        tmp.write_text("again")
    assert not running.exists() and out.read_text() == "again"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process start times come from /proc")
def test_a_folder_of_many_outputs_is_cleaned_once(tmp_path):
    """Writers of many files into one folder (the prediction caches, resized images) write each with clean=False,
    which lists nothing (a listing per file made n files cost n^2 at Open Images' 100 k test images), and clean the
    folder once: every stale temporary of any name goes, the same rule for the rest."""
    dead = [tmp_path / f".a.npz.tmp{_dead_pid()}", tmp_path / f".b.jpg.tmp{_dead_pid()}.png"]
    keep = [tmp_path / f".c.npz.tmp{os.getppid()}", tmp_path / "d.npz", tmp_path / ".e.npz.tmpx"]
    for path in [*dead, *keep]:
        path.write_text("x")
    with atomic_path(tmp_path / "a.npz", clean=False) as tmp:
        tmp.write_text("new")
    assert all(p.exists() for p in [*dead, *keep])  # clean=False: untouched
    remove_stale_temporaries_in(tmp_path)
    assert not any(p.exists() for p in dead) and all(p.exists() for p in keep)
    assert (tmp_path / "a.npz").read_text() == "new"
    remove_stale_temporaries_in(tmp_path / "absent")  # nothing to clean


def test_failed_write_leaves_neither_file(tmp_path):
    out = tmp_path / "out.csv"
    with pytest.raises(RuntimeError), atomic_path(out) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("run_rows", [1, 2, 3, 7, 1000])
def test_sorted_rows_matches_sorted(run_rows):
    """The external sort against Python's sorted(), stable, over run boundaries (exact multiples too) and on
    fields CSV must quote or escape: commas, quotes, new lines, empty strings, undecodable file-name bytes."""
    rng = np.random.default_rng(run_rows)
    odd = ["a,b", 'q"q', "line\nbreak", "cr\rx", "", "\udcff\udc80", "é", "z"]
    rows = [(str(rng.choice(odd + list("abc"))), str(i)) for i in range(42)]
    for n in (0, 1, 6, 42):
        assert list(sorted_rows(rows[:n], run_rows=run_rows)) == sorted(map(list, rows[:n]))
        by_first = list(sorted_rows(rows[:n], key=itemgetter(0), run_rows=run_rows))
        assert by_first == sorted(map(list, rows[:n]), key=itemgetter(0))  # equal keys keep their order


def test_sorted_rows_removes_its_runs(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    merged = sorted_rows([("b",), ("a",), ("c",)], run_rows=1)
    assert next(merged) == ["a"] and len(list(tmp_path.glob("oid-sort-*/run*.csv"))) == 3
    assert list(merged) == [["b"], ["c"]] and not list(tmp_path.iterdir())


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="process start times come from /proc")
def test_scratch_folders_of_killed_runs_are_removed(tmp_path, monkeypatch):
    """A run killed by SIGKILL cannot remove its scratch folder: the next one with that prefix does, and leaves a
    running process's and other names alone."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead, running = tmp_path / f"oid-scan-{_dead_pid()}-x1", tmp_path / f"oid-scan-{os.getppid()}-x2"
    other = [tmp_path / "oid-scan-5fc0pv71", tmp_path / f"oid-sort-{_dead_pid()}-x3"]
    for folder in (dead, running, *other):
        folder.mkdir()
        (folder / "listing.csv").write_text("a.jpg\n")
    with scratch_folder("oid-scan-") as folder:
        assert folder.name.startswith(f"oid-scan-{os.getpid()}-") and folder.is_dir()
        assert not dead.exists() and running.exists() and all(f.exists() for f in other)
    assert not folder.exists()
