"""Stage 3: train RetinaNet on one level's files, the entry shared by `train_oid_level_1_resnet{50,101,152}.py`.

The flags are keras-retinanet's `train.py` where it had them; each script differs only in its backbone and
image sizes (ResNet50 and ResNet101: 768/1024, ResNet152: 600/800, as the original scripts). Inputs come from
stages 1 and 2: `OUTPUT_PATH/level_N_files/{train,validation}-annotations-bbox-level-N.csv`, the class file
beside them, `OUTPUT_PATH/{train,validation}_image_params.csv`, and the images under
`DATASET_PATH/{train,validation}/` (flat or one subfolder deep).

Written to --snapshot-path (default MODELS_PATH/snapshots/): a snapshot after every epoch (with --snapshot-every N
after every N-th and the last: `resnet50_oid_level_1_05.keras`: model, optimizer state, compile settings and the
model card: backbone, classes, sides, anchors (--config), training data; model/card.py),
`training_log.csv` (loss and mAP per epoch, appended across resumed runs), `training_config.json` (the
resolved settings), `classes.csv` (the model's classes in output order: `--labels` of
retinanet_inference_example.py) and `mAP_stat_<backbone>.txt` (each evaluation appended as the original did: a
line per class, then `Ep E: mAP: M`).
`--snapshot FILE` resumes at the epoch in its name with its optimizer state (or only the weights, from a
keras-retinanet .h5); `--resume` picks the newest snapshot in --snapshot-path and takes the earlier run's
settings from its `training_config.json` for every option not given again (those given win, and the
differences are logged).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import logging
import os
import platform
import re
import sys
from dataclasses import asdict, dataclass, fields
from typing import TYPE_CHECKING

from oid_retinanet.cli import fraction, positive_float, positive_int
from oid_retinanet.errors import OIDInputError

if TYPE_CHECKING:
    from oid_retinanet.data.datasets import Source

log = logging.getLogger(__name__)
TRAINER_DOC = "\n" + __doc__

LEARNING_RATE = 1e-5
CLIPNORM = 0.001
LR_FACTOR, LR_PATIENCE, LR_MIN_DELTA, LR_MIN = 0.9, 2, 1e-4, 1e-7
INTENSITY_CHANGE = (-30, 30)
CONFIG_FILE = "training_config.json"
# Options --resume does not take from the earlier run's configuration: how to start, where, and the run's identity.
NOT_RESUMED = frozenset({"snapshot", "resume", "weights", "imagenet_weights", "imagenet_source", "models_path",
                         "snapshot_path", "backbone", "level", "gpu", "verbose", "multi_gpu_force",
                         "initial_epoch", "cluster", "worker_index", "worker_timeout"})
MIXED_POLICIES = {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
# gujingxiao's train_oid_2019_resnet50.py: the exists split, batch 2, 100 epochs, Adam 1e-4, learning rate x0.8
FLOW_2019 = {"split": "exists", "batch_size": 2, "epochs": 100, "lr": 1e-4, "reduce_lr_factor": 0.8}


@dataclass
class TrainConfig:
    """One training run with every setting resolved: what `train` takes. The scripts make it from their flags
    (`parse_config`: --resume's earlier settings and keras-retinanet's forms applied); the flags' defaults are
    this class's."""

    backbone: str
    dataset_path: str
    output_path: str
    snapshot_path: str
    models_path: str
    image_min_side: int
    image_max_side: int
    level: str = "1"
    dataset_format: str = "oid"  # data.datasets.FORMATS: oid level files, keras-retinanet csv, coco json
    split: str = "levels"  # which files: oid.levels.SPLITS
    select: bool = False  # split "exists": the -select file of labelProcess/tooMuch_label_select.py
    train_annotations: str | None = None  # instead of the split's file
    validation_annotations: str | None = None
    csv_classes: str | None = None  # the class file of a csv dataset
    labels_filter: list[str] | None = None  # display names or MIDs, in model output order
    snapshot: str | None = None  # resume from this file
    resume: bool = False
    weights: str | None = None  # initialise from this model file
    imagenet_weights: bool = True
    imagenet_source: str = "fizyr"
    anchor_config: str | None = None  # keras-retinanet's config.ini (--config)
    batch_size: int = 1
    epochs: int = 500
    steps: int = 10000
    initial_epoch: int | None = None
    lr: float = LEARNING_RATE
    optimizer_clipnorm: float = CLIPNORM
    reduce_lr_patience: int = LR_PATIENCE
    reduce_lr_factor: float = LR_FACTOR
    group: str = "ratio"
    sampling: str | None = None  # balanced or shuffle; None: balanced for oid (the original's), shuffle otherwise
    seed: int = 0
    random_transform: bool = False
    intensity_change: bool = True
    freeze_backbone: bool = False
    mixed_precision: str | None = None
    multi_gpu: int = 0
    multi_gpu_force: bool = False
    cluster: list[str] | None = None  # HOST:PORT of every worker (the first coordinates), or ["auto"]
    worker_index: int | None = None
    worker_timeout: int = 100
    workers: int = 2
    max_queue_size: int = 10
    snapshots: bool = True
    snapshot_every: int = 1
    keep_snapshots: int = 0
    evaluation: bool = True
    eval_metric: str = "voc"
    weighted_average: bool = False
    compute_val_loss: bool = False
    tensorboard_dir: str | None = None
    tensorboard_freq: str = "epoch"
    gpu: str | None = None
    verbose: bool = False

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> TrainConfig:
        """The settings of parsed flags (those of keras-retinanet's forms that map onto others are dropped)."""
        return cls(**{f.name: getattr(args, f.name) for f in fields(cls)})


