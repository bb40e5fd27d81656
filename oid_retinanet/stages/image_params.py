"""Stage 2's command line, the image-parameter scan: retinanet_training_level_1/find_image_parameters.py (2018
layout) and labelProcess/collect_image_parameters.py (2019 layout)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from oid_retinanet.cli import positive_int, setup_logging
from oid_retinanet.data.image_params import (
    DEFAULT_EXTENSIONS,
    SUBSET_FOLDERS,
    scan_images,
    scan_subsets,
    subset_folders,
)


def build_parser(description: str, layout: str, default_subsets: list[str], constants) -> argparse.ArgumentParser:
    """The options of the image-parameter scan, shared by the 2018 and the 2019 (labelProcess) script; `constants`
    (the script's a00) gives the default paths."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--subsets", nargs="+", choices=list(SUBSET_FOLDERS[layout]), default=default_subsets,
                   help="subsets to scan, in this order (default: %(default)s)")
    p.add_argument("--images", metavar="DIR", help="scan this folder instead of the subsets' folders")
    p.add_argument("--subset", help="output name for --images: {subset}_image_params.csv (default: DIR's name)")
    p.add_argument("--dataset-path", default=constants.DATASET_PATH,
                   help="Open Images folder with train/, validation/, test/ (default: %(default)s)")
    p.add_argument("--input-path", default=constants.INPUT_PATH,
                   help="folder holding the kaggle_test images (default: %(default)s)")
    p.add_argument("--output-path", default=constants.OUTPUT_PATH, help="where the CSVs go (default: %(default)s)")
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
