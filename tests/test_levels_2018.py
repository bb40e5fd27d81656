"""Stage 1 (2018) against the recorded outputs of ZFTurbo's create_files_for_training_by_levels.py.

Rule: class-description files exact text; annotation files header exact and rows as a multiset (the
original's negative rows came out in Python set order). Inputs are laid out as the original read them.
"""

from __future__ import annotations

import pytest
from conftest import assert_same_rows, fixture_path, gunzip_to, read_lines

import create_files_for_training_by_levels as script

EXPECTED_FOLDERS = ["level_1_files", "level_2_files", "level_3_files", "level_4_files", "level_5_files",
                    "level_1_low_samples_files"]


@pytest.fixture(scope="module")
def level_outputs(tmp_path_factory):
    inputs = fixture_path("seed_pipeline", "inputs")
    root = tmp_path_factory.mktemp("z18")
    dataset = root / "input"
    for subset in ("train", "validation"):
        src = inputs / f"z18_{subset}-annotations-bbox.csv.gz"
        gunzip_to(src, dataset / "annotations" / f"{subset}-annotations-bbox.csv")
        gunzip_to(src, dataset / f"challenge-2019-{subset}-detection-bbox.csv")
    out = root / "output"
    assert script.main(["--dataset-path", str(dataset), "--output-path", str(out), "--low-samples"]) == 0
    return out


@pytest.mark.parametrize("folder", EXPECTED_FOLDERS)
def test_level_files_match_original(level_outputs, folder):
    expected = fixture_path("seed_pipeline", "expected", "zfturbo", "levels", folder)
    names = sorted(p.name.removesuffix(".gz") for p in expected.iterdir())
    assert sorted(p.name for p in (level_outputs / folder).iterdir()) == names
    for name in names:
        if name.startswith("class-descriptions"):
            assert read_lines(level_outputs / folder / name) == read_lines(expected / name)
        else:
            assert_same_rows(expected / name, level_outputs / folder / name)