def _default(name: str):
    """TrainConfig's default of a setting, for its flag."""
    return TrainConfig.__dataclass_fields__[name].default


def build_parser(backbone: str, description: str, paths: dict[str, str], defaults: dict | None = None
                 ) -> argparse.ArgumentParser:
    """The options of a training script for `backbone` (whose registry entry gives the default image sides);
    `paths` gives the defaults of a00 (DATASET_PATH, OUTPUT_PATH, MODELS_PATH); `defaults` other defaults of
    the script (FLOW_2019 for the 2019 one)."""
    from oid_retinanet.data.datasets import add_dataset_options
    from oid_retinanet.model.backbones import default_sides
    from oid_retinanet.oid.levels import SPLITS

    min_side, max_side = default_sides(backbone)
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--snapshot", help="resume from this snapshot (.keras of ours, or a keras-retinanet .h5)")
    start.add_argument("--imagenet-weights", dest="imagenet_weights", action="store_const", const=True, default=True,
                       help="initialise the backbone with ImageNet weights (the default; downloads once)")
    start.add_argument("--weights", help="initialise from this model file (layers that do not match are skipped)")
    start.add_argument("--no-weights", dest="imagenet_weights", action="store_const", const=False,
                       help="start from random weights")
    p.add_argument("--resume", action="store_true",
                   help="resume from the newest snapshot in --snapshot-path if there is one (else start as the "
                        "other flags say), with the earlier run's settings (its training_config.json) for the "
                        "options not given again")
    p.add_argument("--imagenet-source", default=_default("imagenet_source"), choices=["fizyr", "keras"],
                   help="ImageNet weights: fizyr's caffe ResNets (keras-retinanet's) or keras.applications' "
                        "(default: %(default)s)")
    p.add_argument("--models-path", default=paths["MODELS_PATH"],
                   help="where downloaded ImageNet weights are kept (default: %(default)s)")
    p.add_argument("--backbone", default=backbone, type=_backbone,
                   help="resnet50, resnet101, resnet152, or a MobileNet: mobilenet{128,160,192,224}_{0.25,0.5,0.75,"
                        "1.0} (small and fast, e.g. to train from scratch on a CPU) (default: %(default)s)")
    p.add_argument("--level", "--label-level", default=_default("level"),
                   help="level to train: N reads level_N_files/ (default: %(default)s)")
    p.add_argument("--split", choices=SPLITS, default=_default("split"),
                   help="levels: stage 1's train and validation files (images in DATASET_PATH/train/ and "
                        "validation/); exists: the 2019 exists split of labelProcess/gen_exists_annotation.py "
                        "(train-exists / val-exists files, both subsets' images in DATASET_PATH/train/) "
                        "(default: %(default)s)")
    p.add_argument("--select", action="store_true",
                   help="with --split exists: train on the -select file of labelProcess/tooMuch_label_select.py")
    add_dataset_options(p, "--train-annotations, --validation-annotations")
    p.add_argument("--train-annotations", metavar="FILE", help="train on this annotation file instead of the "
                   "split's (csv: the dataset's rows; coco: an instances JSON)")
    p.add_argument("--validation-annotations", "--val-annotations", metavar="FILE",
                   help="validate on this annotation file instead of the split's (a csv dataset without one "
                        "trains without per-epoch mAP, as keras-retinanet)")
    p.add_argument("--labels-filter", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   help="train only these classes: comma-separated display names or MIDs, in model output order "
                        "(keras-retinanet's oid option; exact names)")
    p.add_argument("--dataset-path", default=paths["DATASET_PATH"], help="images (default: %(default)s)")
    p.add_argument("--output-path", default=paths["OUTPUT_PATH"],
                   help="level files and image parameters (default: %(default)s)")
    p.add_argument("--snapshot-path", default=os.path.join(paths["MODELS_PATH"], "snapshots"),
                   help="snapshots, log and configuration (default: %(default)s)")
    p.add_argument("--tensorboard-dir", help="write TensorBoard logs here (TensorFlow backend)")
    p.add_argument("--batch-size", type=positive_int, default=_default("batch_size"), help="(default: %(default)s)")
    p.add_argument("--multi-gpu", type=int, default=_default("multi_gpu"),
                   help="train data-parallel on this many devices (GPUs; logical CPU devices where there is no GPU)")
    p.add_argument("--multi-gpu-force", action="store_true", help="accepted for compatibility; not needed")
    p.add_argument("--cluster", type=lambda t: [x.strip() for x in t.split(",") if x.strip()],
                   metavar="HOST:PORT,HOST:PORT,...",
                   help="train on several machines (JAX backend: KERAS_BACKEND=jax): every worker's address, the "
                        "first coordinating; run the same command on each with its --worker-index. `auto`: the "
                        "cluster JAX finds itself (SLURM, Open MPI, ...). --batch-size is the global batch; worker 0 "
                        "alone writes snapshots, logs and the evaluation (README: several machines)")
    p.add_argument("--worker-index", type=int, metavar="I", help="this worker's place in --cluster (from 0)")
    p.add_argument("--worker-timeout", type=positive_int, default=_default("worker_timeout"), metavar="S",
                   help="seconds without a sign of life after which a lost worker stops the others "
                        "(default: %(default)s)")
    p.add_argument("--epochs", type=positive_int, default=_default("epochs"), help="(default: %(default)s)")
    p.add_argument("--steps", type=positive_int, default=_default("steps"),
                   help="batches per epoch (default: %(default)s)")
    p.add_argument("--lr", type=positive_float, default=_default("lr"),
                   help=f"Adam learning rate, clipnorm {CLIPNORM} (default: %(default)s)")
    p.add_argument("--no-snapshots", dest="snapshots", action="store_false", help="do not save snapshots")
    p.add_argument("--snapshot-every", type=positive_int, default=_default("snapshot_every"), metavar="N",
                   help="save a snapshot every N epochs and after the last one; a killed run resumes from the newest "
                        "(default: %(default)s, every epoch as the original)")
    p.add_argument("--keep-snapshots", type=int, default=_default("keep_snapshots"), metavar="N",
                   help="keep only the newest N snapshots of this run (a ResNet50's is ~440 MB with its optimizer "
                        "state); 0 keeps all, as the original (default: %(default)s)")
    p.add_argument("--no-evaluation", dest="evaluation", action="store_false", help="no per-epoch validation mAP")
    p.add_argument("--eval-metric", choices=["voc", "oid"], default=_default("eval_metric"),
                   help="per-epoch metric: keras-retinanet's VOC-style mAP (the original's) or the OID "
                        "challenge rules on the level's boxes (default: %(default)s)")
    p.add_argument("--freeze-backbone", action="store_true", help="do not train the ResNet layers")
    p.add_argument("--random-transform", action="store_true",
                   help="random rotation, translation, shear, scaling and flips (default: horizontal flips only)")
    p.add_argument("--no-intensity-change", dest="intensity_change", action="store_false",
                   help="no random per-channel intensity change (the original always applied it)")
    p.add_argument("--config", dest="anchor_config", metavar="FILE",
                   help="keras-retinanet's config.ini: [anchor_parameters] sizes, strides, ratios, scales (default: "
                        "keras-retinanet's anchors; recorded in every snapshot's model card)")
    p.add_argument("--image-min-side", type=positive_int, default=min_side, help="(default: %(default)s)")
    p.add_argument("--image-max-side", type=positive_int, default=max_side, help="(default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=_default("workers"),
                   help="threads preparing batches (default: %(default)s)")
    p.add_argument("--mixed-precision", nargs="?", const="bfloat16", choices=sorted(MIXED_POLICIES),
                   help="compute in bfloat16 (default when given) or float16, weights in float32")
    kr = p.add_argument_group(
        "keras-retinanet's train.py", "its flags, mapped onto the ones above where they differ (the log says how). "
        "Its dataset forms `oid DATASET_PATH`, `csv ANNOTATIONS CLASSES [--val-annotations FILE]` and `coco "
        "COCO_PATH` are taken (after the options), with `--version v4` and --annotation-cache-dir accepted; "
        "--no-resize and --parent-label are refused with the reason.")
    kr.add_argument("dataset", nargs="*", metavar="oid DATASET_PATH", help=argparse.SUPPRESS)
    kr.add_argument("--optimizer-clipnorm", type=positive_float, default=_default("optimizer_clipnorm"),
                    help="Adam's gradient clipping by norm, for a new optimizer (default: %(default)s)")
    kr.add_argument("--reduce-lr-patience", type=positive_int, default=_default("reduce_lr_patience"),
                    help="epochs without a lower loss before the learning rate drops (default: %(default)s)")
    kr.add_argument("--reduce-lr-factor", type=fraction, default=_default("reduce_lr_factor"),
                    help="the learning rate's factor then (default: %(default)s, the original's)")
    kr.add_argument("--initial-epoch", type=int, help="the epoch to count from (default: the snapshot's, else 0)")
    kr.add_argument("--group-method", choices=["none", "random", "ratio"],
                    help="as --group: ratio is ratio; none and random keep the draw order (--group random)")
    kr.add_argument("--max-queue-size", type=positive_int, default=_default("max_queue_size"),
                    help="batches prepared ahead by the --workers threads (default: %(default)s)")
    kr.add_argument("--multiprocessing", action="store_true",
                    help="accepted; threads prepare the batches (the data pipeline is far faster than the model)")
    kr.add_argument("--tensorboard-freq", default=_default("tensorboard_freq"),
                    help="TensorBoard writes every 'epoch', 'batch' or N batches (default: %(default)s)")
    kr.add_argument("--weighted-average", action="store_true",
                    help="the per-epoch VOC-style mAP weighted by each class's number of boxes")
    kr.add_argument("--compute-val-loss", action="store_true",
                    help="the validation loss after every epoch too (val_loss in the log)")
    kr.add_argument("--no-resize", action="store_true", help=argparse.SUPPRESS)
    kr.add_argument("--version", dest="oid_version", default="v4", help=argparse.SUPPRESS)
    kr.add_argument("--annotation-cache-dir", help=argparse.SUPPRESS)
    kr.add_argument("--parent-label", help=argparse.SUPPRESS)
    kr.add_argument("--fixed-labels", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--group", choices=["ratio", "random"], default=_default("group"),
                   help="batch images of similar aspect ratio, or as drawn (the original) (default: %(default)s)")
    p.add_argument("--sampling", choices=("balanced", "shuffle"),
                   help="balanced: each batch slot draws a class, then an image of it (the original's); shuffle: "
                        "every image in a new random order each pass (keras-retinanet's) (default: balanced for "
                        "oid, shuffle for csv and coco)")
    p.add_argument("--seed", type=int, default=_default("seed"),
                   help="seed of the initial weights, the image draw and the augmentation (default: %(default)s)")
    p.add_argument("--gpu", help="accepted for compatibility: sets CUDA_VISIBLE_DEVICES")
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(**(defaults or {}))
    return p


