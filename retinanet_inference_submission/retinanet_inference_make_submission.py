"""2019 per-level predictions (gujingxiao's retinanet_inference_make_submission.py): one level's model on the
test images, a cache per image, then the level's submission CSV.

The stage 4 of retinanet_inference_example.py with the original's settings: images resized as the model was
trained (its card; the original's 768/1024), no mirrored copy (--flip adds it), every box scoring at least
--skip-box-thr (0.05) kept as it is, not merged (--type none; avg/max/... merge them as stage 4 does), the best
300 per image, everything written with 3 decimals. The original ran it twice, `inference_predict=True` to fill
the cache and False to write the CSV; here one run does both (--from-cache writes the CSV alone, --shard I/N
splits the images between machines as its shuffled order did between GPUs). Default names, for level L:
the cache OUTPUT_PATH/cache_retinanet_level_L_resnet50/ and the CSV SUBM_PATH/predictions_0.05_0.55_none_level_L.csv,
which concat_all_levels_submission.py joins with the other levels'. Example:

    python retinanet_inference_submission/retinanet_inference_make_submission.py --label-level 2 \
        --weights models/level_2_inference.keras --images test/
"""

from __future__ import annotations

try:
    from retinanet_inference_submission import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.stages.inference import build_parser, parse, run


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(parse(build_parser(__doc__, "2019"), argv), C)


if __name__ == "__main__":
    raise SystemExit(main())
