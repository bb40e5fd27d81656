"""`make demo`: the whole pipeline on a generated dataset, each stage's script run as a user would run it.

Makes the demo dataset (five Open Images classes drawn as shapes, `demo/dataset.py`), then in the documented
order: level files (2018 and 2019), image parameters, and for each of two seeds: training a level-1 ResNet50
from scratch on the CPU (the five classes, small images, a few minutes), conversion to an inference model,
inference on the validation images with flip TTA (and drawn detections), expansion to parent classes; then an
ensemble of the two models (weighted boxes fusion) and the official OID mAP of the level-1, the expanded and
the ensembled predictions. Then gujingxiao's 2019 flow on the same data: the train images gathered into one
folder, the exists split of label level 2, a level-2 model trained from the first 2018 model (its backbone
frozen, as the 2019 README starts from the 2018 weights), converted and scored on that split (VOC),
its predictions of the validation images, the levels joined, parent classes added, and the official mAP of
that submission (`flow_2019_map`; level 2 holds two of the five classes, so it scores lower).

Writes everything under demo_output/ (or --output-dir) and demo_output/summary.json: each stage's command,
output files and seconds, the three mAPs (`level1_map`, `expanded_map`, `ensemble_map`) and the model the web
demo serves by default (`serve_weights`). Stage 4 and the web demo take the model's classes and sides from its
card, with no flag. --quick: a smaller dataset and a few training steps, to check that every stage runs (its
mAPs mean nothing).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from oid_retinanet.demo.dataset import CLASSES, DatasetSpec, make_dataset

REPO = Path(__file__).resolve().parent.parent.parent
LABELS_FILTER = ",".join(CLASSES.values())


@dataclass(frozen=True)
class Plan:
    """The sizes of a demo run: dataset, training schedule, and the two snapshots that are ensembled."""

    dataset: DatasetSpec
    backbone: str = "resnet50"
    epochs: int = 12
    steps: int = 20
    batch_size: int = 4
    lr: float = 1e-4  # from scratch; the original's 1e-5 fine-tunes an ImageNet backbone
    # 96/128 (the 320x240 images at 0.4x): ensemble mAP 0.61 for 0.64x the training compute of 120/160 (0.67);
    # 8 epochs at 120/160 fell to 0.55
    min_side: int = 96
    max_side: int = 128
    seeds: tuple[int, ...] = (0, 1)  # one model per seed (initial weights, image draw, augmentation)
    # the 2019 level-2 model starts from the first 2018 model with its backbone frozen, as gujingxiao's README
    # starts from the 2018 weights: a few epochs suffice
    epochs_2019: int = 2
    visualize: int = 8


FULL = Plan(DatasetSpec())
QUICK = Plan(DatasetSpec(n_train=16, n_validation=8, n_test=4), epochs=1, steps=2, batch_size=2, visualize=2,
             epochs_2019=1)


@dataclass
class Stage:
    name: str
    command: list[str]
    outputs: Path  # folder (new files in it) or file
    map_json: Path | None = None  # an evaluation stage: where its mAP is


def _stages(data: Path, out: Path, plan: Plan) -> list[Stage]:
    levels, models, subm = out / "output", out / "models", out / "subm"
    annotations = data / "annotations"
    stages = [
        Stage("1. level files (2018)", ["create_files_for_training_by_levels.py", "--dataset-path", str(data),
                                        "--output-path", str(levels), "--low-samples"], levels),
        Stage("1b. level files (2019)", ["labelProcess/create_files_for_training_by_levels.py", "--train-csv",
                                         str(data / "challenge-2019-train-detection-bbox.csv"),
                                         "--output-path", str(out / "output_2019")], out / "output_2019"),
        Stage("2. image parameters", ["retinanet_training_level_1/find_image_parameters.py", "--dataset-path",
                                      str(data), "--output-path", str(levels), "--subsets", "train", "validation",
                                      "test"], levels),
    ]
    for seed in plan.seeds:
        name = f"model_{seed}"
        snapshots = models / f"snapshots_{seed}"
        inference = models / f"demo_{name}_inference.keras"
        stages += [
            Stage(f"3. train level-1 model {seed} from scratch ({plan.backbone}, {plan.epochs} x {plan.steps} steps)", [
                f"retinanet_training_level_1/train_oid_level_1_{plan.backbone}.py", "--no-weights", "--labels-filter",
                LABELS_FILTER, "--dataset-path", str(data), "--output-path", str(levels), "--snapshot-path",
                str(snapshots), "--image-min-side", str(plan.min_side), "--image-max-side", str(plan.max_side),
                "--batch-size", str(plan.batch_size), "--epochs", str(plan.epochs), "--steps", str(plan.steps),
                "--lr", str(plan.lr), "--seed", str(seed), "--no-evaluation", "--snapshot-every", str(plan.epochs)],
                snapshots),
            Stage(f"3b. convert model {seed} to an inference model", [
                "retinanet_training_level_1/convert_retinanet_model.py",
                str(snapshots / f"{plan.backbone}_oid_level_1_{plan.epochs:02d}.keras"), str(inference)], inference),
            Stage(f"4. predict the validation images with model {seed} (flip TTA)", [
                "retinanet_inference_example.py", "--weights", str(inference), "--images", str(data / "validation"),
                "--cache-dir", str(out / f"cache_{name}"),
                "--output", str(subm / f"{name}_level_1.csv"), "--visualize", str(plan.visualize)],
                subm / f"{name}_level_1.csv"),
            Stage(f"5. add parent classes to model {seed}'s predictions", [
                "create_higher_level_predictions_from_level_1_predictions_csv.py", str(subm / f"{name}_level_1.csv"),
                str(subm / f"{name}_expanded.csv")], subm / f"{name}_expanded.csv"),
        ]
    stages.append(Stage("6. ensemble of the models", [
        "ensemble_predictions_with_weighted_method.py", "--csvs",
        *[str(subm / f"model_{seed}_expanded.csv") for seed in plan.seeds], "--type", "wbf", "--output",
        str(subm / "ensemble.csv")],
        subm / "ensemble.csv"))
    first = f"model_{plan.seeds[0]}"
    for key, csv in (("level1_map", f"{first}_level_1.csv"), ("expanded_map", f"{first}_expanded.csv"),
                     ("ensemble_map", "ensemble.csv")):
        folder = out / "eval" / key
        stages.append(Stage(f"7. OID mAP of {csv}", [
            "evaluate_oid_map.py", "--predictions", str(subm / csv),
            "--gt-boxes", str(annotations / "validation-annotations-bbox.csv"),
            "--gt-labels", str(annotations / "validation-annotations-human-imagelabels-boxable.csv"),
            "--output-dir", str(folder)], folder, folder / "map.json"))
    return stages + _stages_2019(data, out, plan)


def _stages_2019(data: Path, out: Path, plan: Plan) -> list[Stage]:
    """gujingxiao's 2019 flow on the same data, as its README orders it: the train images in one folder, the exists
    split of a label level, image parameters, a model of that level, its evaluation on the split, its predictions
    of the validation images, the levels joined, parent classes, and the official mAP of that submission."""
    from oid_retinanet import resources

    level, d19, o19, subm = "2", out / "dataset_2019", out / "output_2019", out / "subm"
    snapshots = out / "models" / "snapshots_2019"
    inference = out / "models" / f"demo_level_{level}_2019_inference.keras"
    start = out / "models" / f"snapshots_{plan.seeds[0]}" / f"{plan.backbone}_oid_level_1_{plan.epochs:02d}.keras"
    sides = ["--image-min-side", str(plan.min_side), "--image-max-side", str(plan.max_side)]
    folders = sorted(str(p) for p in (data / "train").iterdir() if p.is_dir())
    level_csv, joined, expanded = (subm / f"{name}_2019.csv" for name in (f"level_{level}", "all_levels", "expanded"))
    voc, oid = out / "eval" / "level2_2019_voc_map", out / "eval" / "flow_2019_map"
    return [
        Stage("8a. 2019: the train images in one folder", ["labelProcess/resize_move_images.py", *folders,
                                                          str(d19 / "train"), "--copy", "--no-progress"], d19),
        Stage(f"8b. 2019: exists split of level {level}", [
            "labelProcess/gen_exists_annotation.py", "--levels", level, "--images", str(d19 / "train"),
            "--output-path", str(o19), "--ratio", "0.25", "--split-level-images", "--seed", "0"],
              o19 / f"level_{level}_files"),
        Stage("8c. 2019: image parameters", ["labelProcess/collect_image_parameters.py", "--images", str(d19 / "train"),
                                             "--subset", "train", "--output-path", str(o19)],
              o19 / "train_image_params.csv"),
        Stage(f"8d. 2019: train a level-{level} model from the first 2018 model, backbone frozen "
              f"({plan.epochs_2019} x {plan.steps} steps)", [
                  "retinanet_training_oid_2019/train_oid_2019_resnet50.py", "--label-level", level, "--weights",
                  str(start), "--freeze-backbone", "--dataset-path", str(d19), "--output-path", str(o19),
                  "--snapshot-path", str(snapshots), *sides, "--batch-size", str(plan.batch_size), "--epochs",
                  str(plan.epochs_2019), "--steps", str(plan.steps), "--lr", str(plan.lr), "--seed", "0",
                  "--no-evaluation", "--snapshot-every", str(plan.epochs_2019)], snapshots),
        Stage("8e. 2019: convert it", ["retinanet_training_oid_2019/convert_retinanet_model.py",
                                       str(snapshots / f"resnet50_oid_level_{level}_{plan.epochs_2019:02d}.keras"),
                                       str(inference)], inference),
        Stage("8f. 2019: its VOC mAP on the val-exists split", [
            "retinanet_training_oid_2019/eval_oid_2019_resnet50.py", "--label-level", level, "--weights",
            str(inference), "--dataset-path", str(d19), "--output-path", str(o19), "--output-dir", str(voc)],
              voc, voc / "map.json"),
        Stage(f"8g. 2019: level-{level} predictions of the validation images", [
            "retinanet_inference_submission/retinanet_inference_make_submission.py", "--label-level", level,
            "--weights", str(inference), "--images", str(data / "validation"), "--cache-dir",
            str(out / f"cache_2019_level_{level}"), "--output", str(level_csv)], level_csv),
        Stage("8h. 2019: the levels joined", ["retinanet_inference_submission/concat_all_levels_submission.py",
                                              str(level_csv), "-o", str(joined)], joined),
        Stage("8i. 2019: parent classes (the shipped 500-class list and hierarchy for the 2019 files)", [
            "retinanet_inference_submission/create_higher_level_predctions.py", str(joined), str(expanded),
            "--class-descriptions", resources.CLASS_DESCRIPTIONS_500_CSV, "--hierarchy", resources.HIERARCHY_JSON,
            "--hierarchy-names", resources.CLASS_DESCRIPTIONS_CSV], expanded),
        Stage("8j. OID mAP of the 2019 submission", [
            "evaluate_oid_map.py", "--predictions", str(expanded),
            "--gt-boxes", str(data / "annotations" / "validation-annotations-bbox.csv"),
            "--gt-labels", str(data / "annotations" / "validation-annotations-human-imagelabels-boxable.csv"),
            "--output-dir", str(oid)], oid, oid / "map.json"),
    ]


def _files(path: Path, since: float) -> list[str]:
    if path.is_file():
        return [str(path)]
    return sorted(str(p) for p in path.rglob("*") if p.is_file() and p.stat().st_mtime >= since)


def _table(paths: list[str], limit: int = 8) -> str:
    lines = []
    for p in paths[:limit]:
        if p.endswith((".csv", ".txt", ".json")):
            with open(p, "rb") as f:
                size = f"{sum(1 for _ in f):>8} lines"
        else:
            size = f"{os.path.getsize(p) / 1e6:>8.1f} MB"
        lines.append(f"    {os.path.relpath(p):<88} {size}")
    if len(paths) > limit:
        lines.append(f"    ... and {len(paths) - limit} more")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--output-dir", default="demo_output",
                   help="emptied first when it holds an earlier demo run (default: %(default)s)")
    p.add_argument("--seed", type=int, default=DatasetSpec.seed, help="seed of the generated dataset")
    p.add_argument("--quick", action="store_true", help="a tiny run that checks every stage (mAPs meaningless)")
    p.add_argument("--epochs", type=int, help=f"training epochs of each model (default: {FULL.epochs})")
    p.add_argument("--steps", type=int, help=f"batches per epoch (default: {FULL.steps})")
    args = p.parse_args(argv)
    plan = QUICK if args.quick else FULL
    plan = replace(plan, epochs=args.epochs or plan.epochs, steps=args.steps or plan.steps)
    out = Path(args.output_dir).resolve()
    if out.exists() and any(out.iterdir()):
        # A new run on top of an old one would mix them (stage 4 skips images already in a cache folder).
        if not ((out / "summary.json").exists() or (out / "dataset").is_dir()):
            print(f"{out} is not empty and holds no earlier demo run: choose another --output-dir", file=sys.stderr)
            return 2
        print(f"== removing the earlier demo run in {out}", flush=True)
        shutil.rmtree(out)
    data = out / "dataset"
    summary: dict = {"stages": []}
    started = time.perf_counter()

    t = time.perf_counter()
    spec = DatasetSpec(**{**plan.dataset.__dict__, "seed": args.seed})
    counts = make_dataset(str(data), spec)
    seconds = time.perf_counter() - t
    print(f"== 0. dataset: {counts} images under {data} ({seconds:.1f} s)", flush=True)
    summary["stages"].append({"name": "0. dataset", "outputs": [str(data)], "seconds": round(seconds, 2)})

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               TF_CPP_MIN_LOG_LEVEL="2")
    for stage in _stages(data, out, plan):
        start_wall = time.time() - 1
        t, before = time.perf_counter(), resource.getrusage(resource.RUSAGE_CHILDREN)
        proc = subprocess.run([sys.executable, str(REPO / stage.command[0]), *stage.command[1:]], cwd=REPO, env=env,
                              capture_output=True, text=True)
        seconds, after = time.perf_counter() - t, resource.getrusage(resource.RUSAGE_CHILDREN)
        # CPU time beside the wall time: a slow machine shows whether the time went to the kernel (sys)
        user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
        if proc.returncode != 0:
            print(proc.stdout[-5000:] + proc.stderr[-5000:], file=sys.stderr)
            print(f"== {stage.name}: FAILED (exit {proc.returncode})", file=sys.stderr)
            return 1
        outputs = _files(stage.outputs, start_wall)
        record = {"name": stage.name, "command": ["python", *stage.command], "outputs": outputs,
                  "seconds": round(seconds, 2), "user_seconds": round(user, 2), "sys_seconds": round(system, 2)}
        print(f"== {stage.name}: {seconds:.1f} s (CPU: user {user:.1f} s, sys {system:.1f} s)\n"
              f"   $ python {' '.join(stage.command)}\n{_table(outputs)}", flush=True)
        if stage.map_json is not None:
            key = stage.map_json.parent.name
            record[key] = summary[key] = json.loads(stage.map_json.read_text())["mAP"]
            print(f"   {key} = {summary[key]:.4f}", flush=True)
        summary["stages"].append(record)

    first = f"model_{plan.seeds[0]}"
    summary["serve_weights"] = str(out / "models" / f"demo_{first}_inference.keras")
    summary["visualized"] = sorted(str(p) for p in (out / f"cache_{first}" / "visualize").glob("*"))
    summary["seconds"] = round(time.perf_counter() - started, 1)
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    summary["user_seconds"] = round(sum(u.ru_utime for u in usage), 1)
    summary["sys_seconds"] = round(sum(u.ru_stime for u in usage), 1)
    path = out / "summary.json"
    path.write_text(json.dumps(summary, indent=1))
    print(f"\nOID mAP on the validation split: level 1 {summary['level1_map']:.4f}, with parent classes "
          f"{summary['expanded_map']:.4f}, ensemble of {len(plan.seeds)} models "
          f"{summary['ensemble_map']:.4f}; the 2019 flow (one level-2 model, parents added) "
          f"{summary['flow_2019_map']:.4f} (its VOC mAP on the val-exists split {summary['level2_2019_voc_map']:.4f})")
    print(f"detections drawn: {out / f'cache_{first}' / 'visualize'}\nsummary: {path} ({summary['seconds']:.0f} s; "
          f"CPU: user {summary['user_seconds']:.0f} s, sys {summary['sys_seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