def _backbone(text: str) -> str:
    from oid_retinanet.model.backbones import family

    try:
        family(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def keras_retinanet_args(args: argparse.Namespace) -> argparse.Namespace:
    """keras-retinanet's forms mapped onto ours (each mapping logged), or refused with the reason."""
    from oid_retinanet.data.datasets import dataset_words

    words = dataset_words(args.dataset)
    if words:
        args.dataset_format = words["format"]
        args.dataset_path = words.get("dataset_path", args.dataset_path)
        args.train_annotations = words.get("annotations", args.train_annotations)
        args.csv_classes = words.get("classes", args.csv_classes)
        log.info("keras-retinanet's `%s`: --dataset-format %s %s", " ".join(args.dataset), args.dataset_format,
                 " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in
                          ("dataset_path", "train_annotations", "csv_classes") if getattr(args, k) in words.values()))
        args.dataset = []
    if args.group_method is not None:
        group = "ratio" if args.group_method == "ratio" else "random"
        log.info("--group-method %s: --group %s", args.group_method, group)
        args.group, args.group_method = group, None
    if args.multiprocessing:
        log.info("--multiprocessing: not needed; %d threads prepare the batches", args.workers)
    if args.annotation_cache_dir:
        log.info("--annotation-cache-dir: not needed; the level files are read directly")
    refused = {"no_resize": "--no-resize: images are always resized (give --image-min-side/--image-max-side); a "
                            "batch of Open Images photos at their own sizes would not fit in memory",
               "parent_label": "--parent-label: train a level of the hierarchy instead (stage 1's level files, "
                               "--level N)"}
    for key, reason in refused.items():
        if getattr(args, key):
            raise OIDInputError(reason)
    if args.fixed_labels:
        log.info("--fixed-labels: the classes are always those of --labels-filter, in its order")
    if args.dataset_format == "csv" and not (args.train_annotations and args.csv_classes):
        raise OIDInputError("--dataset-format csv needs --train-annotations and --csv-classes (or keras-retinanet's "
                            "`csv ANNOTATIONS CLASSES`)")
    if args.select and args.split != "exists":
        raise OIDInputError("--select picks the -select file of the 2019 exists split: give --split exists too")
    if args.oid_version not in ("v4", "challenge2018", "challenge2019"):
        raise OIDInputError(f"--version {args.oid_version}: the level files of stage 1 are read (v4 / the 2018 "
                            "challenge); give --dataset-path and --output-path for another release")
    return args


