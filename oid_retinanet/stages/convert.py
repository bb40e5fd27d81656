"""Stage 3b's command line, the conversion of a training model into an inference model:
retinanet_training_level_1/convert_retinanet_model.py (2018) and
retinanet_training_oid_2019/convert_retinanet_model.py (2019)."""

from __future__ import annotations

import argparse
import logging
import os
import sys

from oid_retinanet.cli import PARALLEL_ITERATIONS_HELP, positive_int, setup_logging
from oid_retinanet.errors import OIDInputError

log = logging.getLogger(__name__)


def build_parser(description: str) -> argparse.ArgumentParser:
    """The conversion's options."""
    from oid_retinanet.model.filter_detections import MAX_DETECTIONS, NMS_THRESHOLD, SCORE_THRESHOLD

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_in", help="training model: keras-retinanet .h5 or ours (.keras)")
    p.add_argument("model_out", help="inference model to write (.keras)")
    p.add_argument("--backbone", choices=["resnet50", "resnet101", "resnet152"],
                   help="backbone of MODEL_IN (checked against the file; default: read from it)")
    p.add_argument("--no-nms", dest="nms", action="store_false", help="disable non-maximum suppression")
    p.add_argument("--no-class-specific-filter", dest="class_specific_filter", action="store_false",
                   help="filter on each anchor's best class only (one NMS over all classes)")
    p.add_argument("--nms-threshold", type=float, default=NMS_THRESHOLD, help="IoU above which boxes are "
                   "suppressed (default: %(default)s)")
    p.add_argument("--score-threshold", type=float, default=SCORE_THRESHOLD,
                   help="keep scores above this (default: %(default)s)")
    p.add_argument("--max-detections", type=int, default=MAX_DETECTIONS,
                   help="detections kept per image (default: %(default)s)")
    p.add_argument("--labels", metavar="FILE", help="the model's classes to record in its card (MID,DisplayName per "
                   "line in output order; default: MODEL_IN's card, else the released list for 443 or 500 classes)")
    p.add_argument("--min-side", type=positive_int, help="image short side to record (default: the card's, else "
                   "the backbone's)")
    p.add_argument("--max-side", type=positive_int, help="image long side at most to record (default: as --min-side)")
    p.add_argument("--config", metavar="FILE", help="keras-retinanet's config.ini: the anchors of a training model "
                   "without a card (default: the card's, else keras-retinanet's)")
    p.add_argument("--write-card", action="store_true", help="also write the card beside MODEL_IN as "
                   "MODEL_IN.card.json")
    p.add_argument("--parallel-iterations", type=positive_int, metavar="N", help=PARALLEL_ITERATIONS_HELP)
    p.add_argument("--skip-mismatch", action="store_true",
                   help="load the layers that match and leave the others at their initial values")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    """Convert as the parsed options say."""
    setup_logging(args.verbose)
    if not args.model_out.endswith(".keras"):
        raise OIDInputError("the output must be a Keras 3 model file ending in .keras", path=args.model_out)
    if not os.path.exists(args.model_in):
        raise FileNotFoundError(2, "No such file or directory", args.model_in)
    from oid_retinanet.model.anchors import read_anchor_config
    from oid_retinanet.model.card import save_model, write_sidecar
    from oid_retinanet.model.h5 import inspect_h5, load_model
    from oid_retinanet.model.retinanet import convert_model, training_model_of
    from oid_retinanet.predict.resolve import resolve_model

    card = resolve_model(args.model_in, labels=args.labels, min_side=args.min_side, max_side=args.max_side,
                         anchors=read_anchor_config(args.config) if args.config else None, config=args.config,
                         need_classes=False).card
    if args.backbone and args.backbone != card.backbone:
        raise OIDInputError(f"--backbone {args.backbone} but the file holds a {card.backbone}", path=args.model_in)
    clip = {}
    if not args.model_in.endswith(".keras"):
        info = inspect_h5(args.model_in)
        clip = {"clip_size_minus_one": info.clip_size_minus_one}
        log.info("%s: %s, conv1 %s, %d classes, %s model", args.model_in, info.backbone, info.conv1,
                 info.num_classes, "inference" if info.is_inference else "training")
    model = training_model_of(load_model(args.model_in, inference=False, skip_mismatch=args.skip_mismatch))
    settings = {"nms": args.nms, "class_specific_filter": args.class_specific_filter,
                "nms_threshold": args.nms_threshold, "score_threshold": args.score_threshold,
                "max_detections": args.max_detections}
    inference = convert_model(model, anchor_params=card.anchors, box_mean=card.box_mean, box_std=card.box_std,
                              **settings, **clip)
    if args.write_card:
        log.info("wrote %s", write_sidecar(args.model_in, card))
    save_model(inference, args.model_out, card.with_(filter=settings))
    print(f"wrote {args.model_out}", file=sys.stderr)
    return 0
