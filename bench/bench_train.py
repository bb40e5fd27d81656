"""Benchmark: stage 3 training from scratch on this CPU for a bounded time: the validation mAP it reaches and
training images/s.

Data, made as a user makes it: the demo dataset (`oid_retinanet.demo.dataset`, five Open Images classes drawn
as shapes on cluttered backgrounds, --width x --height JPEGs), stage 1 (level files; the class file restricted
to the five classes) and stage 2 (image parameters). Training as the training scripts do it: the stage 3
generator (balanced class draw, horizontal flips, the per-channel intensity change, sides --min-side/--max-side),
RetinaNet with random weights (`--backbone`, passed to `model.retinanet.retinanet`), focal + smooth-L1 losses
and Adam with clipnorm 0.001 (`train.trainer`'s compile), at --lr (1e-4: the original's 1e-5 is for fine-tuning
from ImageNet weights), for --seconds after the first step (which traces the graph). Then the inference model
(`retinanet_bbox`) predicts every validation image and the detections are scored twice (`oid_retinanet.evaluate`):
keras-retinanet's VOC-style mAP on the validation boxes (what the training scripts log every epoch) and the
official OID challenge metric on the validation files (group-of boxes, verified image-level labels).

Throughput, each measured in this run, in images/s:
- training: images trained / wall time of the training steps, the first step (graph tracing) left out;
- the model step alone: `fit` on a few batches prepared beforehand (after training, same shapes);
- the generator alone: preparing batches (read, augment, resize, anchor targets) in one thread.
Ratios: the generator over the model step (above 1: the data pipeline keeps up, even on one thread) and the
share of a training step's time spent outside the model (1 - training / model step alone).
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
from bench.common import machine_info, peak_rss_mb, write_result  # noqa: E402

QUICK = {"seconds": 60.0, "n_train": 120, "n_validation": 24}


def make_level(root: Path, n_train: int, n_validation: int, width: int, height: int, seed: int) -> dict:
    """The demo dataset, stage 1 (level 1, restricted to the 5 demo classes) and stage 2, under `root`."""
    import create_files_for_training_by_levels as stage1
    from oid_retinanet.demo.dataset import CLASSES, DatasetSpec, make_dataset
    from oid_retinanet.oid.classes import write_class_descriptions
    from oid_retinanet.oid.levels import level_class_file, level_file
    from retinanet_training_level_1 import find_image_parameters as stage2

    dataset, output = root / "dataset", root / "output"
    make_dataset(str(dataset), DatasetSpec(n_train=n_train, n_validation=n_validation, n_test=0, width=width,
                                           height=height, seed=seed))
    if stage1.main(["--dataset-path", str(dataset), "--output-path", str(output), "--levels", "1"]) != 0:
        raise RuntimeError("stage 1 failed")
    classes = level_class_file(str(output), "1")
    write_class_descriptions(classes, sorted(CLASSES.items()))
    if stage2.main(["--dataset-path", str(dataset), "--output-path", str(output),
                    "--subsets", "train", "validation"]) != 0:
        raise RuntimeError("stage 2 failed")
    return {subset: {"annotations_csv": level_file(str(output), "1", subset), "classes_csv": classes,
                     "image_params_csv": str(output / f"{subset}_image_params.csv"),
                     "images_dir": str(dataset / subset)} for subset in ("train", "validation")} | {
        "dataset": dataset}


def time_limit_callback(seconds: float):
    """A callback stopping `fit` once `seconds` have passed since the end of the first step (which traces the
    graph), recording each step's end time and loss."""
    import keras

    class TimeLimit(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.begin = 0.0
            self.ends: list[float] = []
            self.losses: list[float] = []

        def on_train_begin(self, logs=None) -> None:
            self.begin = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None) -> None:
            now = time.perf_counter()
            self.ends.append(now)
            self.losses.append(float((logs or {}).get("loss", np.nan)))
            if now - self.ends[0] >= seconds:
                self.model.stop_training = True

    return TimeLimit()