def check_args(args: argparse.Namespace) -> argparse.Namespace:
    """Contradictions found before any backend starts."""
    if args.cluster:
        if args.cluster != ["auto"] and (args.worker_index is None or not 0 <= args.worker_index < len(args.cluster)):
            raise OIDInputError(f"--cluster names {len(args.cluster)} workers: give --worker-index 0 to "
                                f"{len(args.cluster) - 1}")
        if args.multi_gpu > 1:
            raise OIDInputError("--cluster trains on every device of every worker: leave --multi-gpu out")
        workers = len(args.cluster) if args.cluster != ["auto"] else 1
        if args.batch_size % workers:
            raise OIDInputError(f"--batch-size {args.batch_size} (the global batch) must be a multiple of the "
                                f"{workers} workers")
    if args.multi_gpu > 1 and args.batch_size < args.multi_gpu:
        raise OIDInputError(f"--batch-size {args.batch_size} is smaller than --multi-gpu {args.multi_gpu}")
    if args.multi_gpu > 1 and args.batch_size % args.multi_gpu:
        raise OIDInputError(f"--batch-size {args.batch_size} must be a multiple of --multi-gpu {args.multi_gpu}")
    if args.resume and args.snapshot:
        raise OIDInputError("--resume finds the snapshot itself: give --resume or --snapshot, not both")
    if args.keep_snapshots < 0:
        raise OIDInputError(f"--keep-snapshots {args.keep_snapshots}: give 0 (keep all) or a positive count")
    if args.tensorboard_dir and importlib.util.find_spec("tensorboard") is None:
        raise OIDInputError("--tensorboard-dir needs the tensorboard package, which requirements.txt leaves out: "
                            "pip install tensorboard==2.21.0")
    return args


def given_options(parser: argparse.ArgumentParser, argv: list[str] | None) -> set[str]:
    """The destinations of the options on the command line `argv` (not left at their defaults)."""
    unset = object()
    probe = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != argparse.SUPPRESS})
    parser.parse_args(argv, namespace=probe)  # argparse fills in defaults only where the namespace has none
    # an absent nargs="*" positional (`oid DATASET_PATH`) is set to [] all the same
    return {dest for dest, value in vars(probe).items() if value is not unset and value != []}


