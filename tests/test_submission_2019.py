"""The 2019 submission helpers (retinanet_inference_submission/delete_higher_level_predictions.py,
concat_all_levels_submission.py; oid_retinanet/predict/submission_2019.py).

Checked against gujingxiao's recorded outputs (rule: exact text; the originals copy tokens verbatim and the
README records these as exact) and hand-worked cases for what the originals did not do (matching by
ImageId, images missing from some levels).
"""

from __future__ import annotations

import shutil

import pytest
from conftest import fixture_path, read_lines

from oid_retinanet.errors import OIDInputError
from oid_retinanet.oid.levels import level_2019_children
from oid_retinanet.predict.submission_2019 import (
    CONCAT_INPUTS,
    CONCAT_OUTPUT,
    concat_submissions,
    delete_higher_level,
    delete_low_scores,
)
from retinanet_inference_submission import concat_all_levels_submission as concat_script
from retinanet_inference_submission import delete_higher_level_predictions as delete_script


def _text(path) -> str:
    with open(path, encoding="utf-8", newline="") as f:
        return f.read()


def _write(path, rows):
    path.write_text("ImageId,PredictionString\n" + "".join(f"{i},{s}\n" for i, s in rows), encoding="utf-8")
    return path


A = "/m/01g317 0.9 0.1 0.1 0.2 0.2"   # Person (a parent class)
B = "/m/04yx4 0.8 0.1 0.1 0.2 0.2"    # Man (a leaf of level 1)
C = "/m/0k4j 0.7 0.3 0.3 0.5 0.5"     # Car (a parent class)
D = "/m/0h2r6 0.6 0.3 0.3 0.5 0.5"    # Van (a leaf)


# ----------------------------------------------------------------------------------------------------------
# Deleting the higher-level classes


def test_delete_matches_recorded_output(tmp_path):
    src = fixture_path("seed_pipeline", "expected", "gujingxiao", "expand", "all_levels.csv")
    out = tmp_path / "deleted.csv"
    assert delete_script.main([str(src), str(out)]) == 0
    assert _text(out) == _text(fixture_path("seed_pipeline", "expected", "gujingxiao", "delete", "deleted.csv"))


def test_delete_hand_worked(tmp_path):
    leaves = set(level_2019_children())
    assert len(leaves) == 443 and "/m/04yx4" in leaves and "/m/0h2r6" in leaves
    assert "/m/01g317" not in leaves and "/m/0k4j" not in leaves
    src = _write(tmp_path / "in.csv", [("x", f"{A} {B} {C} {D} "), ("y", f"{A} "), ("z", ""), ("w", f" {D}")])
    summary = delete_higher_level(str(src), str(tmp_path / "out.csv"), progress=False)
    assert read_lines(tmp_path / "out.csv") == ["ImageId,PredictionString", f"x,{B} {D} ", "y,", "z,", f"w,{D} "]
    assert (summary.images, summary.boxes, summary.kept) == (4, 6, 3)
    # another set of classes to keep, from a class-description file
    (tmp_path / "keep.csv").write_text("/m/01g317,Person\n")
    assert delete_script.main([str(src), str(tmp_path / "out2.csv"), "--keep-classes", str(tmp_path / "keep.csv")]) == 0
    assert read_lines(tmp_path / "out2.csv")[1:] == [f"x,{A} ", f"y,{A} ", "z,", "w,"]


def test_delete_low_scores_hand_worked(tmp_path):
    src = _write(tmp_path / "in.csv", [("x", f"{A} {B} {C} {D} "), ("y", "")])
    delete_low_scores(str(src), str(tmp_path / "out.csv"), threshold=0.7, progress=False)
    assert read_lines(tmp_path / "out.csv")[1:] == [f"x,{A} {B} ", "y,"]  # 0.7 itself is not above 0.7


@pytest.mark.parametrize("row, message", [
    (f"{A} /m/0k4j 0.5", "bad prediction string: 8 tokens is not a multiple of 6"),
    ("/m/0k4j 0.5 0.1 0.1 x 0.2", "XMax of box 1 is not a number: 'x'"),
])
def test_delete_bad_row(tmp_path, capsys, row, message):
    src = _write(tmp_path / "in.csv", [("a", f"{B} "), ("b", row)])
    out = tmp_path / "out.csv"
    assert delete_script.main([str(src), str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == f"error: {src}, row 3: {message}"
    assert not out.exists()


# ----------------------------------------------------------------------------------------------------------
# Concatenating the levels


@pytest.mark.parametrize("by_position", [False, True])
def test_concat_matches_recorded_output(tmp_path, monkeypatch, by_position):
    """The original ran in a folder holding the five level files; so does the script without arguments."""
    for name in CONCAT_INPUTS:
        shutil.copy(fixture_path("seed_pipeline", "inputs", "g19_concat", name), tmp_path / name)
    monkeypatch.chdir(tmp_path)
    assert concat_script.main(["--by-position"] if by_position else []) == 0
    expected = fixture_path("seed_pipeline", "expected", "gujingxiao", "concat", CONCAT_OUTPUT)
    assert _text(tmp_path / CONCAT_OUTPUT) == _text(expected)


def test_concat_by_image_id_hand_worked(tmp_path):
    one = _write(tmp_path / "1.csv", [("a", f"{B} "), ("b", ""), ("c", f"{D} ")])
    two = _write(tmp_path / "2.csv", [("c", f"{C}"), ("a", f"  {A}  "), ("d", f"{B} ")])  # other order, odd spaces
    three = _write(tmp_path / "3.csv", [("d", f"{D} {D} ")])
    out = tmp_path / "out.csv"
    summary = concat_submissions([str(one), str(two), str(three)], str(out), progress=False)
    assert read_lines(out) == ["ImageId,PredictionString", f"a,{B} {A} ", "b,", f"c,{D} {C} ", f"d,{B} {D} {D} "]
    assert summary.images == 4 and summary.boxes == 7
    assert summary.missing == {str(one): 1, str(two): 1, str(three): 3}
    # the original's pairing by position mixes images: row 1 of file 2 (image c) lands on image a
    assert concat_submissions([str(one), str(two)], str(out), by_position=True, progress=False).mismatched == 3
    assert read_lines(out)[1:] == [f"a,{B} {C} ", f"b,{A} ", f"c,{D} {B} "]


def test_concat_errors(tmp_path, capsys):
    one = _write(tmp_path / "1.csv", [("a", f"{B} "), ("b", "")])
    short = _write(tmp_path / "2.csv", [("a", f"{B} ")])
    repeated = _write(tmp_path / "3.csv", [("a", f"{B} "), ("c", ""), ("a", "")])
    bad = _write(tmp_path / "4.csv", [("b", ""), ("a", f"{B} /m/0k4j")])
    out = tmp_path / "out.csv"
    with pytest.raises(OIDInputError, match="needs inputs with as many rows"):
        concat_submissions([str(one), str(short)], str(out), by_position=True, progress=False)
    with pytest.raises(OIDInputError, match=r"3.csv, row 4: ImageId 'a' repeated \(first on row 2\)"):
        concat_submissions([str(one), str(repeated)], str(out), progress=False)
    assert concat_script.main([str(one), str(bad), "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {bad}, row 3: bad prediction string: 7 tokens is not a multiple of 6")
    assert not out.exists()


def test_help(capsys):
    for script in (concat_script, delete_script):
        with pytest.raises(SystemExit) as exc:
            script.main(["--help"])
        assert exc.value.code == 0
    assert "--by-position" in capsys.readouterr().out
