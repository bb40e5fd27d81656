"""Stage 4: predictions of one RetinaNet model for a set of images: a per-image cache, then a Kaggle CSV.

As ZFTurbo's `retinanet_inference_example.py`: every image is read, preprocessed, resized (ResNet50/101:
768/1024, ResNet152: 600/800, from the backbone in the weights file) and predicted together with its
horizontally mirrored copy; boxes normalised by the resized image's size are cached per image in
--cache-dir (images already cached are skipped, so a rerun resumes). Then both rows of every cache file in
the folder are merged (`create_csv_for_retinanet`: boxes scoring at least --skip-box-thr, the weighted merge
at --iou-thr, the best --limit-boxes) into `ImageId,PredictionString` rows.

--weights: a keras-retinanet .h5 (training or converted) or one of ours (.keras); a training model is
converted to an inference model on load. The model's card (inside our .keras files, or a <weights>.card.json
sidecar) gives its classes, image sides and anchors; the flags --labels, --min-side/--max-side and --config
override it (predict/resolve.py says the order). Without a card: the cache folder's classes.csv, else the
released models' lists for 443 (2018 level 1) and 500 (2019) classes, and the backbone's sides. The cache
folder records the list in classes.csv: --from-cache reads it from there, and a model with another class
list cannot write into the folder.
--no-flip predicts the image alone: its cache files have one row and the CSV keeps its scores as they are
(a second, empty row would give the image's boxes the weight 1/2 of a two-list merge and halve them).
--shard I/N predicts every N-th of the sorted images (run the N shards anywhere on one cache folder) and
writes no CSV; write it with --from-cache when all shards are done. Unreadable images are listed in
<cache-dir>/failures.txt and skipped.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

import a00_utils_and_constants as C
from oid_retinanet.cli import PARALLEL_ITERATIONS_HELP, fraction, positive_int, script_main, setup_logging
from oid_retinanet.errors import OIDInputError
from oid_retinanet.predict.cache import cache_folder_name
from oid_retinanet.predict.ensemble import MERGE_TYPES, MIRROR_DEFAULTS

log = logging.getLogger("retinanet_inference_example")


def _shard(text: str) -> tuple[int, int]:
    from oid_retinanet.predict.inference import parse_shard

    try:
        return parse_shard(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--weights", help="model file: keras-retinanet .h5 or ours (.keras)")
    p.add_argument("--images", help="a folder, a glob pattern (quoted) or a .txt list of image paths")
    p.add_argument("--labels", metavar="FILE",
                   help="the model's classes, MID,DisplayName per line in output order (default: the model's card, "
                        "else the cache folder's classes.csv, else the released models' list for 443 or 500 classes)")
    p.add_argument("--config", metavar="FILE",
                   help="keras-retinanet's config.ini: [anchor_parameters] sizes, strides, ratios, scales (default: "
                        "the model's card; needed only for a model without one trained with other anchors)")
    p.add_argument("--cache-dir", help="prediction cache folder (default: OUTPUT_PATH/cache_retinanet_<weights stem>/)")
    p.add_argument("--output", help="CSV to write (default: SUBM_PATH/retinanet_<weights stem>_predictions.csv)")
    p.add_argument("--min-side", type=positive_int,
                   help="resize: short side (default: the model's card, else 600 for resnet152, 768 for resnet50/101, "
                        "800 for MobileNets)")
    p.add_argument("--max-side", type=positive_int,
                   help="resize: long side at most (default: the model's card, else 800 for resnet152, 1024 for "
                        "resnet50/101, 1333 for MobileNets)")
    p.add_argument("--no-flip", dest="flip", action="store_false", help="do not predict the mirrored image")
    p.add_argument("--from-cache", action="store_true", help="no model: only write the CSV from --cache-dir")
    p.add_argument("--overwrite-cache", action="store_true",
                   help="empty --cache-dir first; without it a folder written with other settings (weights, sides, "
                        "flip, filter, class list) stops the run")
    p.add_argument("--shard", type=_shard, metavar="I/N", help="predict shard I of N of the sorted images, no CSV")
    p.add_argument("--skip-box-thr", type=fraction, default=MIRROR_DEFAULTS["skip_box_thr"],
                   help="drop boxes scoring below this before merging (default: %(default)s)")
    p.add_argument("--iou-thr", type=fraction, default=MIRROR_DEFAULTS["iou_thr"],
                   help="IoU above which boxes merge (default: %(default)s)")
    p.add_argument("--limit-boxes", type=positive_int, default=MIRROR_DEFAULTS["limit_boxes"],
                   help="keep at most this many boxes per image (default: %(default)s)")
    p.add_argument("--type", choices=MERGE_TYPES, default=MIRROR_DEFAULTS["type"],
                   help="merge of the image's and the mirror's boxes (default: %(default)s)")
    p.add_argument("--visualize", type=int, default=0, metavar="K",
                   help="draw the detections of K images into <cache-dir>/visualize/")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per model call (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=2, help="threads reading images (default: %(default)s)")
    p.add_argument("--parallel-iterations", type=positive_int, metavar="N", help=PARALLEL_ITERATIONS_HELP)
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if not args.from_cache and not (args.weights and args.images):
        p.error("--weights and --images are needed (or --from-cache)")
    if args.from_cache and args.shard:
        p.error("--shard predicts; --from-cache does not")
    return args


def _cached_labels(args: argparse.Namespace, cache_dir: str):
    """--from-cache without a model: --labels, else the class list recorded in the cache folder."""
    from oid_retinanet.oid.classes import read_class_descriptions
    from oid_retinanet.predict.cache import check_classes, recorded_classes

    labels = read_class_descriptions(args.labels) if args.labels else recorded_classes(cache_dir)
    if labels is None:
        raise OIDInputError("no classes.csv in the cache folder: give --labels (or --weights)", cache_dir)
    check_classes(cache_dir, labels)
    return labels


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    stem = Path(args.weights).stem if args.weights else None
    if args.cache_dir is None and stem is None:
        raise OIDInputError("--cache-dir is needed with --from-cache and no --weights")
    cache_dir = args.cache_dir or C.OUTPUT_PATH + cache_folder_name(stem) + "/"
    output = args.output or (C.SUBM_PATH + f"retinanet_{stem}_predictions.csv" if stem else None)
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
        from oid_retinanet.predict.cache import file_sha256, record_classes, record_settings
        from oid_retinanet.predict.inference import filter_settings, list_images, predict_images, shard, visualize

        paths = list_images(args.images)
        if args.shard:
            paths = shard(paths, *args.shard)
            log.info("shard %d/%d: %d images", *args.shard, len(paths))
        min_side, max_side = resolved.sides
        model = resolved.load()
        record_settings(cache_dir, {"weights_sha256": file_sha256(args.weights),
                                    "weights_name": os.path.basename(args.weights), "min_side": min_side,
                                    "max_side": max_side, "flip": args.flip, "filter": filter_settings(model)},
                        overwrite=args.overwrite_cache)
        record_classes(cache_dir, labels)
        report = predict_images(model, paths, cache_dir, min_side, max_side, flip=args.flip,
                                batch_size=args.batch_size, workers=args.workers)
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
                                    limit_boxes=args.limit_boxes, type=args.type)
    log.info("%s", stats.line())
    print(f"wrote {output}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