def resume_settings(args: argparse.Namespace, given: set[str]) -> argparse.Namespace:
    """With --resume: the earlier run's settings (--snapshot-path/training_config.json, same backbone and level) for
    every option not in `given`; the options given that differ from it are logged."""
    path = os.path.join(args.snapshot_path, CONFIG_FILE)
    if not args.resume or not os.path.isfile(path):
        return args
    try:
        with open(path, encoding="utf-8") as f:
            earlier = json.load(f)
    except (OSError, ValueError) as exc:
        raise OIDInputError(f"not a readable training configuration ({exc}); remove it to resume with the flags "
                            "given", path) from None
    if (earlier.get("backbone"), earlier.get("level")) != (args.backbone, args.level):
        log.warning("%s is of a %s level %s run, not this %s level %s one: its settings are not used", path,
                    earlier.get("backbone"), earlier.get("level"), args.backbone, args.level)
        return args
    restored, changed = [], []
    for key, value in vars(args).items():
        if key in NOT_RESUMED or key not in earlier or earlier[key] == value:
            continue
        if key in given:
            changed.append(f"{key} {earlier[key]!r} -> {value!r}")
        else:
            setattr(args, key, earlier[key])
            restored.append(f"{key}={earlier[key]!r}")
    if restored:
        log.info("--resume: settings of the earlier run (%s): %s", path, ", ".join(restored))
    if changed:
        log.warning("--resume: changed from the earlier run: %s", ", ".join(changed))
    return args


def _sources(config: TrainConfig):
    """The run's train and validation data (data.datasets.Source, by subset)."""
    from oid_retinanet.data.datasets import dataset_sources

    return dataset_sources(config.dataset_format, config.dataset_path, config.output_path, config.level,
                           config.split, config.select, config.train_annotations, config.validation_annotations,
                           config.csv_classes)


def _distribution(n: int):
    """A scope for data-parallel training over n devices (None for one device)."""
    if n <= 1:
        return None
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            devices = [d.name for d in tf.config.list_logical_devices("GPU")][:n]
        else:  # no GPU: split the CPU into n logical devices, which exercises the same code path
            cpu = tf.config.list_physical_devices("CPU")[0]
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * n)
            devices = [d.name for d in tf.config.list_logical_devices("CPU")][:n]
        if len(devices) < n:
            raise OIDInputError(f"--multi-gpu {n}: only {len(devices)} devices")
        log.info("data-parallel training on %s", ", ".join(devices))
        return tf.distribute.MirroredStrategy(devices).scope()
    if backend == "jax":
        import jax

        # Where there is no accelerator, JAX's devices are the CPU's: split it into n, as for TensorFlow above (the
        # count applies to the CPU platform only, and only before JAX starts: else the devices stay as they are).
        with contextlib.suppress(RuntimeError):
            jax.config.update("jax_num_cpu_devices", n)
        devices = jax.devices()
        if len(devices) < n:
            raise OIDInputError(f"--multi-gpu {n}: JAX sees only {len(devices)} devices (for CPU devices set "
                                f"XLA_FLAGS=--xla_force_host_platform_device_count={n})")
        # Variables are replicated on every device and each batch is split along its first axis between them; set
        # before the model is built, so that its variables are created distributed.
        keras.distribution.set_distribution(keras.distribution.DataParallel(devices=devices[:n]))
        log.info("data-parallel training on %s", ", ".join(str(d) for d in devices[:n]))
        return None
    raise OIDInputError(f"--multi-gpu is supported on the tensorflow and jax backends, not {backend}")


def _join_cluster(config: TrainConfig) -> tuple[int, int]:
    """(this worker's index, the number of workers): (0, 1) alone. With --cluster, starts JAX's distributed
    runtime and sets a DataParallel distribution over every device of every worker; each worker then feeds its own
    slice of every global batch (data.generator: `worker`)."""
    if not config.cluster:
        return 0, 1
    import keras

    if keras.backend.backend() != "jax":
        raise OIDInputError(
            f"--cluster trains on the JAX backend (KERAS_BACKEND=jax), not {keras.backend.backend()}: Keras 3's fit "
            "does not run under TensorFlow's MultiWorkerMirroredStrategy (keras-team/keras#20585)")
    import jax

    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # collectives between CPU processes
    if config.cluster == ["auto"]:
        jax.distributed.initialize(heartbeat_timeout_seconds=config.worker_timeout)
    else:
        jax.distributed.initialize(coordinator_address=config.cluster[0], num_processes=len(config.cluster),
                                   process_id=config.worker_index, heartbeat_timeout_seconds=config.worker_timeout)
    index, count = jax.process_index(), jax.process_count()
    if config.batch_size % jax.device_count():
        raise OIDInputError(f"--batch-size {config.batch_size} (the global batch) must be a multiple of the "
                            f"{jax.device_count()} devices of the {count} workers")
    keras.distribution.set_distribution(keras.distribution.DataParallel(devices=jax.devices(),
                                                                        auto_shard_dataset=False))
    log.info("worker %d of %d: data-parallel over %d devices, global batch %d", index, count, jax.device_count(),
             config.batch_size)
    return index, count


def compile_model(model, lr: float = LEARNING_RATE, clipnorm: float = CLIPNORM) -> None:
    """Compile a training model as the original: focal + smooth-L1 losses, Adam with clipnorm 0.001."""
    import keras

    from oid_retinanet.train.losses import FocalLoss, SmoothL1Loss

    model.compile(loss={"regression": SmoothL1Loss(), "classification": FocalLoss()},
                  optimizer=keras.optimizers.Adam(learning_rate=lr, clipnorm=clipnorm))


