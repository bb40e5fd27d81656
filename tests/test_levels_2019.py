"""The 2019 level tool (labelProcess/create_files_for_training_by_levels.py) against gujingxiao's recorded
outputs. Rule: class-description files exact, annotation files header exact and rows as a multiset.

The original crashed on levels 3 and 4 (names missing from the class list), leaving partial class files;
we write the right levels instead, and --resolve-names reproduces the original's name lookup (the recorded
alias-variant run) or gives a clear error where it crashed.
"""

from __future__ import annotations

import pytest
from conftest import assert_same_rows, fixture_path, gunzip_to, read_lines

from labelProcess import create_files_for_training_by_levels as script
from oid_retinanet.oid.levels import levels_2019


@pytest.fixture(scope="module")
def train_csv(tmp_path_factory):
    src = fixture_path("seed_pipeline", "inputs", "z18_train-annotations-bbox.csv.gz")
    return gunzip_to(src, tmp_path_factory.mktemp("g19") / "challenge-2019-train-detection-bbox.csv")


def _compare_folder(expected, actual):
    for path in sorted(expected.iterdir()):
        name = path.name.removesuffix(".gz")
        if name.startswith("class-descriptions"):
            assert read_lines(actual / name) == read_lines(path)
        else:
            assert_same_rows(path, actual / name)


@pytest.mark.parametrize("level", ["1", "2", "5", "6", "7"])
def test_levels_match_original(train_csv, tmp_path, level):
    out = tmp_path / "out"
    assert script.main(["--train-csv", str(train_csv), "--output-path", str(out), "--levels", level]) == 0
    _compare_folder(fixture_path("seed_pipeline", "expected", "gujingxiao", "levels", f"level_{level}_files"),
                    out / f"level_{level}_files")


@pytest.mark.parametrize("level", ["3", "4"])
def test_resolve_names_reproduces_alias_variant(train_csv, tmp_path, level):
    aliases = fixture_path("seed_pipeline", "inputs", "g19_standin_metadata",
                           "challenge-2019-classes-description-500_alias_variant.csv")
    out = tmp_path / "out"
    assert script.main(["--train-csv", str(train_csv), "--output-path", str(out), "--levels", level,
                        "--resolve-names", "--class-descriptions", str(aliases)]) == 0
    _compare_folder(fixture_path("seed_pipeline", "expected", "gujingxiao", "levels_alias_variant",
                                 f"level_{level}_files"), out / f"level_{level}_files")


def test_resolve_names_where_the_original_crashed(train_csv, tmp_path, capsys):
    standin = fixture_path("seed_pipeline", "inputs", "g19_standin_metadata",
                           "challenge-2019-classes-description-500.csv")
    rc = script.main(["--train-csv", str(train_csv), "--output-path", str(tmp_path), "--levels", "3",
                      "--resolve-names", "--class-descriptions", str(standin)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "level 3" in err and "'studio couch'" in err and standin.name in err
    assert not (tmp_path / "level_3_files").exists()


def test_shipped_mids_keep_mouse_and_computer_mouse_apart(train_csv, tmp_path):
    level3 = dict((name, mid) for mid, name in levels_2019()["3"].classes)
    assert level3["Mouse"] == "/m/04rmv" and level3["Computer Mouse"] == "/m/020lf"
    assert level3["studio couch"] == "/m/026qbn5"
    out = tmp_path / "out"
    assert script.main(["--train-csv", str(train_csv), "--output-path", str(out), "--levels", "3"]) == 0
    rows = read_lines(out / "level_3_files" / "train-annotations-bbox-level-3.csv")
    source = read_lines(train_csv)
    header = source[0].split(",")
    li, gi = header.index("LabelName"), header.index("IsGroupOf")
    mids = set(level3.values())
    expected = [r for r in source[1:] if r.split(",")[li] in mids and r.split(",")[gi] == "0"]
    assert len(rows) - 1 == len(expected) > 0


def test_frequency_bands_hand_worked(tmp_path):
    """--bands ranks the hierarchy's leaves by non-group-of box count (ties by MID) and cuts at the bounds."""
    classes = tmp_path / "classes.csv"
    classes.write_text("/m/a,A\n/m/b,B\n/m/c,C\n/m/d,D\n/m/p,P\n")
    hierarchy = tmp_path / "h.json"
    hierarchy.write_text('{"LabelName": "/m/root", "Subcategory": [{"LabelName": "/m/p", "Subcategory": ['
                         '{"LabelName": "/m/a"}, {"LabelName": "/m/b"}]}, {"LabelName": "/m/c"}, '
                         '{"LabelName": "/m/d"}]}')
    header = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
              "IsDepiction,IsInside\n")
    counts = {"/m/a": 1, "/m/b": 3, "/m/c": 3, "/m/p": 9}  # /m/d has no boxes; /m/p is a parent
    rows = [f"i{k}{n},xclick,{mid},1,0.1,0.2,0.1,0.2,0,0,0,0,0\n" for k, (mid, c) in enumerate(counts.items())
            for n in range(c)]
    rows.append("g0,xclick,/m/a,1,0.1,0.2,0.1,0.2,0,0,1,0,0\n" * 5)  # group-of boxes do not count
    train = tmp_path / "train.csv"
    train.write_text(header + "".join(rows))
    out = tmp_path / "out"
    assert script.main(["--train-csv", str(train), "--output-path", str(out), "--bands", "1", "3",
                        "--class-descriptions", str(classes), "--hierarchy", str(hierarchy)]) == 0
    bands = [read_lines(out / f"level_{k}_files" / f"class-descriptions-boxable-level-{k}.csv") for k in (1, 2, 3)]
    assert bands == [["/m/b,B"], ["/m/c,C", "/m/a,A"], ["/m/d,D"]]
    level2 = read_lines(out / "level_2_files" / "train-annotations-bbox-level-2.csv")
    assert len(level2) == 1 + 3 + 1  # header, C's three boxes, A's one non-group-of box
