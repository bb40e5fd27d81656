"""Faults at scale (issue 28), on small data: a stage that writes several files, killed at any point, leaves no
file that looks finished but is not, and run again ends with the uninterrupted run's bytes; a full disk ends
with one line naming the file, exit 2, and nothing unfinished under a final name.

The kill is deterministic: a `sitecustomize` (on PYTHONPATH) counts `os.replace` calls, the step that gives every
output its final name, and SIGKILLs the process at the k-th one, its file written in full under the temporary
name. k runs over the first, a middle and the last output of the stage.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from oid_retinanet.demo import full_size as fs
from oid_retinanet.files import is_temporary
from oid_retinanet.oid.annotations import read_boxes
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.resources import resource_path

REPO = Path(__file__).resolve().parent.parent

KILLER = """import atexit, os, signal
_kill_at = int(os.environ.get("OID_KILL_AT_REPLACE", "0"))
_count_file = os.environ.get("OID_COUNT_REPLACES")
_replace, _calls = os.replace, [0]


def _counted(src, dst, *args, **kwargs):
    _calls[0] += 1
    if _calls[0] == _kill_at:
        os.kill(os.getpid(), signal.SIGKILL)
    return _replace(src, dst, *args, **kwargs)


os.replace = _counted
if _count_file:
    atexit.register(lambda: open(_count_file, "a").write(f"{_calls[0]}\\n"))
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("faults")
    data = root / "dataset"
    fs.write_dataset(data, 0.0001)
    killer = root / "killer"
    killer.mkdir()
    (killer / "sitecustomize.py").write_text(KILLER)
    mids = read_class_descriptions(resource_path("challenge-2018-class-descriptions-500.csv")).mids
    train = read_boxes(str(data / "challenge-2019-train-detection-bbox.csv"))
    fs.write_submission(root / "submission.csv", train, mids, per_image=60)  # about 0.5 MB
    labels = root / "labels.csv"
    fs.image_labels(train, mids).to_csv(labels, index=False)
    images = root / "train"
    images.mkdir()
    for image_id in train["ImageID"].unique():
        (images / f"{image_id}.jpg").touch()
    photos = root / "photos"
    fs.write_images(str(photos), train["ImageID"].unique()[:40], subfolders=False)
    levels_2019 = root / "levels_2019"
    assert run(["labelProcess/create_files_for_training_by_levels.py", "--train-csv",
                str(data / "challenge-2019-train-detection-bbox.csv"), "--output-path", f"{levels_2019}/"],
               killer).returncode == 0
    return {"data": data, "killer": killer, "submission": root / "submission.csv", "labels": labels,
            "images": images, "photos": photos, "levels_2019": levels_2019,
            "train": data / "challenge-2019-train-detection-bbox.csv"}