def _create_model(config: TrainConfig, num_classes: int, anchors):
    """A new compiled training model with these anchors, initialised as the flags say."""
    from oid_retinanet.model.resnet import CONV1_ZERO_PADDING
    from oid_retinanet.model.retinanet import retinanet

    policy = MIXED_POLICIES[config.mixed_precision] if config.mixed_precision else "float32"
    # conv1 as keras-resnet 0.1.0 (the 2018 releases), which is also how the ImageNet weights were trained
    model = retinanet(num_classes, backbone=config.backbone, conv1=CONV1_ZERO_PADDING, anchor_params=anchors,
                      dtype_policy=policy)
    if config.weights:
        from oid_retinanet.model.h5 import load_weights_h5

        if config.weights.endswith(".keras"):
            import keras

            from oid_retinanet.model.backbones import register_layers

            register_layers()
            source = keras.saving.load_model(config.weights, compile=False)
            _copy_matching_weights(source, model)
        else:
            report = load_weights_h5(model, config.weights, skip_mismatch=True)
            log.info("%s: %s", config.weights, report)
    elif config.imagenet_weights:
        from oid_retinanet.model.backbones import family

        if not family(config.backbone).imagenet:
            raise OIDInputError(f"--imagenet-weights: only for the ResNets; train {config.backbone} with --no-weights "
                                "or --weights")
        from oid_retinanet.model.imagenet import fetch_imagenet_weights, load_imagenet_backbone

        depth = int(config.backbone.replace("resnet", ""))
        path = fetch_imagenet_weights(depth, config.imagenet_source, models_path=config.models_path)
        log.info("ImageNet weights: %s", load_imagenet_backbone(model, path))
    if config.freeze_backbone:
        from oid_retinanet.model.backbones import is_backbone_layer

        for layer in model.layers:
            if is_backbone_layer(layer.name):
                layer.trainable = False
    compile_model(model, config.lr, config.optimizer_clipnorm)
    return model


def _copy_matching_weights(source, target) -> None:
    copied = skipped = 0
    for layer in target.layers:
        try:
            other = source.get_layer(layer.name)
        except ValueError:
            skipped += 1
            continue
        mine, theirs = layer.get_weights(), other.get_weights()
        if len(mine) == len(theirs) and all(a.shape == b.shape for a, b in zip(mine, theirs)):
            layer.set_weights(theirs)
            copied += 1
        elif mine:
            skipped += 1
    log.info("copied weights of %d layers, skipped %d (missing or of another shape)", copied, skipped)


def _anchors(config: TrainConfig, snapshot: str | None):
    """The anchors to train with: --config, else the snapshot's card's, else keras-retinanet's. A --config that
    differs from the snapshot's card is an error naming both."""
    from oid_retinanet.model.anchors import DEFAULT_ANCHOR_PARAMS, read_anchor_config
    from oid_retinanet.model.card import read_card

    given = read_anchor_config(config.anchor_config) if config.anchor_config else None
    card = read_card(snapshot) if snapshot else None
    if card is None or card.is_assumed("anchors"):
        return given or DEFAULT_ANCHOR_PARAMS
    if given is not None and given != card.anchors:
        raise OIDInputError(f"anchors {given.describe()}, but the snapshot was trained with {card.anchors.describe()} "
                            f"({card.source}): "
                            "leave --config out to go on with them", config.anchor_config)
    return card.anchors


def _card(config: TrainConfig, model, classes, anchors, source: Source, images: int):
    """The model card every snapshot of this run carries."""
    from oid_retinanet.model.card import ModelCard
    from oid_retinanet.model.resnet import CONV1_SAME, CONV1_ZERO_PADDING

    conv1 = CONV1_ZERO_PADDING if any(layer.name == "padding_conv1" for layer in model.layers) else CONV1_SAME
    return ModelCard(backbone=config.backbone, num_classes=len(classes), conv1=conv1,
                     classes=tuple(zip(classes.mids, classes.names)), min_side=config.image_min_side,
                     max_side=config.image_max_side, anchors=anchors,
                     training={"level": config.level, "format": source.format, "annotations": source.annotations,
                               "class_file": source.class_source, "images": images,
                               "labels_filter": config.labels_filter, "seed": config.seed})


def _resume_model(path: str, config: TrainConfig, num_classes: int):
    """(model, epoch) from a snapshot: ours with its optimizer state, or a keras-retinanet .h5's weights."""
    from oid_retinanet.train.callbacks import snapshot_epoch

    epoch = snapshot_epoch(path)
    if epoch is None:
        raise OIDInputError("cannot tell the epoch from the snapshot's name (it should end in _<epoch>)", path)
    if path.endswith(".keras"):
        import keras

        import oid_retinanet.train.losses  # noqa: F401  (registers the losses for deserialisation)
        from oid_retinanet.model.backbones import register_layers

        register_layers()
        model = keras.saving.load_model(path)
        classes = int(model.get_layer("classification").output.shape[-1])
        if classes != num_classes:
            raise OIDInputError(f"snapshot has {classes} classes, the level file {num_classes}", path)
        return model, epoch
    from oid_retinanet.model.h5 import load_keras_retinanet

    log.warning("%s: a keras-retinanet file holds no usable optimizer state; Adam restarts", path)
    model = load_keras_retinanet(path, inference=False)
    compile_model(model, config.lr, config.optimizer_clipnorm)
    return model, epoch


