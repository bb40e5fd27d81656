"""2019 ensembling (gujingxiao's ensemble_predictions_with_weighted_method.py): several models' caches of one
level merged into one Kaggle CSV.

The stage-6 ensembling (ensemble_predictions_with_weighted_method.py) with the 2019 defaults: gujingxiao's
merge (boxes of a model's list are matched against the clusters as they were before that list; when several
match one cluster the last merge wins while all their weights add up), level-5 labels and the ResNet101 and
ResNet152 caches of level 5 under OUTPUT_PATH, thr 0.15, IoU 0.55, at most 600 boxes per image, avg,
everything written with 3 decimals. The original's __main__ wrote
retinanet_level_5_ensemble_thr_0.15_iou_0.55_type_avg.csv in the current folder; the default here is that
name in SUBM_PATH. --variant 2018 gives ZFTurbo's merge and format.
"""

from __future__ import annotations

try:
    from retinanet_inference_submission import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.stages.ensemble import build_parser, run


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(build_parser(__doc__, "2019").parse_args(argv), C)


if __name__ == "__main__":
    raise SystemExit(main())
