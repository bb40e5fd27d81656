"""Stage 5: add parent-class boxes to a predictions CSV through the label hierarchy.

Reads a Kaggle `ImageId,PredictionString` CSV (e.g. the level-1 model's predictions, 443 leaf classes) and
writes the same rows with, after each image's boxes, one box per parent class: every box is copied to each of
its ancestors, and the copies of one parent class in one image are reduced by NMS. --only-new writes the
parent boxes alone (the original's return_only_new; its __main__ ran with it on fixed file names).

Defaults reproduce ZFTurbo's 2018 script exactly, quirks included: parents looked up by display name through
the 500-class list and the v4 600 hierarchy (so Training bench boxes gain Furniture and computer mice gain
Animal, their names in the 500 list being "Bench" and "Mouse"), NMS at IoU 0.75 with the pixel '+1' on
normalised coordinates. --variant 2019 is gujingxiao's script (the 2019 hierarchy and class list from
LABEL_PATH, NMS 0.9). --corrected keys parents by MID and drops the '+1'; --iou-thr sets the threshold.

Large files are streamed in blocks; the output is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.stages.expand import build_parser, run


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, "2018", C.SUBM_PATH + "retinanet_training_level_1.csv",
                          C.SUBM_PATH + "retinanet_level_1_all_levels.csv", C)
    return run(parser.parse_args(argv), C)


if __name__ == "__main__":
    raise SystemExit(main())
