"""2019 hierarchy expansion (gujingxiao's create_higher_level_predctions.py): parent-class boxes added to a
predictions CSV over all 500 classes.

The stage-5 expansion (create_higher_level_predictions_from_level_1_predictions_csv.py) with the 2019
defaults: the 2019 class list and hierarchy from LABEL_PATH (challenge-2019-classes-description-500.csv,
challenge-2019-label500-hierarchy.json), parents looked up by display name in that list (a name carried by
two MIDs, "Bench" or "Mouse", pools the parents of both), NMS at IoU 0.9 with the pixel '+1'. Boxes of parent
classes in the input get their own ancestors too. The original's __main__ wrote all levels (no --only-new)
from and to the file names below, in the current folder. The original crashed on Python 3.8+ (time.clock);
this one does not.
"""

from __future__ import annotations

try:
    from retinanet_inference_submission import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.stages.expand import build_parser, run

INPUT_CSV = "retinanet_resnet152_101_new_ensemble_submission_0.05_0.55_predictions.csv"
OUTPUT_CSV = "retinanet_resnet152_101_new_ensemble_submission_0.05_0.55_predictions_all_levels.csv"


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(build_parser(__doc__, "2019", INPUT_CSV, OUTPUT_CSV, C).parse_args(argv), C)


if __name__ == "__main__":
    raise SystemExit(main())