def run(argv: list[str], killer: Path, kill_at: int = 0, count: Path | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(killer), str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OID_KILL_AT_REPLACE": str(kill_at)}
    if count is not None:
        env["OID_COUNT_REPLACES"] = str(count)
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def contents(folder: Path) -> dict[str, bytes]:
    """Every file's bytes; a JSON report's wall time left out (evaluate_oid_map's map.json records it)."""
    found = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            if p.suffix == ".json" and not is_temporary(p.name):
                data = json.dumps({k: v for k, v in json.loads(data).items() if k != "seconds"}).encode()
            found[str(p.relative_to(folder))] = data
    return found


def finished(folder: Path) -> dict[str, bytes]:
    return {name: data for name, data in contents(folder).items() if not is_temporary(Path(name).name)}


# (stage, argv for an output folder, what the folder holds before the run)
STAGES = {
    "stage 1 (2018)": (lambda i, out: ["create_files_for_training_by_levels.py", "--dataset-path", f"{i['data']}/",
                                       "--output-path", f"{out}/", "--low-samples"], None),
    "stage 1 (2019)": (lambda i, out: ["labelProcess/create_files_for_training_by_levels.py", "--train-csv",
                                       str(i["train"]), "--output-path", f"{out}/"], None),
    "gen_exists_annotation": (lambda i, out: ["labelProcess/gen_exists_annotation.py", "--images", str(i["images"]),
                                              "--output-path", f"{out}/", "--ratio", "0.2"], "levels_2019"),
    "resize_move_images": (lambda i, out: ["labelProcess/resize_move_images.py", "--max-side", "32", "--workers", "1",
                                           "--no-progress", str(i["photos"]), str(out)], None),
    "split_csv": (lambda i, out: ["retinanet_inference_submission/split_csv.py", str(i["submission"]),
                                  "--rows-per-part", "40", "--output-dir", str(out)], None),
    "evaluate_oid_map": (lambda i, out: ["evaluate_oid_map.py", "--predictions", str(i["submission"]), "--gt-boxes",
                                         str(i["train"]), "--gt-labels", str(i["labels"]), "--classes",
                                         resource_path("challenge-2018-class-descriptions-500.csv"), "--output-dir",
                                         str(out)], None),
}


def prepare(inputs: dict[str, Path], before: str | None, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    if before:
        shutil.copytree(inputs[before], out)
    else:
        out.mkdir(parents=True)


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_killed_stage_leaves_only_finished_files_and_reruns_to_the_same_bytes(inputs, tmp_path, stage):
    argv, before = STAGES[stage]
    out, count = tmp_path / "out", tmp_path / "count"
    prepare(inputs, before, out)
    proc = run(argv(inputs, out), inputs["killer"], count=count)
    assert proc.returncode == 0, proc.stderr
    expected = contents(out)
    assert expected == finished(out) and len(expected) >= 2
    renames = int(count.read_text().split()[0])  # the main process's
    assert renames >= 2
    for k in sorted({1, (renames + 1) // 2, renames}):
        prepare(inputs, before, out)
        killed = run(argv(inputs, out), inputs["killer"], kill_at=k)
        assert killed.returncode == -9, f"kill at rename {k}: {killed.returncode} {killed.stderr[-2000:]}"
        left = finished(out)
        assert left.items() <= expected.items(), f"kill at rename {k}: a file under its final name differs"
        assert len(left) < len(expected), f"kill at rename {k}: every output already there"
        rerun = run(argv(inputs, out), inputs["killer"])
        assert rerun.returncode == 0, rerun.stderr
        assert contents(out) == expected, f"kill at rename {k}, then run again: other outputs"


@pytest.fixture
def small_disk(tmp_path):
    """A 96 KiB tmpfs (root can mount one; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=96k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (needs root): the full-disk test did not run")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


FILLING = {**{name: STAGES[name] for name in ("stage 1 (2018)", "split_csv")},  # outputs of over 96 KiB
           "stage 5": (lambda i, out: ["create_higher_level_predictions_from_level_1_predictions_csv.py",
                                       str(i["submission"]), str(out / "all_levels.csv")], None)}


@pytest.mark.parametrize("stage", list(FILLING))
def test_a_full_disk_is_one_line_naming_the_file_and_exit_2(inputs, tmp_path, small_disk, stage):
    argv, before = FILLING[stage]
    roomy = tmp_path / "roomy"
    prepare(inputs, before, roomy)
    assert run(argv(inputs, roomy), inputs["killer"]).returncode == 0
    out = small_disk / "out"
    prepare(inputs, before, out)
    proc = run(argv(inputs, out), inputs["killer"])
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "no space left on the device" in errors[0] and f"{out}/" in errors[0], errors[0]
    left = contents(out)
    assert left == finished(out), "a temporary file was left"
    assert left.items() <= contents(roomy).items(), "a file under its final name differs from the roomy run's"
    assert len(left) < len(contents(roomy))


def test_a_full_disk_outside_an_atomic_output_is_one_line_too(capsys):
    from oid_retinanet.cli import script_main

    @script_main
    def main(argv):
        raise OSError(errno.ENOSPC, "No space left on device", "out/train_image_params.csv.partial")

    assert main([]) == 2
    assert capsys.readouterr().err == "error: no space left on the device: out/train_image_params.csv.partial\n"
