"""Export a trained model for deployment: MODEL_IN (ours or a keras-retinanet .h5, training or converted) to
OUTPUT, a SavedModel folder (TF Serving), an ONNX file (--format onnx: onnxruntime and the like; needs `pip install
-r requirements-export.txt`) or a TFLite file of builtin ops (--format tflite, OUTPUT ending in .tflite: TFLite /
LiteRT interpreters, no Flex delegate needed).

The exported graph is the inference model (a training model is converted with its card's anchors and filter);
it takes prepared images, float32 (B, H, W, 3): BGR with the ImageNet means subtracted (caffe mode) and resized
as the card says (short side min_side, long side at most max_side), and returns boxes in input pixels, scores
and labels. The card goes with it: the classes, sides, anchors and filter (a SavedModel's folder holds
oid_retinanet_card.json, an ONNX file's metadata the key oid_retinanet_card, a TFLite file has
OUTPUT.card.json beside it). Examples:

    python retinanet_training_level_1/export_model.py models/resnet50_level_1_inference.keras exported/resnet50
    python retinanet_training_level_1/export_model.py --format onnx models/resnet50_level_1_inference.keras r50.onnx
    python retinanet_training_level_1/export_model.py --format tflite models/mobilenet.keras mobilenet.tflite
"""

from __future__ import annotations

try:
    from retinanet_training_level_1 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import argparse
import os
import sys

from oid_retinanet.cli import positive_int, script_main, setup_logging
from oid_retinanet.errors import OIDInputError


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from oid_retinanet.model.export import FORMATS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model_in", help="the model: ours (.keras) or keras-retinanet's .h5")
    p.add_argument("output", help="the folder (savedmodel) or file (onnx, tflite) to write (must not exist)")
    p.add_argument("--format", choices=FORMATS, default="savedmodel", help="(default: %(default)s)")
    p.add_argument("--labels", metavar="FILE", help="the model's classes, for the card (default: its card)")
    p.add_argument("--min-side", type=positive_int, help="the sides to record (default: the card's)")
    p.add_argument("--max-side", type=positive_int, help="(default: the card's)")
    p.add_argument("--config", metavar="FILE", help="keras-retinanet's config.ini (only for a model without a card)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    if os.path.exists(args.output):
        raise OIDInputError("exists: remove it or choose another output", args.output)
    from oid_retinanet.model.anchors import read_anchor_config
    from oid_retinanet.model.export import export_model, require_exporter
    from oid_retinanet.predict.resolve import resolve_model

    require_exporter(args.format)

    resolved = resolve_model(args.model_in, labels=args.labels, min_side=args.min_side, max_side=args.max_side,
                             anchors=read_anchor_config(args.config) if args.config else None, config=args.config,
                             need_classes=False)
    model = resolved.load()
    from oid_retinanet.predict.inference import filter_settings

    card = resolved.card.with_(filter=filter_settings(model)) if not resolved.card.filter else resolved.card
    export_model(model, card, args.output, args.format)
    print(f"wrote {args.output} ({args.format}; inputs prepared as its card says: sides {card.min_side}/"
          f"{card.max_side}, caffe BGR means subtracted)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