def test_only_requested_levels_are_written(tmp_path):
    inputs = fixture_path("seed_pipeline", "inputs")
    train = gunzip_to(inputs / "z18_train-annotations-bbox.csv.gz", tmp_path / "train.csv")
    out = tmp_path / "out"
    assert script.main(["--levels", "3", "--train-csv", str(train), "--validation-csv", str(train),
                        "--output-path", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["level_3_files"]
    expected = fixture_path("seed_pipeline", "expected", "zfturbo", "levels", "level_3_files")
    assert_same_rows(expected / "train-annotations-bbox-level-3.csv.gz",
                     out / "level_3_files" / "train-annotations-bbox-level-3.csv")


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    bad = tmp_path / "train.csv"
    bad.write_text("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
                   "IsDepiction,IsInside\n0a,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,0,0,0,0,0\n"
                   "0b,xclick,/m/notaclass,1,0.1,0.5,0.2,0.6,0,0,0,0,0\n")
    out = tmp_path / "out"
    rc = script.main(["--levels", "2", "--train-csv", str(bad), "--validation-csv", str(bad),
                      "--output-path", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.strip().splitlines()[-1] == (f"error: {bad}, row 3: unknown MID '/m/notaclass' (not in "
                                            f"{script.C.CLASS_DESCRIPTIONS_CSV})")
    assert "Traceback" not in err
    assert not list(out.glob("**/*.csv"))


@pytest.mark.parametrize("cell, message", [
    ("x", "IsGroupOf is not a number: 'x'"), ("", "IsGroupOf is empty"), ("2", "IsGroupOf = 2 must be 0 or 1 or -1"),
    ("nan", "IsGroupOf is not a number: 'nan'")])
def test_one_bad_group_of_cell_stops_the_run(tmp_path, capsys, cell, message):
    """One text cell in IsGroupOf once made pandas read the column as strings: `IsGroupOf == 0` was false on
    every row, level 1 came out empty and the run exited 0. Now: the cell's line and value, exit 2, no files."""
    header = ("ImageID,Source,LabelName,Confidence,XMin,XMax,YMin,YMax,IsOccluded,IsTruncated,IsGroupOf,"
              "IsDepiction,IsInside\n")
    good = "0a,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,0,0,0,0,0\n"
    bad = tmp_path / "train.csv"
    bad.write_text(header + good * 3 + f"0b,xclick,/m/01g317,1,0.1,0.5,0.2,0.6,0,0,{cell},0,0\n" + good)
    out = tmp_path / "out"
    rc = script.main(["--levels", "1", "--train-csv", str(bad), "--validation-csv", str(bad),
                      "--output-path", str(out)])
    err = capsys.readouterr().err
    assert rc == 2 and err.strip().splitlines()[-1] == f"error: {bad}, row 5: {message}", err
    assert not list(out.glob("**/*.csv"))


def test_missing_input_file(tmp_path, capsys):
    rc = script.main(["--dataset-path", str(tmp_path), "--output-path", str(tmp_path / "out"), "--levels", "2"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "No such file or directory" in err and "annotations" in err and "Traceback" not in err


def test_help_exits_zero(capsys):
    with pytest.raises(SystemExit) as exc:
        script.main(["--help"])
    assert exc.value.code == 0
    assert "--low-samples" in capsys.readouterr().out


def test_released_class_lists():
    """The released models' output order: 443 = LEVEL_1_LABELS, 500 = ALL_LABELS (the 500-class list's MIDs)."""
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.oid.levels import released_class_list
    from oid_retinanet.resources import resource_path

    v4 = read_class_descriptions(resource_path("class-descriptions-boxable.csv"))
    c500 = read_class_descriptions(resource_path("challenge-2018-class-descriptions-500.csv"))
    l443, l500 = released_class_list(443, v4), released_class_list(500, v4)
    assert l443[0] == ("/m/0mkg", "Accordion") and l443[-1][1] == "Zucchini"
    assert l500[:443] == l443 and l500[443][1] == "Toy" and l500[-1][1] == "Animal"
    assert {m for m, _ in l500} == set(c500.mids)
    with pytest.raises(Exception, match="no released class list has 7 classes"):
        released_class_list(7, v4)


def test_a00_holds_the_originals_level_label_lists():
    """ZFTurbo's a00 held the level lists users imported (its README links LEVEL_1_LABELS as the class list): read
    from the shipped data when first used, in the original's order (values from the original file)."""
    import a00_utils_and_constants as C

    assert C.LEVEL_1_LABELS[:3] == ["Accordion", "Adhesive tape", "Airplane"] and C.LEVEL_1_LABELS[-1] == "Zucchini"
    assert C.LEVEL_2_LABELS[:3] == ["Toy", "Home appliance", "Plumbing fixture"]
    assert C.LEVEL_3_LABELS == ["Seafood", "Watercraft", "Insect", "Carnivore"]
    assert C.LEVEL_4_LABELS == ["Vegetable", "Land vehicle", "Reptile", "Invertebrate"]
    assert C.LEVEL_5_LABELS == ["Furniture", "Vehicle", "Animal"]
    assert [len(getattr(C, f"LEVEL_{k}_LABELS")) for k in range(1, 6)] == [443, 46, 4, 4, 3]
    assert len(C.LEVEL_1_LABELS_LOW_SAMPLES) == 97 and C.LEVEL_1_LABELS_LOW_SAMPLES[:2] == ["Adhesive tape",
                                                                                             "Alarm clock"]
    assert C.ALL_LABELS == C.LEVEL_1_LABELS + C.LEVEL_2_LABELS + C.LEVEL_3_LABELS + C.LEVEL_4_LABELS + C.LEVEL_5_LABELS
    with pytest.raises(AttributeError, match="LEVEL_6_LABELS"):
        getattr(C, "LEVEL_6_LABELS")
