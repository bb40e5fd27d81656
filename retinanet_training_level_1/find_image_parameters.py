"""Stage 2 (2018): image sizes and hashes, OUTPUT_PATH/{subset}_image_params.csv for each image folder.

Writes one row per image, `id,width,height,channel,size,md5`, as ZFTurbo's find_image_parameters.py did, for
the subsets validation (DATASET_PATH/validation/), train (DATASET_PATH/train/, in subfolders), test
(DATASET_PATH/test/) and kaggle_test (INPUT_PATH/kaggle/challenge2018_test/); a subset whose folder does not
exist is skipped. --images DIR scans any folder instead (its *.jpg and */*.jpg).

Sizes come from the image headers and the work is spread over all cores. Unreadable and truncated images
get width, height and channel 0 and are listed in {subset}_image_params_failures.txt. An interrupted scan
resumes from {subset}_image_params.csv.partial when run again. Rows are sorted by file path, through files in
TMPDIR (about 100 bytes a file): memory stays near 50 MB whatever the number of images.
"""

from __future__ import annotations

try:
    from retinanet_training_level_1 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.data.image_params import SUBSETS_2018
from oid_retinanet.stages.image_params import build_parser, run


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(build_parser(__doc__, "2018", list(SUBSETS_2018), C).parse_args(argv), "2018")


if __name__ == "__main__":
    raise SystemExit(main())