def generator_rate(generator, batches: int) -> float:
    """Images/s of `generator` preparing `batches` batches in this thread (after one batch of warm-up)."""
    generator[0]
    t = time.perf_counter()
    images = sum(len(generator[i % len(generator)][0]) for i in range(1, batches + 1))
    return images / (time.perf_counter() - t)


def model_step_rate(model, generator, seconds: float) -> float:
    """Images/s of `fit` on 4 batches of `generator` prepared beforehand, for about `seconds` (first step out)."""
    import keras

    class Prepared(keras.utils.PyDataset):
        def __init__(self, batches: list) -> None:
            super().__init__()
            self.batches = batches

        def __len__(self) -> int:
            return 10**6

        def __getitem__(self, index: int):
            return self.batches[index % len(self.batches)]

    prepared = Prepared([generator[i % len(generator)] for i in range(4)])
    limit = time_limit_callback(seconds)
    model.fit(prepared, epochs=1, callbacks=[limit], verbose=0)
    return (len(limit.ends) - 1) * len(prepared.batches[0][0]) / (limit.ends[-1] - limit.ends[0])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, help="training time (default: 300, --quick: 60)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 60 s of training on 120 images")
    p.add_argument("--backbone", default="resnet50", help="any name model.retinanet.retinanet takes "
                   "(default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-4, help="Adam learning rate (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--min-side", type=int, default=120, help="(default: %(default)s)")
    p.add_argument("--max-side", type=int, default=160, help="(default: %(default)s)")
    p.add_argument("--width", type=int, default=160, help="generated image width (default: %(default)s)")
    p.add_argument("--height", type=int, default=120, help="generated image height (default: %(default)s)")
    p.add_argument("--n-train", type=int, help="training images (default: 400, --quick: 120)")
    p.add_argument("--n-validation", type=int, help="validation images (default: 60, --quick: 24)")
    p.add_argument("--workers", type=int, default=2, help="generator threads during training (default: %(default)s)")
    p.add_argument("--seed", type=int, default=2018)
    p.add_argument("--out-dir", default="bench_output")
    args = p.parse_args(argv)
    defaults = QUICK if args.quick else {"seconds": 300.0, "n_train": 400, "n_validation": 60}
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    from oid_retinanet.data.augment import RandomTransform
    from oid_retinanet.data.datasets import load_level_data
    from oid_retinanet.data.generator import GeneratorConfig, OpenImagesGenerator
    from oid_retinanet.evaluate import EvalClasses, evaluate_predictions, read_ground_truth
    from oid_retinanet.model.backbones import feature_shapes_fn
    from oid_retinanet.model.retinanet import retinanet
    from oid_retinanet.train.callbacks import level_ground_truth, predict_generator
    from oid_retinanet.train.trainer import INTENSITY_CHANGE, compile_model

    keras.utils.set_random_seed(args.seed)
    work = Path(args.out_dir).resolve() / "train_bench"
    shutil.rmtree(work, ignore_errors=True)
    t = time.perf_counter()
    logging.disable(logging.INFO)  # the stage scripts' reports; their warnings and errors still show
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            level = make_level(work, args.n_train, args.n_validation, args.width, args.height, args.seed)
    finally:
        logging.disable(logging.NOTSET)
        logging.basicConfig(level=logging.WARNING, force=True)
    data_s = time.perf_counter() - t
    train_data = load_level_data(**level["train"])
    val_data = load_level_data(**level["validation"])
    try:
        model = retinanet(train_data.num_classes, backbone=args.backbone)
        shapes = feature_shapes_fn(args.backbone)
    except ValueError as exc:
        p.error(str(exc))
    compile_model(model, args.lr)
    common = dict(batch_size=args.batch_size, min_side=args.min_side, max_side=args.max_side, feature_shapes=shapes)
    config = GeneratorConfig(**common, transform=RandomTransform.FLIP_X, intensity=INTENSITY_CHANGE, steps=100,
                             seed=args.seed)
    train_gen = OpenImagesGenerator(train_data, config, workers=args.workers)
    val_gen = OpenImagesGenerator(val_data, GeneratorConfig(**common, sampling="sequential"))
    print(f"{train_data.num_classes} classes, {len(train_data)} training and {len(val_data)} validation images "
          f"({args.width}x{args.height}, made in {data_s:.1f} s); {args.backbone}, "
          f"{model.count_params() / 1e6:.1f} M parameters, batch {args.batch_size}, lr {args.lr:g}; "
          f"training for {args.seconds:.0f} s ...", flush=True)

    limit = time_limit_callback(args.seconds)
    t = time.perf_counter()
    model.fit(train_gen, epochs=10**6, callbacks=[limit], verbose=0)
    fit_s = time.perf_counter() - t
    steps = len(limit.ends)
    train_rate = (steps - 1) * args.batch_size / (limit.ends[-1] - limit.ends[0]) if steps > 1 else float("nan")
    first_loss = float(np.nanmean(limit.losses[:10]))
    last_loss = float(np.nanmean(limit.losses[-10:]))

    t = time.perf_counter()
    predictions = list(predict_generator(val_gen, model))
    predict_s = time.perf_counter() - t
    voc = evaluate_predictions(level_ground_truth(val_gen.data), predictions, metric="voc")
    dataset = level["dataset"]
    gt = read_ground_truth(str(dataset / "annotations" / "validation-annotations-bbox.csv"),
                           str(dataset / "annotations" / "validation-annotations-human-imagelabels-boxable.csv"),
                           EvalClasses.from_mids(train_data.classes.mids, train_data.classes.names))
    oid = evaluate_predictions(gt, predictions, metric="oid")

    gen_rate = generator_rate(OpenImagesGenerator(train_data, config), batches=20)
    step_rate = model_step_rate(model, train_gen, seconds=min(20.0, args.seconds / 5))
    result = {
        "backend": keras.backend.backend(), "backbone": args.backbone, "classes": train_data.num_classes,
        "train_images": len(train_data), "validation_images": len(val_data), "image_size": [args.width, args.height],
        "sides": [args.min_side, args.max_side], "batch_size": args.batch_size, "lr": args.lr,
        "seconds_limit": args.seconds, "fit_s": fit_s, "first_step_s": limit.ends[0] - limit.begin, "steps": steps,
        "images_trained": steps * args.batch_size,
        "epochs_of_training_set": steps * args.batch_size / len(train_data),
        "loss_first_10_steps": first_loss, "loss_last_10_steps": last_loss,
        "train_images_per_s": train_rate, "model_step_images_per_s": step_rate, "generator_images_per_s": gen_rate,
        "ratio_generator_over_model_step": gen_rate / step_rate,
        "outside_model_share": 1 - train_rate / step_rate,
        "voc_map": voc.mean_ap, "oid_map": oid.mean_ap, "detections": int(sum(len(x.scores) for x in predictions)),
        "predict_s": predict_s, "peak_rss_mb": peak_rss_mb(), "quick": args.quick, "machine": machine_info()}
    write_result(args.out_dir, "bench_train_quick" if args.quick else "bench_train", result)
    print(f"trained {steps} steps x {args.batch_size} images in {fit_s:.0f} s (the first, tracing the graph: "
          f"{result['first_step_s']:.0f} s) "
          f"({result['epochs_of_training_set']:.1f} passes over the training set); loss {first_loss:.3f} (first "
          f"10 steps) -> {last_loss:.3f} (last 10)")
    print(f"validation mAP after {args.seconds:.0f} s: VOC-style {voc.mean_ap:.4f}, OID challenge metric "
          f"{oid.mean_ap:.4f} ({result['detections']} detections on {len(val_data)} images, predicted in "
          f"{predict_s:.1f} s)")
    print(f"images/s: training {train_rate:.2f}, model step alone {step_rate:.2f}, generator alone (one thread) "
          f"{gen_rate:.1f}: the generator is {result['ratio_generator_over_model_step']:.1f}x the model step; "
          f"{100 * result['outside_model_share']:.0f}% of the training time is outside the model; "
          f"peak {result['peak_rss_mb']:.0f} MB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
