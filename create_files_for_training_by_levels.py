"""Stage 1 (2018): split Open Images box annotations into the per-level training files.

Writes OUTPUT_PATH/level_K_files/ for levels 1-5 (and level_1_low_samples_files/ with --low-samples):
class-descriptions-boxable-level-K.csv and {train,validation}-annotations-bbox-level-K.csv, with the rows
ZFTurbo's 2018 script wrote. Inputs, as the original read them from the dataset path: level 1 uses
challenge-2019-{train,validation}-detection-bbox.csv, the other levels annotations/{train,validation}-
annotations-bbox.csv. --train-csv / --validation-csv use one file for every level instead.
"""

from __future__ import annotations

import argparse
import logging
import os

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main, setup_logging
from oid_retinanet.oid.annotations import read_boxes
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.oid.hierarchy import Hierarchy
from oid_retinanet.oid.levels import levels_2018, write_level_files

log = logging.getLogger("create_files_for_training_by_levels")


def default_input(dataset_path: str, level: str, subset: str) -> str:
    """The annotation file the original read for `level` and `subset` under the dataset path."""
    if level == "1":
        return os.path.join(dataset_path, f"challenge-2019-{subset}-detection-bbox.csv")
    return os.path.join(dataset_path, "annotations", f"{subset}-annotations-bbox.csv")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", nargs="+", choices=["1", "2", "3", "4", "5"], default=["1", "2", "3", "4", "5"],
                   help="levels to write (default: all five)")
    p.add_argument("--low-samples", action="store_true",
                   help="also write level_1_low_samples_files/ (level-1 classes with under 500 train boxes)")
    p.add_argument("--dataset-path", default=C.DATASET_PATH, help="Open Images folder (default: %(default)s)")
    p.add_argument("--output-path", default=C.OUTPUT_PATH, help="where level_K_files/ go (default: %(default)s)")
    p.add_argument("--train-csv", help="train box annotations for every level (default: as the original)")
    p.add_argument("--validation-csv", help="validation box annotations for every level")
    p.add_argument("--class-descriptions", default=C.CLASS_DESCRIPTIONS_CSV,
                   help="v4 class list, 601 classes (default: the shipped one)")
    p.add_argument("--hierarchy", default=C.HIERARCHY_JSON, help="v4 hierarchy JSON (default: the shipped one)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    classes = read_class_descriptions(args.class_descriptions)
    hierarchy = Hierarchy.from_json(args.hierarchy)
    specs = levels_2018(classes)
    keys = sorted(set(args.levels)) + (["1_low_samples"] if args.low_samples else [])
    given = {"train": args.train_csv, "validation": args.validation_csv}
    inputs = {k: {s: given[s] or default_input(args.dataset_path, specs[k].number, s)
                  for s in ("validation", "train")} for k in keys}
    summaries = write_level_files([specs[k] for k in keys], inputs, args.output_path,
                                  read=lambda path: read_boxes(path, classes), hierarchy=hierarchy)
    for s in summaries:
        print(s.line())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
