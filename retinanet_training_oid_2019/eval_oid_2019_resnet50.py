"""2019 evaluation (gujingxiao's eval_oid_2019_resnet50.py): a trained model scored on its label level's
validation split.

Predicts the images of OUTPUT_PATH/level_L_files/val-exists-annotations-bbox-level-L.csv (in DATASET_PATH/train/,
where the exists split leaves them) and prints keras-retinanet's per-class lines and mAP, VOC-style as the
original (IoU 0.5, scores above 0.05, 300 detections); --metric oid for the Open Images rules. Any snapshot of
train_oid_2019_resnet50.py, converted or not. Example:

    python retinanet_training_oid_2019/eval_oid_2019_resnet50.py --label-level 2 \
        --weights models/snapshots/resnet50_oid_level_2_06.keras
"""

from __future__ import annotations

try:
    from retinanet_training_oid_2019 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.stages.evaluate_model import build_parser, parse, run


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(parse(build_parser(__doc__, C, split="exists", metric="voc"), argv))


if __name__ == "__main__":
    raise SystemExit(main())