def _write_config(config: TrainConfig, sources: dict[str, Source], num_classes: int, initial_epoch: int) -> None:
    import keras

    from oid_retinanet.files import atomic_write_text

    record = asdict(config)
    record.update(num_classes=num_classes, initial_epoch=initial_epoch, class_file=sources["train"].class_source,
                  annotations={s: v.annotations for s, v in sources.items()},
                  image_params={s: v.params for s, v in sources.items()},
                  images={s: v.images for s, v in sources.items()},
                  backend=keras.backend.backend(), keras=keras.__version__, python=platform.python_version(),
                  command=" ".join(sys.argv))
    os.makedirs(config.snapshot_path, exist_ok=True)
    atomic_write_text(os.path.join(config.snapshot_path, CONFIG_FILE), json.dumps(record, indent=1) + "\n")


def _check_snapshot_classes(snapshot: str, classes) -> None:
    """OIDInputError when the snapshot's run (its folder's classes.csv) trained other classes than this one would:
    resumed, the head's outputs would silently mean other classes (or not fit)."""
    from oid_retinanet.oid.classes import CLASSES_FILE, class_list_difference, read_class_descriptions

    recorded_path = os.path.join(os.path.dirname(os.path.abspath(snapshot)), CLASSES_FILE)
    if not os.path.isfile(recorded_path):
        return
    detail = class_list_difference(read_class_descriptions(recorded_path, any_ids=True), classes)
    if detail is not None:
        raise OIDInputError(f"the snapshots here were trained on other classes than this run's ({detail}): resume "
                            "with the same level files and --labels-filter, or train into another --snapshot-path",
                            recorded_path)


def train(config: TrainConfig):
    """Train as `config` says; returns the Keras History (None when the snapshot is already at --epochs)."""
    if config.gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = config.gpu
    sources = _sources(config)
    snapshot = config.snapshot
    if config.resume:
        from oid_retinanet.train.callbacks import latest_snapshot

        found = latest_snapshot(config.snapshot_path, config.backbone, config.level)
        if found is None:
            log.info("--resume: no snapshot in %s, starting anew", config.snapshot_path)
        snapshot = str(found) if found else None
    if snapshot and not os.path.isfile(snapshot):
        raise FileNotFoundError(2, "No such file or directory", snapshot)
    scope = _distribution(config.multi_gpu)
    worker, workers = _join_cluster(config)
    chief = worker == 0

    import keras

    from oid_retinanet.data.augment import RandomTransform
    from oid_retinanet.data.generator import GeneratorConfig, OpenImagesGenerator
    from oid_retinanet.train import callbacks as cb

    train_data = sources["train"].load(config.labels_filter)
    val_data = None
    if config.evaluation or config.compute_val_loss:
        if "validation" in sources:
            val_data = sources["validation"].load(config.labels_filter)
            if val_data.classes.mids != train_data.classes.mids:
                raise OIDInputError(f"the validation data's classes are not the training data's: "
                                    f"{val_data.classes.source} vs {train_data.classes.source}")
        else:
            log.info("no validation annotations: no per-epoch mAP or validation loss (--validation-annotations)")
    anchors = _anchors(config, snapshot)
    from oid_retinanet.model.backbones import feature_shapes_fn

    common = dict(batch_size=config.batch_size, min_side=config.image_min_side, max_side=config.image_max_side,
                  feature_shapes=feature_shapes_fn(config.backbone), anchor_params=anchors)
    train_gen = OpenImagesGenerator(train_data, GeneratorConfig(
        **common, steps=config.steps, seed=config.seed, group=config.group,
        sampling=config.sampling or ("balanced" if config.dataset_format == "oid" else "shuffle"),
        transform=RandomTransform.ORIGINAL_FULL if config.random_transform else RandomTransform.FLIP_X,
        intensity=INTENSITY_CHANGE if config.intensity_change else None, worker=(worker, workers)),
        workers=config.workers,
        max_queue_size=config.max_queue_size)
    if snapshot:
        _check_snapshot_classes(snapshot, train_data.classes)
    keras.utils.set_random_seed(config.seed)  # initial weights too: the same flags give the same model
    with scope if scope is not None else contextlib.nullcontext():
        if snapshot:
            model, initial_epoch = _resume_model(snapshot, config, train_data.num_classes)
            log.info("resuming from %s after epoch %d", snapshot, initial_epoch)
        else:
            model, initial_epoch = _create_model(config, train_data.num_classes, anchors), 0
    if config.initial_epoch is not None:
        log.info("--initial-epoch %d (the %s said %d)", config.initial_epoch, "snapshot" if snapshot else "start",
                 initial_epoch)
        initial_epoch = config.initial_epoch
    if initial_epoch >= config.epochs:
        log.info("snapshot is at epoch %d; --epochs %d: nothing to do", initial_epoch, config.epochs)
        return None
    train_gen.start_epoch(initial_epoch)

    callbacks, val_gen = [], None
    if val_data is not None:
        val_gen = OpenImagesGenerator(val_data, GeneratorConfig(**common, sampling="sequential"))
    if config.compute_val_loss and workers > 1:
        log.info("--compute-val-loss is left out when training on several workers (the per-epoch mAP is not)")
        config.compute_val_loss = False
    if config.evaluation and val_gen is not None and chief:
        options = {"weighted_average": True} if config.weighted_average and config.eval_metric == "voc" else {}
        callbacks.append(cb.evaluation_callback(val_gen, config.eval_metric, os.path.join(
            config.snapshot_path, f"mAP_stat_{config.backbone}.txt"), local=workers > 1, **options))
    callbacks.append(keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=config.reduce_lr_factor,
                                                       patience=config.reduce_lr_patience, min_delta=LR_MIN_DELTA,
                                                       min_lr=LR_MIN, verbose=1))
    if chief:  # worker 0 writes everything; the others train (and take their part in saving)
        _chief_outputs(callbacks, config, model, train_data, anchors, sources, initial_epoch)
    elif config.snapshots:
        callbacks.append(cb.Snapshot(config.snapshot_path, config.backbone, config.level,
                                     every=config.snapshot_every, write=False))
    log.info("training %s on %s: %d images, %d classes, %d epochs x %d steps of %d, sides %d/%d",
             config.backbone, f"level {config.level}" if config.dataset_format == "oid" else
             sources["train"].annotations, len(train_data), train_data.num_classes, config.epochs, config.steps,
             config.batch_size, config.image_min_side, config.image_max_side)
    with _stop_when_a_worker_is_lost(worker, workers):
        # shuffle=False: the generator orders its batches itself (seeded per epoch); Keras' shuffle of the batch
        # order draws from Python's global random state, so a resumed run would train the same batches in another
        # order than the uninterrupted run (and its batch-normalisation statistics would differ)
        return model.fit(train_gen, epochs=config.epochs, initial_epoch=initial_epoch, callbacks=callbacks,
                         validation_data=val_gen if config.compute_val_loss and val_gen is not None else None,
                         shuffle=False, verbose=(1 if sys.stderr.isatty() else 2) if chief else 0)


