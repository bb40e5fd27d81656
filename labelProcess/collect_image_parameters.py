"""2019 image parameters (gujingxiao): OUTPUT_PATH/{subset}_image_params.csv for each image folder.

The same scan as the 2018 stage 2 (retinanet_training_level_1/find_image_parameters.py), one row per image,
`id,width,height,channel,size,md5`, on the 2019 layout: flat folders DATASET_PATH/validation/,
DATASET_PATH/train/ and DATASET_PATH/test/ (one level of subfolders is accepted too). The original's
kaggle_test read INPUT_PATH/test/, the same folder as test with the default paths, so it runs only when
asked (--subsets kaggle_test); the original's __main__ ran validation alone. A subset whose folder does not
exist is skipped. --images DIR scans any folder instead.

Sizes come from the image headers and the work is spread over all cores. Unreadable and truncated images
get width, height and channel 0 and are listed in {subset}_image_params_failures.txt. An interrupted scan
resumes from {subset}_image_params.csv.partial when run again. Rows are sorted by file path, through files in
TMPDIR (about 100 bytes a file): memory stays near 50 MB whatever the number of images.
"""

from __future__ import annotations

try:
    from labelProcess import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.stages.image_params import build_parser, run

DEFAULT_SUBSETS = ["validation", "train", "test"]


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(build_parser(__doc__, "2019", DEFAULT_SUBSETS, C).parse_args(argv), "2019")


if __name__ == "__main__":
    raise SystemExit(main())
