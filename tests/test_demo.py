"""`make demo` in its --quick form: every stage's script runs in order and the summary names what they wrote.

The full demo (its mAP and time bounds) is run by `make demo` itself; this checks the wiring on a tiny run."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from oid_retinanet.demo.__main__ import main
from oid_retinanet.model.card import read_card

pytestmark = pytest.mark.slow  # runs the whole pipeline


def test_quick_demo_runs_every_stage(tmp_path, capsys):
    # an earlier run's files are removed first (stage 4 would otherwise reuse their cached predictions)
    (tmp_path / "dataset").mkdir()
    (tmp_path / "summary.json").write_text("{}")
    stale = tmp_path / "cache_model_0" / "0000000000000000.npz"
    stale.parent.mkdir()
    stale.write_bytes(b"stale")
    assert main(["--quick", "--output-dir", str(tmp_path)]) == 0
    assert not stale.exists()
    summary = json.loads((tmp_path / "summary.json").read_text())
    names = [s["name"] for s in summary["stages"]]
    for prefix in ("0.", "1.", "1b.", "2.", "3.", "3b.", "4.", "5.", "6.", "7.", *(f"8{c}." for c in "abcdefghij")):
        assert any(n.startswith(prefix) for n in names), prefix
    for key in ("level1_map", "expanded_map", "ensemble_map", "flow_2019_map", "level2_2019_voc_map"):
        assert 0.0 <= summary[key] <= 1.0
    assert all(s["seconds"] >= 0 and s["outputs"] for s in summary["stages"])
    # each stage's CPU time is its own process's: training spends more than a second of it, the stages' sum is
    # within the run's total (which adds the dataset and this process)
    run = [s for s in summary["stages"] if "user_seconds" in s]
    assert len(run) == len(summary["stages"]) - 1 and all(s["sys_seconds"] >= 0 for s in run)
    assert next(s for s in run if s["name"].startswith("3."))["user_seconds"] > 1
    for key in ("user_seconds", "sys_seconds"):
        assert sum(s[key] for s in run) <= summary[key] + 0.1 * len(run)
    # the files handed from stage to stage exist and have the formats the next stage reads
    subm = tmp_path / "subm"
    for name in ("model_0_level_1.csv", "model_0_expanded.csv", "ensemble.csv", "level_2_2019.csv",
                 "all_levels_2019.csv", "expanded_2019.csv"):
        assert list(pd.read_csv(subm / name).columns) == ["ImageId", "PredictionString"]
    assert summary["serve_weights"] == str(tmp_path / "models" / "demo_model_0_inference.keras")
    assert summary["visualized"]
    # the served model's card: its classes and the sides it was trained at (the web demo and stage 4 read them)
    card = read_card(summary["serve_weights"])
    assert sorted(name for _, name in card.classes) == ["Apple", "Flag", "Lemon", "Orange", "Stop sign"]
    assert (card.min_side, card.max_side) == (96, 128) and card.filter and card.assumed == ()
    assert "OID mAP on the validation split" in capsys.readouterr().out


def test_a_folder_that_is_no_demo_run_is_left_alone(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    assert main(["--quick", "--output-dir", str(tmp_path)]) == 2
    assert "holds no earlier demo run" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "mine"
