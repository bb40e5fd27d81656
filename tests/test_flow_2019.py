"""The 2019 flow (gujingxiao) on generated data: labelProcess's level files and exists split, the image
parameters, training on a label level (retinanet_training_oid_2019/), conversion."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from oid_retinanet.demo.dataset import DatasetSpec, make_dataset
from oid_retinanet.model.card import read_card
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.oid.levels import level_class_file, level_file

pytestmark = pytest.mark.slow  # trains a model

LEVEL = "2"  # the 2019 level holding Apple and Orange of the demo classes
SMALL = "mobilenet128_0.25"


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> dict[str, Path]:
    """labelProcess output for level 2 of a small generated dataset, as the 2019 README orders the steps."""
    from labelProcess import collect_image_parameters, gen_exists_annotation, resize_move_images
    from labelProcess import create_files_for_training_by_levels as levels_2019

    root = tmp_path_factory.mktemp("flow_2019")
    data, out = root / "dataset", root / "output"
    make_dataset(str(data), DatasetSpec(n_train=24, n_validation=4, n_test=4, seed=5))
    # the 2019 layout is one flat train/ folder: gather the 2018 layout's sub-folders into it
    nested = data / "train_nested"
    (data / "train").rename(nested)
    assert resize_move_images.main([*map(str, sorted(nested.iterdir())), str(data / "train"), "--move",
                                    "--workers", "1", "--no-progress"]) == 0
    assert levels_2019.main(["--train-csv", str(data / "challenge-2019-train-detection-bbox.csv"), "--output-path",
                             str(out), "--levels", LEVEL]) == 0
    assert gen_exists_annotation.main(["--levels", LEVEL, "--images", str(data / "train"), "--output-path", str(out),
                                       "--ratio", "0.25", "--seed", "1"]) == 0
    assert collect_image_parameters.main(["--dataset-path", str(data), "--output-path", str(out), "--subsets",
                                          "train", "--workers", "1"]) == 0
    return {"data": data, "out": out, "root": root}


@pytest.fixture(scope="module")
def trained(flow) -> Path:
    """A small model trained two steps on level 2 by the 2019 script, in the original's command form."""
    from retinanet_training_oid_2019 import train_oid_2019_resnet50 as train

    snapshots = flow["root"] / "snapshots"
    argv = ["--label-level", LEVEL, "--backbone", SMALL, "--no-weights", "--output-path", str(flow["out"]),
            "--snapshot-path", str(snapshots), "--image-min-side", "64", "--image-max-side", "80", "--steps", "2",
            "--epochs", "1", "--workers", "1", "oid", str(flow["data"]), "--version", "challenge2019"]
    assert train.main(argv) == 0
    return snapshots / f"{SMALL}_oid_level_{LEVEL}_01.keras"


def test_training_on_a_label_level_reads_the_exists_split(flow, trained):
    from retinanet_training_oid_2019 import convert_retinanet_model as convert

    snapshots = trained.parent
    config = json.loads((snapshots / "training_config.json").read_text())
    # the 2019 defaults, and the files of the exists split: validation images come from the train folder
    assert (config["split"], config["batch_size"], config["lr"], config["reduce_lr_factor"]) == ("exists", 2, 1e-4, 0.8)
    assert config["annotations"] == {"train": level_file(str(flow["out"]), LEVEL, "train-exists"),
                                     "validation": level_file(str(flow["out"]), LEVEL, "val-exists")}
    assert config["images"]["validation"] == str(flow["data"] / "train")
    assert config["image_params"]["validation"] == str(flow["out"] / "train_image_params.csv")
    log = pd.read_csv(snapshots / "training_log.csv")
    assert "mAP" in log.columns and 0 <= log["mAP"].iloc[0] <= 1  # scored on the val-exists images
    snapshot = trained
    card = read_card(snapshot)
    level_classes = read_class_descriptions(level_class_file(str(flow["out"]), LEVEL))
    assert [m for m, _ in card.classes] == list(level_classes.mids) and len(level_classes) == 133
    assert card.training["annotations"] == config["annotations"]["train"]
    inference = flow["root"] / "inference.keras"
    assert convert.main([str(snapshot), str(inference)]) == 0
    assert read_card(inference).classes == card.classes and read_card(inference).filter["max_detections"] == 300


def test_select_needs_the_exists_split_and_its_file(flow, capsys):
    from retinanet_training_level_1 import train_oid_level_1_resnet50 as train_2018
    from retinanet_training_oid_2019 import train_oid_2019_resnet50 as train

    base = ["--label-level", LEVEL, "--backbone", SMALL, "--no-weights", "--output-path", str(flow["out"]),
            "--dataset-path", str(flow["data"]), "--snapshot-path", str(flow["root"] / "s"), "--steps", "1"]
    assert train.main([*base, "--select"]) == 2  # tooMuch_label_select.py has not run
    err = capsys.readouterr().err
    assert "train-exists-annotations-bbox-level-2-select.csv" in err and "tooMuch_label_select.py" in err
    assert train_2018.main([*base, "--select"]) == 2
    assert "--split exists" in capsys.readouterr().err


