"""Evaluate a trained model on its level's validation files in one command (keras-retinanet's evaluate.py).

Predicts the images of OUTPUT_PATH/level_N_files/validation-annotations-bbox-level-N.csv (DATASET_PATH/validation/)
and scores them with the Open Images metric (--metric voc: keras-retinanet's VOC-style mAP with its
--iou-threshold, --score-threshold, --max-detections). keras-retinanet's `oid DATASET_PATH MODEL` form, --save-path
(draw the detections), --convert-model and --image-min-side/--image-max-side work. The model's card gives its
sides and classes. This scores a level's model on the level's boxes; evaluate_oid_map.py scores a submission on
the official validation files. Example:

    python retinanet_training_level_1/evaluate_retinanet_model.py \
        --weights models/snapshots/resnet50_oid_level_1_05.keras
"""

from __future__ import annotations

try:
    from retinanet_training_level_1 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.stages.evaluate_model import build_parser, parse, run


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(parse(build_parser(__doc__, C), argv))


if __name__ == "__main__":
    raise SystemExit(main())
