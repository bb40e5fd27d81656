"""The model card end to end: a tiny model trained with non-default sides, anchors (--config) and a class subset
predicts, ensembles and expands with no size/label/anchor flag exactly as a card-less copy does with every right
flag given by hand, and differently from a card-less copy left at the defaults (so the card decides)."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import pytest

from oid_retinanet.errors import OIDInputError
from oid_retinanet.model.anchors import AnchorParameters, read_anchor_config
from oid_retinanet.model.card import CARD_MEMBER, ModelCard, read_card
from tests.conftest import read_lines
from tests.train_helpers import make_tiny_level

pytestmark = pytest.mark.slow  # trains, converts and predicts

ANCHORS_INI = "[anchor_parameters]\nsizes   = 16 32 64 128 256\nstrides = 8 16 32 64 128\nratios  = 0.5 1 2\n" \
              "scales  = 1 1.5 2\n"
SIDES = ("72", "96")
SUBSET = "/m/09k_b,/m/014j1m,/m/03120"  # three of the five demo classes (Lemon, Apple, Flag), in this order
SCORE = "0.001"  # an untrained model scores about 0.01: keep its boxes, so that outputs can differ


def _without_card(src: Path, dst: Path) -> Path:
    """A copy of a .keras file without its card (as a model saved before cards, or by plain Keras)."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            if item.filename != CARD_MEMBER:
                zout.writestr(item, zin.read(item.filename))
    return dst


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A mobilenet128_0.25 trained one epoch of two steps at 72/96 with custom anchors on three classes."""
    from retinanet_training_level_1 import train_oid_level_1_resnet50 as train

    root = tmp_path_factory.mktemp("card")
    tiny = make_tiny_level(root / "level")
    (root / "anchors.ini").write_text(ANCHORS_INI)
    snapshots = root / "snapshots"
    assert train.main(["--no-weights", "--backbone", "mobilenet128_0.25", "--dataset-path", str(tiny.dataset),
                       "--output-path", str(tiny.output), "--snapshot-path", str(snapshots), "--image-min-side",
                       SIDES[0], "--image-max-side", SIDES[1], "--config", str(root / "anchors.ini"),
                       "--labels-filter", SUBSET, "--steps", "2", "--epochs", "1", "--workers", "1",
                       "--no-evaluation"]) == 0
    return {"root": root, "tiny": tiny, "snapshot": snapshots / "mobilenet128_0.25_oid_level_1_01.keras",
            "classes": snapshots / "classes.csv", "anchors": root / "anchors.ini"}


def test_the_trainer_writes_the_card_into_every_snapshot(trained):
    card = read_card(trained["snapshot"])
    assert card.backbone == "mobilenet128_0.25" and card.num_classes == 3 and card.assumed == ()
    assert [m for m, _ in card.classes] == SUBSET.split(",")
    assert (card.min_side, card.max_side) == (72, 96) and card.anchors == read_anchor_config(trained["anchors"])
    assert card.anchors.scales[1] == pytest.approx(1.5) and card.training["epoch"] == 1
    assert card.training["level"] == "1" and card.training["images"] > 0
    assert ModelCard.from_dict(card.to_dict(), "x") == card


def test_card_decides_every_stage_without_flags(trained, tmp_path, capsys):
    import create_higher_level_predictions_from_level_1_predictions_csv as stage5
    import ensemble_predictions_with_weighted_method as stage6
    import retinanet_inference_example as stage4
    from retinanet_training_level_1 import convert_retinanet_model as convert

    images = str(trained["tiny"].dataset / "validation")
    bare = _without_card(trained["snapshot"], tmp_path / "bare.keras")
    assert read_card(bare) is None

    def converted(src: Path, name: str, *flags: str) -> Path:
        out = tmp_path / f"{name}.keras"
        assert convert.main([str(src), str(out), "--score-threshold", SCORE, *flags]) == 0
        return out

    def predict(weights: Path, name: str, *flags: str) -> Path:
        out = tmp_path / f"{name}.csv"
        assert stage4.main(["--weights", str(weights), "--images", images, "--cache-dir", str(tmp_path / name),
                            "--output", str(out), *flags]) == 0
        return out

    by_card = converted(trained["snapshot"], "by_card")  # the card goes on into the inference model
    assert read_card(by_card).anchors == read_anchor_config(trained["anchors"])
    by_hand = converted(bare, "by_hand", "--config", str(trained["anchors"]))
    defaults = converted(bare, "defaults")
    right = ["--labels", str(trained["classes"]), "--min-side", SIDES[0], "--max-side", SIDES[1]]

    csv_card = predict(by_card, "card")
    csv_hand = predict(by_hand, "hand", *right)
    assert read_lines(csv_card) == read_lines(csv_hand)
    assert len(read_lines(csv_card)) > 1 and read_lines(csv_card)[1].count("/m/") > 10
    # the training snapshot itself: converted on load with the card's anchors
    assert read_lines(predict(trained["snapshot"], "snapshot", "--skip-box-thr", "0")) != []
    # left at the defaults, each fact changes the output: anchors, sides
    assert read_lines(predict(defaults, "default_anchors", *right)) != read_lines(csv_card)
    assert read_lines(predict(by_card, "default_sides", "--min-side", "800", "--max-side", "1333")) != \
        read_lines(csv_card)
    # a card-less model of 3 classes cannot be given names by guessing
    assert stage4.main(["--weights", str(by_hand), "--images", images, "--cache-dir", str(tmp_path / "none"),
                        "--output", str(tmp_path / "none.csv")]) == 2
    assert "no released class list has 3 classes" in capsys.readouterr().err

    # stage 6 reads the class list the cache folders recorded; stage 5 expands the same rows
    ens = {}
    for name, flags in (("card", []), ("hand", ["--labels", str(trained["classes"])])):
        ens[name] = tmp_path / f"ensemble_{name}.csv"
        assert stage6.main(["--cache-dirs", str(tmp_path / name), str(tmp_path / name), "--output", str(ens[name]),
                            *flags]) == 0
    assert read_lines(ens["card"]) == read_lines(ens["hand"])
    for name in ("card", "hand"):
        assert stage5.main([str(tmp_path / f"{name}.csv"), str(tmp_path / f"{name}_expanded.csv")]) == 0
    assert read_lines(tmp_path / "card_expanded.csv") == read_lines(tmp_path / "hand_expanded.csv")


def test_flags_that_contradict_the_card_are_errors(trained, tmp_path):
    from oid_retinanet.predict.resolve import resolve_model

    other = tmp_path / "other.ini"
    other.write_text(ANCHORS_INI.replace("16 32 64 128 256", "32 64 128 256 512"))
    with pytest.raises(OIDInputError, match=r"anchors sizes \[32, 64.*but the model was made with sizes \[16, 32"):
        resolve_model(str(trained["snapshot"]), anchors=read_anchor_config(other), config=str(other))
    four = tmp_path / "four.ini"
    four.write_text(ANCHORS_INI.replace("ratios  = 0.5 1 2", "ratios  = 0.5 1 2 3"))
    with pytest.raises(OIDInputError, match="12 anchors per location.*heads have 9"):
        resolve_model(str(trained["snapshot"]), anchors=read_anchor_config(four), config=str(four))
    two = tmp_path / "two.csv"
    two.write_text("/m/09k_b,Lemon\n/m/014j1m,Apple\n")
    with pytest.raises(OIDInputError, match="2 classes, but the model has 3"):
        resolve_model(str(trained["snapshot"]), labels=str(two))
    # an override is taken (and logged)
    assert resolve_model(str(trained["snapshot"]), min_side=64).sides == (64, 96)


def test_anchor_config_errors_name_the_file_and_key(tmp_path):
    path = tmp_path / "config.ini"
    for text, message in (("[other]\na = 1\n", "no \\[anchor_parameters\\] section"),
                          (ANCHORS_INI.replace("scales  = 1 1.5 2\n", ""), "has no 'scales'"),
                          (ANCHORS_INI.replace("16 32", "16 x32"), "sizes = '16 x32 .*not int"),
                          (ANCHORS_INI + "sides = 3\n", "unknown keys sides"),
                          (ANCHORS_INI.replace("8 16 32 64 128", "8 16 32 64"), "same length"),
                          ("not an ini", "not a keras-retinanet config.ini")):
        path.write_text(text)
        with pytest.raises(OIDInputError, match=message) as err:
            read_anchor_config(str(path))
        assert str(path) in str(err.value)
    path.write_text(ANCHORS_INI + "[pyramid_levels]\nP = 3 4 5 6 7\n")
    assert read_anchor_config(str(path)) == AnchorParameters(sizes=(16, 32, 64, 128, 256), scales=(1.0, 1.5, 2.0))


def test_one_command_evaluation_of_the_level_model(trained, tmp_path, capsys):
    """evaluate_retinanet_model.py in keras-retinanet's `oid DATASET_PATH MODEL` form: the level's validation
    images predicted at the card's sides and scored on the model's three classes, in its output order."""
    import pandas as pd

    from oid_retinanet.oid.levels import level_file
    from retinanet_training_level_1 import evaluate_retinanet_model as evaluate

    tiny, out_dir = trained["tiny"], tmp_path / "eval"
    assert evaluate.main(["oid", str(tiny.dataset), str(trained["snapshot"]), "--output-path", str(tiny.output),
                          "--cache-dir", str(tmp_path / "cache"), "--output-dir", str(out_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert json.loads((out_dir / "map.json").read_text())["metric"] == "oid" and lines[-1].startswith("mAP: ")
    val = pd.read_csv(level_file(str(tiny.output), "1", "validation"), dtype=str, keep_default_na=False)
    names = dict(read_lines(trained["classes"])[i].split(",") for i in range(3))
    expected = [f"{(val['LabelName'] == m).sum()} instances of class {names[m]} with average precision:"
                for m in SUBSET.split(",")]
    assert [line.rsplit(" ", 1)[0] for line in lines[:-1]] == expected
    settings = json.loads((tmp_path / "cache" / "settings.json").read_text())
    assert (settings["min_side"], settings["max_side"], settings["flip"]) == (72, 96, False)