def test_a_level_model_to_a_scored_submission(flow, trained, tmp_path):
    """The 2019 submission path after training: per-level predictions (retinanet_inference_make_submission.py,
    no flip, boxes kept as they are, 3 decimals), the levels joined (concat_all_levels_submission.py), parents
    added (create_higher_level_predctions.py, the shipped 2018 500-class list and v4 hierarchy standing in for
    the 2019 files, which could not be obtained) and the official mAP on the validation images."""
    import evaluate_oid_map
    from oid_retinanet import resources
    from retinanet_inference_submission import concat_all_levels_submission as concat
    from retinanet_inference_submission import create_higher_level_predctions as expand
    from retinanet_inference_submission import retinanet_inference_make_submission as predict
    from retinanet_training_oid_2019 import convert_retinanet_model as convert

    data = flow["data"]
    model = tmp_path / "level_2.keras"  # an untrained model scores about 0.01: keep its boxes
    assert convert.main([str(trained), str(model), "--score-threshold", "0.001"]) == 0
    level_csv, cache = tmp_path / "level_2.csv", tmp_path / "cache"
    assert predict.main(["--label-level", LEVEL, "--weights", str(model), "--images", str(data / "validation"),
                         "--cache-dir", str(cache), "--output", str(level_csv), "--skip-box-thr", "0.001"]) == 0
    rows = pd.read_csv(level_csv)
    tokens = " ".join(rows["PredictionString"].dropna()).split()
    assert len(rows) == 4 and len(tokens) == 6 * 300 * 4  # no merge: the model's best 300 boxes of each image
    assert all(len(t.split(".")[1]) == 3 for t in tokens[1::6][:50])  # scores with 3 decimals
    assert json.loads((cache / "settings.json").read_text())["flip"] is False
    joined = tmp_path / "all_levels.csv"
    assert concat.main([str(level_csv), str(level_csv), "-o", str(joined)]) == 0
    assert len(pd.read_csv(joined)) == 4
    expanded = tmp_path / "expanded.csv"
    assert expand.main([str(joined), str(expanded), "--class-descriptions", resources.CLASS_DESCRIPTIONS_500_CSV,
                        "--hierarchy", resources.HIERARCHY_JSON, "--hierarchy-names",
                        resources.CLASS_DESCRIPTIONS_CSV]) == 0
    assert len(" ".join(pd.read_csv(expanded)["PredictionString"].dropna()).split()) > 2 * len(tokens)
    annotations = data / "annotations"
    assert evaluate_oid_map.main(["--predictions", str(expanded), "--gt-boxes",
                                  str(data / "challenge-2019-validation-detection-bbox.csv"), "--gt-labels",
                                  str(annotations / "validation-annotations-human-imagelabels-boxable.csv"),
                                  "--output-dir", str(tmp_path / "eval")]) == 0
    assert 0 <= json.loads((tmp_path / "eval" / "map.json").read_text())["mAP"] <= 1


def test_the_level_model_scored_on_its_validation_split(flow, trained, tmp_path, capsys):
    """eval_oid_2019_resnet50.py: the val-exists images (in the train folder) predicted and scored VOC-style, a
    line per class with its instance count as keras-retinanet printed, the mAP, and the report."""
    from retinanet_training_oid_2019 import eval_oid_2019_resnet50 as evaluate

    out_dir = tmp_path / "eval"
    assert evaluate.main(["--label-level", LEVEL, "--weights", str(trained), "--output-path", str(flow["out"]),
                          "--dataset-path", str(flow["data"]), "--cache-dir", str(tmp_path / "cache"),
                          "--output-dir", str(out_dir)]) == 0
    lines = capsys.readouterr().out.splitlines()
    report = json.loads((out_dir / "map.json").read_text())
    assert report["metric"] == "voc" and lines[-1] == f"mAP: {report['mAP']:.4f}"
    # the instance counts, independently: the val-exists boxes per class (all its images are in the train folder)
    val = pd.read_csv(level_file(str(flow["out"]), LEVEL, "val-exists"))
    counts = val["LabelName"].value_counts()
    classes = read_class_descriptions(level_class_file(str(flow["out"]), LEVEL))
    assert counts.sum() > 0 and [line.rsplit(" ", 1)[0] for line in lines[:-1]] == [
        f"{counts.get(m, 0)} instances of class {n} with average precision:" for m, n in zip(classes.mids,
                                                                                           classes.names)]
    assert len(list((tmp_path / "cache").glob("*.npz"))) == val["ImageID"].nunique()
