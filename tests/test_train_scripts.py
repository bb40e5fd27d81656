"""Stage 3 end to end: the three training scripts on a tiny generated level (two steps, a snapshot, a resume),
data-parallel training on two logical CPU devices, and proof that the model learns (a few images overfit).
The torch and JAX backends run in subprocesses (the backend is fixed at import), skipped when not installed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from oid_retinanet.boxes.iou import pairwise_iou
from tests.conftest import REPO
from tests.train_helpers import make_tiny_level

pytestmark = pytest.mark.slow  # trains models


def _skip_unless_installed(backend: str) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_level(tmp_path_factory.mktemp("tiny_train"))


SMALL = "mobilenet128_0.25"  # where a small backbone proves the same as a ResNet (the ResNet50 keeps one test each)


def _args(tiny, snapshots, *extra):
    return ["--no-weights", "--dataset-path", str(tiny.dataset), "--output-path", str(tiny.output),
            "--snapshot-path", str(snapshots), "--image-min-side", "64", "--image-max-side", "80",
            "--steps", "2", "--workers", "1", *extra]


@pytest.mark.parametrize("depth,backbone", [(50, "resnet50"), (101, SMALL), (152, SMALL)])
def test_training_script_snapshot_and_resume(depth, backbone, tiny, tmp_path):
    """Each script trains, snapshots and resumes; the full ResNet50 once, the other scripts on a small backbone."""
    import importlib

    import keras

    script = importlib.import_module(f"retinanet_training_level_1.train_oid_level_1_resnet{depth}")
    snapshots = tmp_path / "snapshots"
    # the evaluation path once is enough (with keras-retinanet's weighted VOC mAP)
    extra = ["--weighted-average"] if depth == 50 else ["--no-evaluation", "--backbone", backbone]
    assert script.main(_args(tiny, snapshots, "--epochs", "1", *extra)) == 0
    first = snapshots / f"{backbone}_oid_level_1_01.keras"
    assert first.is_file()
    config = json.loads((snapshots / "training_config.json").read_text())
    assert config["backbone"] == backbone and config["num_classes"] == 5 and config["initial_epoch"] == 0
    assert (config["image_min_side"], config["image_max_side"]) == (64, 80)

    assert script.main(_args(tiny, snapshots, "--epochs", "2", "--resume", *extra)) == 0
    second = snapshots / f"{backbone}_oid_level_1_02.keras"
    assert second.is_file()
    assert json.loads((snapshots / "training_config.json").read_text())["initial_epoch"] == 1
    log = pd.read_csv(snapshots / "training_log.csv")
    assert log["epoch"].tolist() == [0, 1] and np.isfinite(log["loss"]).all()
    if depth == 50:
        assert "mAP" in log.columns and (snapshots / "mAP_stat_resnet50.txt").is_file()
    # the optimizer state went on: two steps per epoch
    import oid_retinanet.train.losses  # noqa: F401

    assert int(keras.saving.load_model(second).optimizer.iterations) == 4
    assert not list(snapshots.glob(".*tmp*"))  # no half-written snapshot left behind


def test_a_resumed_run_is_the_uninterrupted_run(tiny, tmp_path):
    """Epoch 1, then --resume to 2, equals 2 epochs at once: the same batches in the same order, so even MobileNet's
    trained batch-normalisation statistics agree (Keras' own shuffle of the batch order, drawn from Python's random
    state, made them differ by up to 1e-2 here; 1e-6 leaves room for float reassociation only)."""
    import keras

    import oid_retinanet.train.losses  # noqa: F401
    from retinanet_training_level_1 import train_oid_level_1_resnet101 as script

    for folder, extra in (("resumed", ["--epochs", "1"]), ("resumed", ["--epochs", "2", "--resume"]),
                          ("whole", ["--epochs", "2"])):
        argv = _args(tiny, tmp_path / folder, "--backbone", SMALL, "--no-evaluation", "--batch-size", "2", *extra)
        assert script.main([*argv, "--steps", "4"]) == 0
    resumed, whole = (keras.saving.load_model(tmp_path / folder / f"{SMALL}_oid_level_1_02.keras")
                      for folder in ("resumed", "whole"))
    for a, b in zip(whole.weights, resumed.weights, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=0, atol=1e-6, err_msg=a.path)


def test_bare_resume_takes_the_earlier_runs_settings(tiny, tmp_path, capfd):
    """`--resume --snapshot-path S` alone continues with the first run's sides, steps, paths and seed (its
    training_config.json); an option given again wins and is logged as changed."""
    from oid_retinanet.train.trainer import build_parser, given_options
    from retinanet_training_level_1 import train_oid_level_1_resnet50 as r50

    parser = build_parser("resnet50", "", {"DATASET_PATH": "d/", "OUTPUT_PATH": "o/", "MODELS_PATH": "m/"})
    assert given_options(parser, ["--resume", "--lr", "1e-5", "--no-weights"]) == {"resume", "lr", "imagenet_weights"}
    snapshots = tmp_path / "snapshots"
    assert r50.main(_args(tiny, snapshots, "--epochs", "1", "--no-evaluation", "--seed", "3", "--backbone", SMALL)) == 0
    capfd.readouterr()
    assert r50.main(["--resume", "--snapshot-path", str(snapshots), "--epochs", "2", "--lr", "2e-5",
                     "--backbone", SMALL]) == 0
    err = capfd.readouterr().err
    config = json.loads((snapshots / "training_config.json").read_text())
    assert (config["image_min_side"], config["image_max_side"], config["steps"], config["seed"]) == (64, 80, 2, 3)
    assert (config["dataset_path"], config["evaluation"], config["lr"]) == (str(tiny.dataset), False, 2e-5)
    assert config["initial_epoch"] == 1 and (snapshots / f"{SMALL}_oid_level_1_02.keras").is_file()
    assert "settings of the earlier run" in err and "image_min_side=64" in err and "seed=3" in err
    assert "changed from the earlier run: epochs 1 -> 2, lr 1e-05 -> 2e-05" in err
    # other classes cannot resume these snapshots: the head's outputs would mean other classes
    classes = pd.read_csv(snapshots / "classes.csv", header=None)
    two = ",".join(classes[1][:2])
    assert r50.main(["--resume", "--snapshot-path", str(snapshots), "--epochs", "3", "--labels-filter", two,
                     "--backbone", SMALL]) == 2
    err = capfd.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"error: {snapshots / 'classes.csv'}: the snapshots here were trained on other classes")
    assert "5 classes, not the 2" in err and not (snapshots / f"{SMALL}_oid_level_1_03.keras").exists()


def test_training_script_defaults_and_errors(tiny, tmp_path, capsys):
    from oid_retinanet.train.trainer import build_parser
    from retinanet_training_level_1 import train_oid_level_1_resnet101 as r101
    from retinanet_training_level_1 import train_oid_level_1_resnet152 as r152

    paths = {"DATASET_PATH": "d/", "OUTPUT_PATH": "o/", "MODELS_PATH": "m/"}
    for module, (lo, hi) in ((r101, (768, 1024)), (r152, (600, 800))):
        with pytest.raises(SystemExit):
            module.main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert f"--image-min-side IMAGE_MIN_SIDE (default: {lo})" in text
        assert f"--image-max-side IMAGE_MAX_SIDE (default: {hi})" in text
    args = build_parser("resnet152", "", paths).parse_args([])
    assert (args.image_min_side, args.image_max_side, args.lr, args.batch_size) == (600, 800, 1e-5, 1)
    assert args.imagenet_weights is True and args.snapshot_path == os.path.join("m/", "snapshots")
    assert r152.main(_args(tiny, tmp_path, "--level", "9")) == 2
    assert "not found: run stage 1" in capsys.readouterr().err
    assert r101.main(_args(tiny, tmp_path, "--multi-gpu", "2", "--batch-size", "1")) == 2
    assert "smaller than --multi-gpu" in capsys.readouterr().err
    with_weights = [a for a in _args(tiny, tmp_path) if a != "--no-weights"]
    assert r101.main([*with_weights, "--snapshot", str(tmp_path / "none_03.keras")]) == 2
    assert "none_03.keras" in capsys.readouterr().err
    assert r101.main(_args(tiny, tmp_path, "--keep-snapshots", "-1")) == 2
    assert "--keep-snapshots -1" in capsys.readouterr().err


def test_tensorboard_without_the_package_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    import importlib.util

    from retinanet_training_level_1 import train_oid_level_1_resnet50 as r50

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard"
                        else find_spec(name, *a))
    assert r50.main(_args(tiny, tmp_path, "--tensorboard-dir", str(tmp_path / "tb"))) == 2
    assert "pip install tensorboard" in capsys.readouterr().err and not (tmp_path / "tb").exists()


@pytest.mark.parametrize("backend", ["tensorflow", "jax"])
def test_data_parallel_on_two_logical_cpus(backend, tiny, tmp_path):
    # A fresh process: the trainer splits the CPU into two logical devices before the backend starts.
    _skip_unless_installed(backend)
    snapshots = tmp_path / "snapshots"
    args = _args(tiny, snapshots, "--epochs", "1", "--multi-gpu", "2", "--batch-size", "2", "--no-evaluation",
                 "--backbone", SMALL)
    cmd = [sys.executable, "-c", "import sys; from tests.train_helpers import train_data_parallel_and_check as t; "
           "t(sys.argv[1:])", *args]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "KERAS_BACKEND": backend})
    assert run.returncode == 0, run.stderr[-3000:]
    assert "data-parallel training on" in run.stderr and "cpu:1" in run.stderr.lower()
    assert (snapshots / f"{SMALL}_oid_level_1_01.keras").is_file()


def test_a_few_images_overfit(tmp_path):
    import keras

    from oid_retinanet.data.datasets import load_level_data
    from oid_retinanet.data.generator import GeneratorConfig, OpenImagesGenerator
    from oid_retinanet.model.retinanet import retinanet, retinanet_bbox
    from oid_retinanet.train.trainer import compile_model

    level = make_tiny_level(tmp_path, n_train=4, n_validation=2)
    data = load_level_data(**level.inputs("train"))
    gen = OpenImagesGenerator(data, GeneratorConfig(batch_size=len(data), min_side=120, max_side=160,
                                                    sampling="sequential"))
    keras.utils.set_random_seed(0)
    model = retinanet(data.num_classes)
    compile_model(model, 1e-4)
    x, y = gen[0]
    losses = [float(np.ravel(model.train_on_batch(x, y))[0]) for _ in range(30)]
    assert losses[-1] < losses[0] / 2, losses
    boxes, scores, labels = (np.asarray(v) for v in retinanet_bbox(model).predict_on_batch(x))
    found = 0
    for k, i in enumerate(gen.groups[0]):
        gt_boxes, gt_labels = data.image_boxes(int(i))
        h, w = x.shape[1:3]
        for box, label in zip(gt_boxes * [w, h, w, h], gt_labels):
            match = (labels[k] == label) & (scores[k] > 0.2)
            found += bool(match.any() and pairwise_iou(box[None], boxes[k][match]).max() > 0.5)
    assert found == len(data.boxes), f"{found} of {len(data.boxes)} objects detected"


def test_mobilenet_backbone_trains_through_the_script(tiny, tmp_path):
    from retinanet_training_level_1 import train_oid_level_1_resnet50 as script

    snapshots = tmp_path / "snapshots"
    # odd sides (ceil and floor feature sizes differ for MobileNet): the targets must still fit the outputs
    assert script.main(_args(tiny, snapshots, "--epochs", "1", "--backbone", "mobilenet128_0.25", "--batch-size",
                             "2", "--image-min-side", "61", "--image-max-side", "83")) == 0
    assert (snapshots / "mobilenet128_0.25_oid_level_1_01.keras").is_file()


@pytest.mark.parametrize("backend", ["torch", "jax"])
def test_training_on_another_backend(backend, tiny, tmp_path):
    _skip_unless_installed(backend)
    snapshots = tmp_path / "snapshots"
    cmd = [sys.executable, "retinanet_training_level_1/train_oid_level_1_resnet50.py",
           *_args(tiny, snapshots, "--epochs", "1", "--no-evaluation", "--mixed-precision")]
    run = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "KERAS_BACKEND": backend})
    assert run.returncode == 0, run.stderr[-3000:]
    assert json.loads((snapshots / "training_config.json").read_text())["backend"] == backend
    log = pd.read_csv(snapshots / "training_log.csv")
    assert log["epoch"].tolist() == [0] and np.isfinite(log["loss"]).all()
    assert (snapshots / "resnet50_oid_level_1_01.keras").is_file()


def test_keras_retinanet_forms_map_onto_ours_or_are_refused():
    from oid_retinanet.errors import OIDInputError
    from oid_retinanet.train.trainer import build_parser, keras_retinanet_args

    parser = build_parser("resnet101", "", {"DATASET_PATH": "d/", "OUTPUT_PATH": "o/", "MODELS_PATH": "m/"})

    def parsed(*argv):
        return keras_retinanet_args(parser.parse_args(list(argv)))

    args = parsed("--batch-size", "2", "oid", "/data/oid", "--labels-filter", "Apple", "--group-method", "none",
                  "--multiprocessing", "--annotation-cache-dir", "x", "--version", "v4")
    assert (args.dataset_path, args.labels_filter, args.group, args.batch_size) == ("/data/oid", ["Apple"], "random", 2)
    assert (parsed().dataset_path, parsed().group, parsed("--group-method", "ratio").group) == ("d/", "ratio", "ratio")
    for argv, reason in ((["pascal", "/voc"], "pascal and kitti are not read here"),
                         (["--no-resize"], "images are always resized"), (["--parent-label", "x"], "--level N"),
                         (["--version", "v5"], "--version v5")):
        with pytest.raises(OIDInputError, match=reason):
            parsed(*argv)


def test_keras_retinanet_flags_take_effect(tiny, tmp_path):
    """`oid DIR` for --dataset-path, --initial-epoch 1 (only epoch 2 runs), --optimizer-clipnorm in the saved
    optimizer, --compute-val-loss in the log, --group-method none as --group random."""
    import keras

    import oid_retinanet.train.losses  # noqa: F401
    from retinanet_training_level_1 import train_oid_level_1_resnet50 as r50

    snapshots = tmp_path / "snapshots"
    argv = [a for a in _args(tiny, snapshots) if a not in ("--dataset-path", str(tiny.dataset))]
    assert r50.main([*argv, "oid", str(tiny.dataset), "--no-evaluation", "--epochs", "2", "--initial-epoch", "1",
                     "--optimizer-clipnorm", "0.01", "--reduce-lr-factor", "0.5", "--compute-val-loss",
                     "--group-method", "none", "--max-queue-size", "2", "--backbone", SMALL]) == 0
    assert sorted(p.name for p in snapshots.glob("*.keras")) == [f"{SMALL}_oid_level_1_02.keras"]
    assert keras.saving.load_model(snapshots / f"{SMALL}_oid_level_1_02.keras").optimizer.clipnorm == 0.01
    log = pd.read_csv(snapshots / "training_log.csv")
    assert log["epoch"].tolist() == [1] and "val_loss" in log.columns and np.isfinite(log["val_loss"]).all()
    config = json.loads((snapshots / "training_config.json").read_text())
    assert (config["dataset_path"], config["group"], config["reduce_lr_factor"]) == (str(tiny.dataset), "random", 0.5)
