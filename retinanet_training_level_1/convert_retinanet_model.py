"""Stage 3b: convert a RetinaNet training model into an inference model (boxes, scores, labels).

MODEL_IN is a keras-retinanet snapshot (.h5, training or already converted; Keras 2.2/2.3 or tf.keras; the
backbone, conv1 variant and class count are read from the file) or one of ours (.keras). MODEL_OUT is written
in Keras 3's own format (.keras), under a temporary name renamed when complete. The inference model adds the
anchors, box decoding, clipping and filtering layers of keras-retinanet's `convert_model`, with its defaults
(class-specific NMS at 0.5, score > 0.05, at most 300 detections) unless changed by the flags below.

`--backbone` is accepted for the original's command line; the backbone in the file wins (a differing value
is an error).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

try:
    from retinanet_training_level_1 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

from oid_retinanet.cli import script_main, setup_logging
from oid_retinanet.errors import OIDInputError
from oid_retinanet.files import atomic_path

log = logging.getLogger("convert_retinanet_model")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from oid_retinanet.model.filter_detections import MAX_DETECTIONS, NMS_THRESHOLD, SCORE_THRESHOLD

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
    p.add_argument("--skip-mismatch", action="store_true",
                   help="load the layers that match and leave the others at their initial values")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    if not args.model_out.endswith(".keras"):
        raise OIDInputError("the output must be a Keras 3 model file ending in .keras", path=args.model_out)
    if not os.path.exists(args.model_in):
        raise FileNotFoundError(2, "No such file or directory", args.model_in)
    from oid_retinanet.model.h5 import inspect_h5, load_model
    from oid_retinanet.model.retinanet import convert_model, training_model_of

    file_settings = {}
    if not args.model_in.endswith(".keras"):
        info = inspect_h5(args.model_in)
        file_settings = dict(anchor_params=info.anchor_params, box_mean=info.box_mean, box_std=info.box_std,
                             clip_size_minus_one=info.clip_size_minus_one)
        if args.backbone and args.backbone != info.backbone:
            raise OIDInputError(f"--backbone {args.backbone} but the file holds a {info.backbone}",
                                path=args.model_in)
        log.info("%s: %s, conv1 %s, %d classes, %s model", args.model_in, info.backbone, info.conv1,
                 info.num_classes, "inference" if info.is_inference else "training")
    model = training_model_of(load_model(args.model_in, inference=False, skip_mismatch=args.skip_mismatch))
    inference = convert_model(model, nms=args.nms, class_specific_filter=args.class_specific_filter,
                              nms_threshold=args.nms_threshold, score_threshold=args.score_threshold,
                              max_detections=args.max_detections, **file_settings)
    with atomic_path(args.model_out) as tmp:
        # Keras insists on the .keras suffix, so the temporary name keeps it.
        tmp_keras = tmp.with_name(tmp.name + ".keras")
        try:
            inference.save(tmp_keras)
            os.replace(tmp_keras, tmp)
        finally:
            if tmp_keras.exists():
                tmp_keras.unlink()
    print(f"wrote {args.model_out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
