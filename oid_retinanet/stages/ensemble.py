"""Stage 6's command line, the ensembling: ensemble_predictions_with_weighted_method.py (2018) and
retinanet_inference_submission/ensemble_predictions_with_weighted_method.py (2019)."""

from __future__ import annotations

import argparse
import logging
import os

from oid_retinanet.boxes.wbf import WBF_CONF_TYPES
from oid_retinanet.cli import fraction, positive_float, positive_int, setup_logging
from oid_retinanet.errors import OIDInputError
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.predict.cache import cache_folder_name
from oid_retinanet.predict.ensemble import (
    BATCH_IMAGES,
    ENSEMBLE_DEFAULTS,
    MERGE_TYPES,
    write_ensembled_csv,
)

log = logging.getLogger(__name__)

DEFAULT_LEVEL = {"2018": "1", "2019": "5"}


def default_cache_dirs(variant: str, level: str, constants) -> list[str]:
    """The original's input folders: ResNet101 and ResNet152 caches of the level."""
    suffix = "_validation" if variant == "2018" else ""
    return [constants.OUTPUT_PATH + cache_folder_name(f"level_{level}_{b}{suffix}") + "/"
            for b in ("resnet101", "resnet152")]


def default_output(variant: str, level: str, n_inputs: int, skip_box_thr: float, iou_thr: float, type: str,
                   constants) -> str:
    """The original's output name, in SUBM_PATH."""
    if variant == "2018":
        name = f"retinanet_ensemble_{n_inputs}_thr_{skip_box_thr}_iou_{iou_thr}_type_{type}.csv"
    else:
        name = f"retinanet_level_{level}_ensemble_thr_{skip_box_thr}_iou_{iou_thr}_type_{type}.csv"
    return constants.SUBM_PATH + name


def build_parser(description: str | None, variant: str) -> argparse.ArgumentParser:
    """The options of the ensembling script, shared by the 2018 and the 2019 script (default --variant)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--cache-dirs", nargs="+", metavar="DIR",
                     help="one prediction cache folder per model (default: the original's ResNet101 and ResNet152 "
                          "caches of --level under OUTPUT_PATH)")
    src.add_argument("--csvs", nargs="+", metavar="CSV", help="prediction CSVs to ensemble instead of caches")
    p.add_argument("--weights", nargs="+", type=positive_float, metavar="W",
                   help="one weight per model (default: equal, as the original)")
    p.add_argument("--labels", metavar="FILE",
                   help="the models' class list, MID,DisplayName per line in label order (default: the list "
                        "recorded in the cache folders, else the built-in list of --level)")
    p.add_argument("--level", default=None, choices=[str(k) for k in range(1, 8)],
                   help=f"level of the built-in label list and default folders (default: {DEFAULT_LEVEL['2018']} "
                        f"for 2018, {DEFAULT_LEVEL['2019']} for 2019)")
    p.add_argument("--type", choices=MERGE_TYPES, default=None,
                   help="avg, max, mul: the original's merge; wbf: weighted boxes fusion; soft-nms: overlapping "
                        "boxes decayed, not merged; none: every box kept (default: avg)")
    p.add_argument("--wbf-conf-type", choices=WBF_CONF_TYPES, default="avg",
                   help="confidence rule of --type wbf (default: %(default)s)")
    p.add_argument("--variant", choices=["2018", "2019"], default=variant,
                   help="2018 (ZFTurbo) or 2019 (gujingxiao): merge rule, defaults and number format "
                        "(default: %(default)s)")
    p.add_argument("--skip-box-thr", type=fraction, default=None,
                   help="drop boxes scoring below this (default: 0.01 for 2018, 0.15 for 2019)")
    p.add_argument("--iou-thr", type=fraction, default=None, help="IoU above which boxes merge (default: 0.55)")
    p.add_argument("--limit-boxes", type=positive_int, default=None,
                   help="keep at most this many boxes per image, best first (default: 400 for 2018, 600 for 2019)")
    p.add_argument("--output", help="output CSV (default: SUBM_PATH and the original's name)")
    p.add_argument("--batch-images", type=positive_int, default=BATCH_IMAGES,
                   help="images merged together in one vectorised step (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="processes merging batches of cached images; the output does not depend on it "
                        "(default: the usable CPUs, at most 8)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run(args: argparse.Namespace, constants) -> int:
    """Ensemble as the parsed options say; returns the exit code."""
    setup_logging(args.verbose)
    variant = args.variant
    defaults = ENSEMBLE_DEFAULTS[variant]
    level = args.level or DEFAULT_LEVEL[variant]
    type = args.type or defaults["type"]
    skip_box_thr = defaults["skip_box_thr"] if args.skip_box_thr is None else args.skip_box_thr
    iou_thr = defaults["iou_thr"] if args.iou_thr is None else args.iou_thr
    limit_boxes = defaults["limit_boxes"] if args.limit_boxes is None else args.limit_boxes
    cache_dirs = None if args.csvs else (args.cache_dirs or default_cache_dirs(variant, level, constants))
    inputs = args.csvs or cache_dirs
    if args.weights is not None and len(args.weights) != len(inputs):
        raise OIDInputError(f"{len(args.weights)} weights given for {len(inputs)} models")
    labels = None
    if cache_dirs is not None:
        from oid_retinanet.predict.cache import caches_classes, check_classes

        if args.labels:
            given = read_class_descriptions(args.labels)
            for folder in cache_dirs:
                check_classes(folder, given)
            labels = given.mids
        elif (recorded := caches_classes(cache_dirs)) is not None:
            labels = recorded.mids
        else:
            from oid_retinanet.oid.levels import levels_2018, levels_2019  # pandas: ~0.5 s, only for these lists

            if variant == "2019":
                labels = levels_2019()[level].mids
            elif level in ("1", "2", "3", "4", "5"):
                labels = levels_2018(read_class_descriptions(constants.CLASS_DESCRIPTIONS_CSV))[level].mids
            else:
                raise OIDInputError(f"2018 has levels 1-5, not {level}; give --labels")
    output = args.output or default_output(variant, level, len(inputs), skip_box_thr, iou_thr, type,
                                                constants)
    log.info("%s merge (%s) of %d %s -> %s", type, variant, len(inputs), "CSVs" if args.csvs else "cache folders",
             output)
    stats = write_ensembled_csv(output, cache_dirs=cache_dirs, csvs=args.csvs, labels=labels, weights=args.weights,
                                type=type, variant=variant, skip_box_thr=skip_box_thr, iou_thr=iou_thr,
                                limit_boxes=limit_boxes, wbf_conf_type=args.wbf_conf_type,
                                batch_images=args.batch_images, workers=args.workers)
    print(f"{stats.line()} -> {os.fspath(output)}")
    return 0
