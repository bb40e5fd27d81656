"""Stage 6: ensemble several models' predictions into one Kaggle CSV (`ImageId,PredictionString`).

Inputs: the per-image prediction caches of stage 4 (--cache-dirs, one folder per model, each image's and
its mirrored copy's boxes) or finished prediction CSVs (--csvs, one list each). Methods (--type):
- avg, max, mul: the original's weighted merge (ZFTurbo 2018; --variant 2019 is gujingxiao's version of
  it), reproduced exactly: greedy clusters per label, IoU above --iou-thr, scores multiplied by the summed
  list weight of their cluster (so scores above 1 occur and are written as they are);
- wbf: standard weighted boxes fusion, equal to the ensemble-boxes package's weighted_boxes_fusion.
Per image the boxes scoring at least --skip-box-thr are merged, the best --limit-boxes kept, coordinates clipped to
[0, 1]. Scores are written with 5 decimals and coordinates with 4 (2018), or everything with 3 (2019).

Defaults are the originals' (2018: two level-1 caches under OUTPUT_PATH, thr 0.01, IoU 0.55, 400 boxes,
avg; 2019: level-5 caches, thr 0.15, IoU 0.55, 600 boxes, avg); the output goes to SUBM_PATH under the
original's name. Labels: the model's class list (--labels FILE, a MID,DisplayName CSV such as
class-descriptions-boxable-level-K.csv), else the list recorded in the cache folders (their classes.csv, written
by stage 4; folders of models with different lists are an error), else the built-in list of --level.
"""

from __future__ import annotations

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.stages.ensemble import build_parser, run


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(build_parser(__doc__, "2018").parse_args(argv), C)


if __name__ == "__main__":
    raise SystemExit(main())
