"""Stage 2 (2018): image sizes and hashes, OUTPUT_PATH/{subset}_image_params.csv for each image folder.

Writes one row per image, `id,width,height,channel,size,md5`, as ZFTurbo's find_image_parameters.py did, for
the subsets validation (DATASET_PATH/validation/), train (DATASET_PATH/train/, in subfolders), test
(DATASET_PATH/test/) and kaggle_test (INPUT_PATH/kaggle/challenge2018_test/); a subset whose folder does not
exist is skipped. --images DIR scans any folder instead (its *.jpg and */*.jpg).

Sizes come from the image headers and the work is spread over all cores. Unreadable and truncated images
get width, height and channel 0 and are listed in {subset}_image_params_failures.txt. An interrupted scan
resumes from {subset}_image_params.csv.partial when run again. Rows are sorted by file path.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

try:
    from retinanet_training_level_1 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import positive_int, script_main, setup_logging
from oid_retinanet.data.image_params import (
    DEFAULT_EXTENSIONS,
    SUBSET_FOLDERS,
    SUBSETS_2018,
    scan_images,
    scan_subsets,
    subset_folders,
)


def build_parser(description: str, layout: str, default_subsets: list[str]) -> argparse.ArgumentParser:
    """The options of the image-parameter scan, shared by the 2018 and the 2019 (labelProcess) script."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subsets", nargs="+", choices=list(SUBSET_FOLDERS[layout]), default=default_subsets,
                   help="subsets to scan, in this order (default: %(default)s)")
    p.add_argument("--images", metavar="DIR", help="scan this folder instead of the subsets' folders")
    p.add_argument("--subset", help="output name for --images: {subset}_image_params.csv (default: DIR's name)")
    p.add_argument("--dataset-path", default=C.DATASET_PATH,
                   help="Open Images folder with train/, validation/, test/ (default: %(default)s)")
    p.add_argument("--input-path", default=C.INPUT_PATH,
                   help="folder holding the kaggle_test images (default: %(default)s)")
    p.add_argument("--output-path", default=C.OUTPUT_PATH, help="where the CSVs go (default: %(default)s)")
    p.add_argument("--workers", type=positive_int, default=os.cpu_count(),
                   help="processes reading images; 1 reads in this process (default: %(default)s)")
    p.add_argument("--extensions", nargs="+", default=list(DEFAULT_EXTENSIONS),
                   help="file extensions to scan, case-sensitive; the id is the name without it "
                        "(default: %(default)s; e.g. jpg jpeg png)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run(args: argparse.Namespace, layout: str) -> int:
    """Scan what the parsed options ask for and print one summary line per subset."""
    setup_logging(args.verbose)
    if args.images:
        subset = args.subset or Path(os.path.abspath(args.images)).name
        summaries = [scan_images(args.images, Path(args.output_path) / f"{subset}_image_params.csv", subset,
                                 args.workers, args.extensions)]
    else:
        folders = subset_folders(layout, args.dataset_path, args.input_path)
        summaries = scan_subsets({s: folders[s] for s in args.subsets}, args.output_path, args.workers,
                                 args.extensions)
    for s in summaries:
        print(s.line())
    return 0


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(build_parser(__doc__, "2018", list(SUBSETS_2018)).parse_args(argv), "2018")


if __name__ == "__main__":
    raise SystemExit(main())