def _chief_outputs(callbacks: list, config: TrainConfig, model, train_data, anchors, sources: dict[str, Source],
                   initial_epoch: int) -> None:
    """What one run writes (worker 0's, on several): TensorBoard, the CSV log, snapshots with the card (added to
    `callbacks`), `training_config.json` and `classes.csv`."""
    import keras

    from oid_retinanet.oid.classes import CLASSES_FILE, write_class_descriptions
    from oid_retinanet.train import callbacks as cb

    if config.tensorboard_dir:
        freq = int(config.tensorboard_freq) if config.tensorboard_freq.isdigit() else config.tensorboard_freq
        callbacks.append(keras.callbacks.TensorBoard(log_dir=config.tensorboard_dir, update_freq=freq))
    os.makedirs(config.snapshot_path, exist_ok=True)
    callbacks.append(cb.TrainingLog(os.path.join(config.snapshot_path, "training_log.csv"), append=True))
    if config.snapshots:
        card = _card(config, model, train_data.classes, anchors, sources["train"], len(train_data))
        callbacks.append(cb.Snapshot(config.snapshot_path, config.backbone, config.level, keep=config.keep_snapshots,
                                     every=config.snapshot_every, card=card))
    _write_config(config, sources, train_data.num_classes, initial_epoch)
    write_class_descriptions(os.path.join(config.snapshot_path, CLASSES_FILE),
                             zip(train_data.classes.mids, train_data.classes.names))


EXIT_LOST_WORKER = 3
# How JAX reports a collective whose peer is gone: its own error types, or (from some collectives, e.g. the
# all-gather of the logs) a ValueError carrying the transport's or the coordination service's message.
_PEER_LOST = re.compile(r"gloo|nccl|heartbeat|coordination ?service|barrier|connection (closed|reset|refused)", re.I)


def lost_worker(exc: BaseException) -> bool:
    """Whether `exc`, raised by a step on several workers, means that a peer is gone (not a fault of this one)."""
    return type(exc).__module__.startswith(("jax", "jaxlib")) or bool(_PEER_LOST.search(str(exc)))


@contextlib.contextmanager
def _stop_when_a_worker_is_lost(worker: int, workers: int):
    """On several workers, a collective that fails (a worker died, was preempted or cut off: JAX notices within
    --worker-timeout) ends this worker with one line and exit code 3, at once: JAX's own shutdown would wait for
    the lost worker and then abort the process. The finished snapshots stay; relaunch every worker with --resume."""
    try:
        yield
    except Exception as exc:
        if workers < 2 or not lost_worker(exc):
            raise
        reason = str(exc).strip().splitlines()[0][:300]
        sys.stderr.write(f"error: worker {worker} of {workers}: the cluster lost a worker ({reason}); the finished "
                         "snapshots are kept: relaunch every worker with --resume\n")
        sys.stderr.flush()
        logging.shutdown()
        os._exit(EXIT_LOST_WORKER)


def parse_config(backbone: str, description: str, argv: list[str] | None, constants, defaults: dict | None = None
                 ) -> TrainConfig:
    """A training script's command line as a TrainConfig: the flags, with --resume's earlier settings and
    keras-retinanet's forms applied and checked (logging is set up here: those steps log what they change).
    `constants`: the script's a00_utils_and_constants, whose paths are the defaults."""
    from oid_retinanet.cli import setup_logging

    paths = {name: getattr(constants, name) for name in ("DATASET_PATH", "OUTPUT_PATH", "MODELS_PATH")}
    parser = build_parser(backbone, description, paths, defaults)
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    return TrainConfig.from_args(check_args(keras_retinanet_args(resume_settings(args, given_options(parser, argv)))))


def run_script(backbone: str, description: str, argv: list[str] | None, constants, defaults: dict | None = None
               ) -> int:
    """main() of a training script for `backbone` (`defaults`: the script's own, e.g. FLOW_2019)."""
    train(parse_config(backbone, description, argv, constants, defaults))
    return 0
