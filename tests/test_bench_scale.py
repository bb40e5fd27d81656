"""`make bench-scale` keeps working: every stage at 0.1% of Open Images' counts (about a minute) prints its row,
removes its data, and leaves the full-size report alone (only a run at the real counts writes BENCHMARKS.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ROWS = ("stage 1 (2018)", "stage 1 (2019)", "gen_exists_annotation", "tooMuch_label_select", "stage 2",
        "stage 3: the training generator (", "stage 3: the training generator on one core", "stage 4: --from-cache,",
        "stage 4: a resumed run's listing", "stage 4: --from-cache's CSV writing", "stage 5 |", "stage 5 (2019)",
        "split_csv", "final_prediction_ensemble ensemble", "final_prediction_ensemble combine",
        "final_prediction_ensemble delete-low-scores", "concat_all_levels_submission", "stage 6: avg from the caches",
        "stage 6: wbf from the caches", "stage 6: avg from the CSVs", "stage 6: wbf from the CSVs", "metric")


@pytest.mark.slow
def test_every_stage_runs_at_a_thousandth_of_full_size(tmp_path):
    report = (REPO / "BENCHMARKS.md").read_bytes()
    proc = subprocess.run([sys.executable, "bench/full_scale.py", "--fraction", "0.001", "--out-dir", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    table = [line for line in proc.stdout.splitlines() if line.startswith("| ")][2:]
    for name in ROWS:
        assert sum(line.startswith(f"| {name}") for line in table) == 1, name
    assert len(table) == len(ROWS)
    assert "same bytes" in next(line for line in table if line.startswith("| stage 2"))
    assert "OTHER bytes" not in proc.stdout and "Not measured" not in proc.stdout
    assert not (tmp_path / "full_scale").exists() and not (tmp_path / "full_scale.json").exists()
    assert (REPO / "BENCHMARKS.md").read_bytes() == report
