"""The streaming stages' memory does not grow with the data (issue 28): each runs on submissions of 4,000 and of
16,000 images x 300 boxes (about 48 and 190 MB of CSV a file: many of the readers' 2 MB blocks and of the merges'
batches of images), and its peak RSS (VmHWM of the script's process, written at exit) may differ by 1.3x at most.
A stage that held its input would need several times the file's size at the larger one (below 4,000 images the
allocator's own growth still shows: 1,000 images are not enough). Stage 2 (image parameters) is measured in this
process, by its Python allocations' peak (tracemalloc), its listing sorted through files in runs of 500 rows as in
runs of 20,000 at full size. Full size: `make bench-scale`."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pytest
from PIL import Image

from oid_retinanet import files
from oid_retinanet.data.image_params import scan_images
from oid_retinanet.demo import full_size as fs
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.resources import resource_path

REPO = Path(__file__).resolve().parent.parent
SIZES = (4000, 16000)
TOLERANCE = 1.3

# runs a script as __main__ and writes its process's peak RSS (kB) at exit
PEAK = """import atexit, os, runpy, sys
def _peak():
    with open("/proc/self/status") as f:
        kb = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    open(os.environ["OID_PEAK_FILE"], "w").write(kb)
atexit.register(_peak)
sys.argv = sys.argv[1:]
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[0])))
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@pytest.fixture(scope="module")
def submissions(tmp_path_factory) -> dict[int, tuple[Path, Path]]:
    """Two models' submissions of the same images at each size."""
    if not os.path.exists("/proc/self/status"):
        pytest.skip("peak RSS is read from /proc (Linux)")
    root = tmp_path_factory.mktemp("memory")
    mids = read_class_descriptions(resource_path("challenge-2018-class-descriptions-500.csv")).mids
    made = {}
    for n in SIZES:
        boxes = fs.box_table(fs.BoxFileSpec(images=n, boxes=7 * n, classes=500), mids, seed=n)
        made[n] = tuple(root / f"{n}_model_{m}.csv" for m in range(2))
        for m, path in enumerate(made[n]):
            fs.write_submission(path, boxes, mids, seed=m)
    return made


STAGES = {
    "stage 5": lambda a, b, out: ["create_higher_level_predictions_from_level_1_predictions_csv.py", a, out / "o.csv"],
    "stage 6 from CSVs": lambda a, b, out: ["ensemble_predictions_with_weighted_method.py", "--csvs", a, b,
                                            "--output", out / "o.csv"],
    "split_csv": lambda a, b, out: ["retinanet_inference_submission/split_csv.py", a, "--output-dir", out],
    "concat_all_levels_submission": lambda a, b, out: ["retinanet_inference_submission/concat_all_levels_submission.py",
                                                       a, b, "-o", out / "o.csv"],
    "final_prediction_ensemble ensemble": lambda a, b, out: [
        "retinanet_inference_submission/final_prediction_ensemble.py", "ensemble", a, b, "-o", out / "o.csv"],
    "final_prediction_ensemble delete-low-scores": lambda a, b, out: [
        "retinanet_inference_submission/final_prediction_ensemble.py", "delete-low-scores", a, "-o", out / "o.csv"],
}


def peak_kb(argv: list, folder: Path) -> int:
    folder.mkdir(parents=True)
    peak = folder / "peak"
    proc = subprocess.run([sys.executable, "-c", PEAK, *map(str, argv)], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "OID_PEAK_FILE": str(peak)}, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return int(peak.read_text())


@pytest.mark.parametrize("stage", list(STAGES))
def test_peak_memory_is_flat_between_two_sizes(submissions, tmp_path, stage):
    peaks = {n: peak_kb(STAGES[stage](*submissions[n], tmp_path / str(n)), tmp_path / str(n)) for n in SIZES}
    small, large = (peaks[n] for n in SIZES)
    assert large <= small * TOLERANCE, f"{stage}: peak {small / 1024:.0f} MB at {SIZES[0]:,} images, " \
                                       f"{large / 1024:.0f} MB at {SIZES[1]:,}"


def test_stage2_memory_is_flat_between_two_sizes(tmp_path, monkeypatch):
    """2,000 and 16,000 files: a listing held in memory (about 100 bytes a file) would add 1.4 MB to the ~1.5 MB
    of the scan itself (its 1 MB read buffer)."""
    monkeypatch.setattr(files, "SORT_RUN_ROWS", 500)
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "JPEG")
    peaks = {}
    for n in (2000, 16000):
        folder = tmp_path / str(n)
        for sub in range(4):
            (folder / str(sub)).mkdir(parents=True)
        for i in range(n):
            (folder / str(i % 4) / f"{i:016x}.jpg").write_bytes(buf.getvalue())
        tracemalloc.start()
        try:
            summary = scan_images(folder, tmp_path / f"{n}_image_params.csv", workers=1, progress=False)
            peaks[n] = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert summary.images == n and summary.failures == 0
    assert peaks[16000] <= peaks[2000] * TOLERANCE, f"stage 2: peak {peaks[2000] / 1e6:.2f} MB at 2,000 files, " \
                                                    f"{peaks[16000] / 1e6:.2f} MB at 16,000"
