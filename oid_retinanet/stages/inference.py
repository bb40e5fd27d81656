"""Stage 4's command line, predictions of one model for a set of images: retinanet_inference_example.py (2018:
the image and its mirror, merged) and retinanet_inference_submission/retinanet_inference_make_submission.py
(2019: per label level, the image alone, every box kept)."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from oid_retinanet.cli import PARALLEL_ITERATIONS_HELP, fraction, non_negative_float, positive_int, setup_logging
from oid_retinanet.errors import OIDInputError
from oid_retinanet.predict.cache import cache_folder_name
from oid_retinanet.predict.ensemble import DECIMALS, MERGE_METHODS, MIRROR_DEFAULTS

log = logging.getLogger(__name__)

# Each original's defaults: ZFTurbo's retinanet_inference_example.py (flip, the weighted merge of the two lists, 6-
# and 4-decimal numbers) and gujingxiao's retinanet_inference_make_submission.py (no flip, the boxes above the
# threshold as they are, the best 300, 3 decimals).
VARIANTS = {
    "2018": {**MIRROR_DEFAULTS, "flip": True, "decimals": DECIMALS["mirror"]},
    "2019": {"skip_box_thr": 0.05, "iou_thr": 0.55, "limit_boxes": 300, "type": "none", "flip": False,
             "decimals": DECIMALS["2019"]},
}


def _shard(text: str) -> tuple[int, int]:
    from oid_retinanet.predict.inference import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser(description: str, variant: str = "2018") -> argparse.ArgumentParser:
    """Stage 4's options, with the defaults of `variant` (VARIANTS)."""
    from oid_retinanet.predict.ray_inference import CHUNK

    d = VARIANTS[variant]
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    if variant == "2019":
        p.add_argument("--label-level", default="1", metavar="L",
                       help="the level the model was trained on, for the default names (default: %(default)s)")
        p.add_argument("--backbone", default="resnet50",
                       help="the model's backbone, for the default cache folder name (default: %(default)s)")
    p.add_argument("--weights", help="model file: keras-retinanet .h5 or ours (.keras)")
    p.add_argument("--images", help="a folder, a glob pattern (quoted) or a .txt list of image paths")
    p.add_argument("--labels", metavar="FILE",
                   help="the model's classes, MID,DisplayName per line in output order (default: the model's card, "
                        "else the cache folder's classes.csv, else the released models' list for 443 or 500 classes)")
    p.add_argument("--config", metavar="FILE",
                   help="keras-retinanet's config.ini: [anchor_parameters] sizes, strides, ratios, scales (default: "
                        "the model's card; needed only for a model without one trained with other anchors)")
    p.add_argument("--cache-dir", help="prediction cache folder (default: OUTPUT_PATH/" + (
        "cache_retinanet_<weights stem>/)" if variant == "2018" else "cache_retinanet_level_<L>_<backbone>/)"))
    p.add_argument("--output", help="CSV to write (default: SUBM_PATH/" + (
        "retinanet_<weights stem>_predictions.csv)" if variant == "2018" else
        "predictions_<thr>_<iou>_<type>_level_<L>.csv)"))
    p.add_argument("--min-side", type=positive_int,
                   help="resize: short side (default: the model's card, else 600 for resnet152, 768 for resnet50/101, "
                        "800 for MobileNets)")
    p.add_argument("--max-side", type=positive_int,
                   help="resize: long side at most (default: the model's card, else 800 for resnet152, 1024 for "
                        "resnet50/101, 1333 for MobileNets)")
    if d["flip"]:
        p.add_argument("--no-flip", dest="flip", action="store_false", help="do not predict the mirrored image")
    else:
        p.add_argument("--flip", action="store_true", help="also predict the mirrored image (its boxes join the CSV)")
    p.add_argument("--from-cache", action="store_true", help="no model: only write the CSV from --cache-dir")
    p.add_argument("--overwrite-cache", action="store_true",
                   help="empty --cache-dir first; without it a folder written with other settings (weights, sides, "
                        "flip, filter, class list) stops the run")
    p.add_argument("--shard", type=_shard, metavar="I/N", help="predict shard I of N of the sorted images, no CSV")
    ray = p.add_argument_group("on a Ray cluster", "the images spread over model replicas in Ray actors; the cache "
                               "folder must be on a filesystem every worker sees (needs: pip install -r "
                               "requirements-cluster.txt)")
    ray.add_argument("--ray", nargs="?", const="local", metavar="ADDRESS",
                     help="predict on Ray: a local cluster started for this run (no ADDRESS), `auto` (the cluster "
                          "this machine belongs to) or ray://HOST:PORT")
    ray.add_argument("--ray-workers", type=positive_int, metavar="N",
                     help="model replicas (default: as many as the cluster's CPUs, or GPUs, allow)")
    ray.add_argument("--ray-cpus-per-worker", type=non_negative_float, default=1, metavar="C",
                     help="CPUs each replica holds, and its TensorFlow threads (default: %(default)s)")
    ray.add_argument("--ray-gpus-per-worker", type=non_negative_float, default=0, metavar="G",
                     help="GPUs each replica holds (default: %(default)s)")
    ray.add_argument("--ray-chunk", type=positive_int, default=CHUNK, metavar="K",
                     help="images per task: what a lost worker costs at most (default: %(default)s)")
    p.add_argument("--skip-box-thr", type=fraction, default=d["skip_box_thr"],
                   help="drop boxes scoring below this before merging (default: %(default)s)")
    p.add_argument("--iou-thr", type=fraction, default=d["iou_thr"],
                   help="IoU above which boxes merge (default: %(default)s)")
    p.add_argument("--limit-boxes", type=positive_int, default=d["limit_boxes"],
                   help="keep at most this many boxes per image (default: %(default)s)")
    p.add_argument("--type", choices=[name for name, m in MERGE_METHODS.items() if m.mirror], default=d["type"],
                   help="merge of the image's and the mirror's boxes; none: every box as it is (default: "
                        "%(default)s)")
    p.add_argument("--visualize", type=int, default=0, metavar="K",
                   help="draw the detections of K images into <cache-dir>/visualize/")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per model call (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=2, help="threads reading images (default: %(default)s)")
    p.add_argument("--parallel-iterations", type=positive_int, metavar="N", help=PARALLEL_ITERATIONS_HELP)
    p.add_argument("-v", "--verbose", action="store_true")
    p.set_defaults(variant=variant)
    return p


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse and check the options."""
    args = parser.parse_args(argv)
    if not args.from_cache and not (args.weights and args.images):
        parser.error("--weights and --images are needed (or --from-cache)")
    if args.from_cache and args.shard:
        parser.error("--shard predicts; --from-cache does not")
    if args.ray and args.from_cache:
        parser.error("--from-cache runs no model: leave --ray out")
    if args.ray and args.shard:
        parser.error("--ray spreads the images over the cluster itself: give --ray or --shard, not both")
    return args


def _cached_labels(args: argparse.Namespace, cache_dir: str):
    """--from-cache without a model: --labels, else the class list recorded in the cache folder."""
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.predict.cache import check_classes, recorded_classes

    labels = read_class_descriptions(args.labels, any_ids=True) if args.labels else recorded_classes(cache_dir)
    if labels is None:
        raise OIDInputError("no classes.csv in the cache folder: give --labels (or --weights)", cache_dir)
    check_classes(cache_dir, labels)
    return labels


def predict_to_cache(resolved, paths, cache_dir: str, flip: bool, batch_size: int = 1, workers: int = 2,
                     overwrite: bool = False, ray: dict | None = None):
    """Predict `paths` with the resolved model into `cache_dir`, first recording there the settings (weights,
    sides, flip, filter) and the class list a resumed or shared folder must keep; returns the InferenceReport.
    ray: predict on a Ray cluster instead (`predict.ray_inference.predict_on_ray`'s options)."""
    from oid_retinanet.predict.cache import file_sha256, record_classes, record_settings
    from oid_retinanet.predict.inference import filter_settings, predict_images

    if ray is not None:
        from oid_retinanet.predict.ray_inference import require_ray

        require_ray()
    min_side, max_side = resolved.sides
    model = resolved.load()
    record_settings(cache_dir, {"weights_sha256": file_sha256(resolved.path),
                                "weights_name": os.path.basename(resolved.path), "min_side": min_side,
                                "max_side": max_side, "flip": flip, "filter": filter_settings(model)},
                    overwrite=overwrite)
    record_classes(cache_dir, resolved.labels)
    if ray is not None:
        from oid_retinanet.predict.ray_inference import predict_on_ray

        del model  # the workers hold their own replicas
        return predict_on_ray(resolved, paths, cache_dir, flip, batch_size, **ray)
    return predict_images(model, paths, cache_dir, min_side, max_side, flip=flip, batch_size=batch_size,
                          workers=workers)


def default_names(args: argparse.Namespace, constants) -> tuple[str | None, str | None]:
    """(cache folder, output CSV) the variant's original would use, None where it cannot tell."""
    if args.variant == "2019":
        cache = constants.OUTPUT_PATH + cache_folder_name(f"level_{args.label_level}_{args.backbone}") + "/"
        return cache, (constants.SUBM_PATH + f"predictions_{args.skip_box_thr}_{args.iou_thr}_{args.type}_level_"
                       f"{args.label_level}.csv")
    stem = Path(args.weights).stem if args.weights else None
    if stem is None:
        return None, None
    return (constants.OUTPUT_PATH + cache_folder_name(stem) + "/",
            constants.SUBM_PATH + f"retinanet_{stem}_predictions.csv")


def run(args: argparse.Namespace, constants) -> int:
    """Predict and write the CSV as the parsed options say (`constants`: the script's a00, for default paths)."""
    setup_logging(args.verbose)
    default_cache, default_output = default_names(args, constants)
    cache_dir = args.cache_dir or default_cache
    output = args.output or default_output
    if cache_dir is None:
        raise OIDInputError("--cache-dir is needed with --from-cache and no --weights")
    if output is None and not args.shard:
        raise OIDInputError("--output is needed with --from-cache and no --weights")

    resolved = None
    if args.weights:
        from oid_retinanet.model.anchors import read_anchor_config
        from oid_retinanet.predict.cache import check_classes
        from oid_retinanet.predict.resolve import resolve_model

        anchors = read_anchor_config(args.config) if args.config else None
        resolved = resolve_model(args.weights, labels=args.labels, min_side=args.min_side, max_side=args.max_side,
                                 anchors=anchors, config=args.config, cache_dir=cache_dir)
        labels = resolved.labels
        check_classes(cache_dir, labels)
    else:
        labels = _cached_labels(args, cache_dir)

    if not args.from_cache:
        from oid_retinanet.predict.inference import list_images, shard, visualize

        paths = list_images(args.images)
        if args.shard:
            paths = shard(paths, *args.shard)
            log.info("shard %d/%d: %d images", *args.shard, len(paths))
        ray = None
        if args.ray:
            ray = {"address": None if args.ray == "local" else args.ray, "workers": args.ray_workers,
                   "cpus_per_worker": args.ray_cpus_per_worker, "gpus_per_worker": args.ray_gpus_per_worker,
                   "chunk": args.ray_chunk}
        report = predict_to_cache(resolved, paths, cache_dir, args.flip, args.batch_size, args.workers,
                                  args.overwrite_cache, ray)
        if report.failures:
            print(f"{len(report.failures)} unreadable images, listed in {Path(cache_dir) / 'failures.txt'}",
                  file=sys.stderr)
        if args.visualize > 0:
            drawn = visualize(paths, cache_dir, Path(cache_dir) / "visualize", args.visualize, labels.names)
            log.info("drew %d images into %s", len(drawn), Path(cache_dir) / "visualize")
        if args.shard:
            print(f"shard {args.shard[0]}/{args.shard[1]} done; write the CSV with --from-cache when every shard "
                  f"is", file=sys.stderr)
            return 0

    from oid_retinanet.predict.ensemble import write_mirror_merged_csv

    stats = write_mirror_merged_csv(cache_dir, output, labels, skip_box_thr=args.skip_box_thr, iou_thr=args.iou_thr,
                                    limit_boxes=args.limit_boxes, type=args.type,
                                    decimals=VARIANTS[args.variant]["decimals"])
    log.info("%s", stats.line())
    print(f"wrote {output}", file=sys.stderr)
    return 0
