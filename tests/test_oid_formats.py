"""OID formats: class lists, hierarchy, box and image-label CSVs, Kaggle predictions.

Hand-worked cases and the facts of the official files (PROVENANCE.md); every kind of bad input has a test
that checks its error message names the file, the row and the value.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

from oid_retinanet.errors import OIDInputError
from oid_retinanet.oid.annotations import read_boxes, read_image_labels
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.oid.hierarchy import Hierarchy
from oid_retinanet.oid.predictions import format_prediction_string, iter_predictions
from oid_retinanet.resources import resource_path

HEADER = "ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,IsDepiction,IsInside"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---- class lists -------------------------------------------------------------------------------------------

def test_official_class_lists():
    v4 = read_class_descriptions(resource_path("class-descriptions-boxable.csv"))
    c500 = read_class_descriptions(resource_path("challenge-2018-class-descriptions-500.csv"))
    assert len(v4) == 601 and len(c500) == 500
    assert not v4.ambiguous_names()
    assert c500.ambiguous_names() == {"Bench": ["/m/076lb9", "/m/0cvnqh"], "Mouse": ["/m/04rmv", "/m/020lf"]}
    assert c500.mid("Bench", last_wins=True) == "/m/0cvnqh"
    assert c500.mid("Mouse", last_wins=True) == "/m/020lf"  # the computer mouse: the originals' dict result
    assert v4.name("/m/020lf") == "Computer mouse" and c500.name("/m/020lf") == "Mouse"


def test_ambiguous_name_lookup_names_the_mids():
    c500 = read_class_descriptions(resource_path("challenge-2018-class-descriptions-500.csv"))
    with pytest.raises(OIDInputError, match=r"'Mouse' is ambiguous: MIDs /m/04rmv, /m/020lf"):
        c500.mid("Mouse")


@pytest.mark.parametrize("text, message, row", [
    ("/m/01,A\n/m/02,B,C\n", "expected 2 columns MID,DisplayName, got 3", 2),
    ("/m/01,A\nm02,B\n", "bad MID 'm02'", 2),
    ("/m/01,A\n/m/02,\n", "empty display name for /m/02", 2),
    ("/m/01,A\n/m/02,B\n/m/01,C\n", "MID /m/01 repeated \\(first on row 1\\)", 3),
])
def test_bad_class_descriptions(tmp_path, text, message, row):
    path = write(tmp_path, "classes.csv", text)
    with pytest.raises(OIDInputError, match=f"classes.csv, row {row}: {message}"):
        read_class_descriptions(path)


def test_aliases_allowed_on_request(tmp_path):
    path = write(tmp_path, "classes.csv", "/m/01,Couch\n/m/01,couch\n")
    classes = read_class_descriptions(path, allow_aliases=True)
    assert classes.mid("couch") == classes.mid("Couch") == "/m/01"


# ---- hierarchy ---------------------------------------------------------------------------------------------

TREE = {"LabelName": "/m/root", "Subcategory": [
    {"LabelName": "/m/a", "Subcategory": [
        {"LabelName": "/m/b", "Subcategory": [{"LabelName": "/m/c"}]},
        {"LabelName": "/m/d"}]},
    {"LabelName": "/m/e", "Subcategory": [{"LabelName": "/m/b", "Subcategory": [{"LabelName": "/m/c"}]}],
     "Part": [{"LabelName": "/m/p"}]},
]}


def test_hierarchy_hand_worked():
    h = Hierarchy(TREE)
    assert h.parents("/m/b") == ["/m/a", "/m/e"]
    assert h.parents("/m/a") == []                      # the root is never a parent
    assert sorted(h.ancestors("/m/c")) == ["/m/a", "/m/b", "/m/e"]
    assert h.ancestors("/m/c")[0] == "/m/b"             # nearest first
    assert sorted(h.descendants("/m/a")) == ["/m/b", "/m/c", "/m/d"]
    assert h.depth("/m/a") == 1 and h.depth("/m/c") == 3
    assert sorted(h.leaves()) == ["/m/c", "/m/d"]
    assert h.multi_parent() == {"/m/b": ["/m/a", "/m/e"]}
    assert "/m/p" not in h                              # Part edges are not kinds
    assert "/m/p" in Hierarchy(TREE, edges=("Subcategory", "Part"))
    with pytest.raises(OIDInputError, match="'/m/zzz' is not in the hierarchy"):
        h.ancestors("/m/zzz")


def test_official_hierarchy_facts():
    h = Hierarchy.from_json(resource_path("bbox_labels_600_hierarchy.json"))
    v4 = read_class_descriptions(resource_path("class-descriptions-boxable.csv"))
    assert h.root == "/m/0bl9f" and set(h.mids) == set(v4.mids)
    names = lambda mids: sorted(v4.name(m) for m in mids)  # noqa: E731
    assert names(h.ancestors(v4.mid("Cat"))) == ["Animal", "Carnivore", "Mammal"]
    assert names(h.ancestors(v4.mid("Computer mouse"))) == []
    assert names(h.ancestors(v4.mid("Mouse"))) == ["Animal", "Mammal"]


def test_bad_hierarchy_json(tmp_path):
    path = write(tmp_path, "h.json", '{"LabelName": "/m/r", "Subcategory": [')
    with pytest.raises(OIDInputError, match="h.json: not valid JSON"):
        Hierarchy.from_json(path)


# ---- box and image-label CSVs ------------------------------------------------------------------------------

GOOD_ROW = "000a1249af2bc5f0,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,0,0,0,0,0"


def test_boxes_keep_ids_as_strings(tmp_path):
    digits = "0123456789012345,xclick,/m/01g317,1,0,1,0,1,0,0,0,0,0"
    path = write(tmp_path, "boxes.csv", f"{HEADER}\n{GOOD_ROW}\n{digits}\n")
    df = read_boxes(path)
    assert list(df["ImageID"]) == ["000a1249af2bc5f0", "0123456789012345"]


@pytest.mark.parametrize("row, message", [
    ("0b,xclick,/m/01g317,1,abc,0.5,0.2,0.6,0,0,0,0,0", "XMin is not a number: 'abc'"),
    ("0b,xclick,/m/01g317,1,0.1,1.5,0.2,0.6,0,0,0,0,0", "XMax = 1.5 is outside \\[0, 1\\]"),
    ("0b,xclick,/m/01g317,1,0.7,0.5,0.2,0.6,0,0,0,0,0", "XMin = 0.7 > XMax = 0.5"),
    ("0b,xclick,/m/01g317,1,0.1,0.5,0.9,0.6,0,0,0,0,0", "YMin = 0.9 > YMax = 0.6"),
    ("0b,xclick,/m/0zzzzz,1,0.1,0.5,0.2,0.6,0,0,0,0,0", "unknown MID '/m/0zzzzz'"),
    ("0b,xclick,,1,0.1,0.5,0.2,0.6,0,0,0,0,0", "empty LabelName"),
    (",xclick,/m/01g317,1,0.1,0.5,0.2,0.6,0,0,0,0,0", "empty ImageID"),
    ("0b,xclick,/m/01g317,high,0.1,0.5,0.2,0.6,0,0,0,0,0", "Confidence is not a number: 'high'"),
    ("0b,xclick,/m/01g317,1.5,0.1,0.5,0.2,0.6,0,0,0,0,0", "Confidence = 1.5 must be in \\[0, 1\\]"),
    ("0b,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,yes,0,0,0,0", "IsOccluded is not a number: 'yes'"),
    ("0b,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,0,0,0,0,", "IsInside is empty"),
    ("0b,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,0,0,0,3,0", "IsDepiction = 3 must be 0 or 1 or -1"),
])
def test_bad_box_rows_name_file_row_and_value(tmp_path, row, message):
    v4 = read_class_descriptions(resource_path("class-descriptions-boxable.csv"))
    path = write(tmp_path, "boxes.csv", f"{HEADER}\n{GOOD_ROW}\n{GOOD_ROW}\n{row}\n{GOOD_ROW}\n")
    with pytest.raises(OIDInputError, match=f"boxes.csv, row 4: {message}"):
        read_boxes(path, v4)


def test_missing_columns_and_ragged_rows(tmp_path):
    path = write(tmp_path, "boxes.csv", "ImageID,LabelName,XMin,XMax,YMin\n0b,/m/01g317,0,1,0\n")
    with pytest.raises(OIDInputError, match="boxes.csv, row 1: missing column\\(s\\) YMax"):
        read_boxes(path)
    path = write(tmp_path, "ragged.csv", f"{HEADER}\n{GOOD_ROW}\n{GOOD_ROW},7\n")
    with pytest.raises(OIDInputError, match="ragged.csv: malformed CSV: .*line 3"):
        read_boxes(path)
    path = write(tmp_path, "empty.csv", "")
    with pytest.raises(OIDInputError, match="empty.csv: file is empty"):
        read_boxes(path)


def test_error_lines_are_the_files_lines(tmp_path):
    """Blank lines and a newline inside a quoted field count, as an editor numbers lines: the bad row is line 7."""
    split = '0c,"free\nform",/m/01g317,1,0.1,0.5,0.2,0.6,0,0,0,0,0'
    bad = "0d,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,0,0,x,0,0"
    path = write(tmp_path, "boxes.csv", f"{HEADER}\n{GOOD_ROW}\n\n{split}\n\n{bad}\n{GOOD_ROW}\n")
    with pytest.raises(OIDInputError, match="boxes.csv, row 7: IsGroupOf is not a number: 'x'"):
        read_boxes(path)


def test_a_column_named_twice_in_the_header(tmp_path):
    path = write(tmp_path, "boxes.csv", f"{HEADER},IsGroupOf\n{GOOD_ROW},1\n")
    with pytest.raises(OIDInputError, match="boxes.csv, row 1: column IsGroupOf occurs 2 times in the header"):
        read_boxes(path)


def test_official_unknown_flag_and_trailing_commas(tmp_path):
    """-1 (unknown) is a flag value of the official files; a trailing comma on every data row is one field more
    than the header, which pandas would take as an index and shift every value: refused at the first row."""
    unknown = "0b,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,-1,-1,0,-1,-1"
    assert list(read_boxes(write(tmp_path, "boxes.csv", f"{HEADER}\n{GOOD_ROW}\n{unknown}\n"))["IsOccluded"]) == [0, -1]
    path = write(tmp_path, "commas.csv", f"{HEADER}\n{GOOD_ROW},\n{GOOD_ROW},\n")
    with pytest.raises(OIDInputError, match="commas.csv, row 2: row has more fields than the header's 13"):
        read_boxes(path)


def test_level_file_negatives(tmp_path):
    path = write(tmp_path, "level.csv", f"{HEADER}\n{GOOD_ROW}\n0c,freeform,,1.0,,,,,0,0,0,0,0\n")
    df = read_boxes(path, allow_negatives=True)
    assert list(df["LabelName"]) == ["/m/01g317", ""]
    with pytest.raises(OIDInputError, match="level.csv, row 3: XMin is empty"):
        read_boxes(path)


def test_image_labels(tmp_path):
    path = write(tmp_path, "labels.csv", "ImageID,Source,LabelName,Confidence\n0a,verification,/m/01g317,1\n"
                                         "0a,verification,/m/0cmf2,0\n0b,verification,/m/0cmf2,2\n")
    with pytest.raises(OIDInputError, match="labels.csv, row 4: Confidence must be 0 or 1, got 2"):
        read_image_labels(path)


# ---- Kaggle predictions ------------------------------------------------------------------------------------

def test_predictions_parse_and_format_round_trip(tmp_path):
    string = "/m/01g317 0.912345 0.1000 0.2000 0.3000 0.4000 /m/0cmf2 0.050000 0.0000 0.0000 1.0000 1.0000 "
    path = write(tmp_path, "p.csv", f"ImageId,PredictionString\n0123,{string}\n\nabc,\n")
    first, second = list(iter_predictions(path))
    assert first.image_id == "0123" and second.image_id == "abc" and len(second.mids) == 0
    np.testing.assert_array_equal(first.boxes, [[0.1, 0.2, 0.3, 0.4], [0, 0, 1, 1]])  # x1 y1 x2 y2
    np.testing.assert_array_equal(first.scores, [0.912345, 0.05])
    assert format_prediction_string(first.mids, first.scores, first.boxes) == string


@pytest.mark.parametrize("string, message", [
    ("/m/01g317 0.9 0.1 0.2 0.3", "bad prediction string: 5 tokens is not a multiple of 6"),
    ("/m/01g317 high 0.1 0.2 0.3 0.4", "score of box 1 is not a number: 'high'"),
    ("/m/01g317 0.9 0.1 0.2 0.3 0.4 /m/01g317 0.9 0.1 0.2 0.3 1.4", "YMax of box 2 = 1.4 is outside \\[0, 1\\]"),
    ("/m/01g317 0.9 0.5 0.2 0.3 0.4", "box 1 has XMin > XMax or YMin > YMax"),
    ("/m/0zzzzz 0.9 0.1 0.2 0.3 0.4", "unknown label '/m/0zzzzz' in box 1"),
])
def test_bad_prediction_strings(tmp_path, string, message):
    v4 = read_class_descriptions(resource_path("class-descriptions-boxable.csv"))
    good = "/m/01g317 0.9 0.1 0.2 0.3 0.4"
    path = write(tmp_path, "preds.csv", f"ImageId,PredictionString\na,{good}\nb,\nc,{string}\nd,{good}\n")
    with pytest.raises(OIDInputError, match=f"preds.csv, row 4: {message}"):
        list(iter_predictions(path, chunk_rows=2, classes=v4))


def test_prediction_header_checked(tmp_path):
    path = write(tmp_path, "preds.csv", "ImageID,LabelName\na,b\n")
    with pytest.raises(OIDInputError, match="preds.csv, row 1: expected header ImageId,PredictionString"):
        list(iter_predictions(path))


def test_500_class_challenge_tree():
    """A 500-class challenge tree (the fixture's 2019 stand-in: the v4 tree pruned to the 500 list)."""
    from conftest import fixture_path

    meta = fixture_path("seed_pipeline", "inputs", "g19_standin_metadata")
    h = Hierarchy.from_json(str(meta / "challenge-2019-label500-hierarchy.json"))
    c500 = read_class_descriptions(str(meta / "challenge-2019-classes-description-500.csv"))
    assert set(h.mids) == set(c500.mids)
    # Mammal is not in the 500 list, so Cat's parent chain skips it
    assert [c500.name(m) for m in h.ancestors(c500.mid("Cat"))] == ["Carnivore", "Animal"]


def test_missing_backend_is_one_line(monkeypatch, capsys):
    """KERAS_BACKEND naming a backend that is not installed: one line and exit 2; other missing modules raise."""
    from oid_retinanet.cli import script_main

    @script_main
    def needs(argv):
        raise ModuleNotFoundError(f"No module named '{argv[0]}'", name=argv[0])

    monkeypatch.setenv("KERAS_BACKEND", "jax")
    assert needs(["jax"]) == 2
    assert "KERAS_BACKEND=jax, but jax is not installed" in capsys.readouterr().err
    with pytest.raises(ModuleNotFoundError):
        needs(["cv2"])


def test_tensorflow_messages_print_once():
    """TensorFlow imported before setup_logging (its logger then has a handler of its own): one line, ours."""
    pytest.importorskip("tensorflow")
    code = ("import logging, tensorflow\n"
            "from oid_retinanet.cli import setup_logging\n"
            "setup_logging()\n"
            "logging.getLogger('tensorflow').info('marker %d', 42)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "marker 42" in line]
    assert len(lines) == 1 and lines[0].endswith("INFO tensorflow: marker 42"), result.stderr
