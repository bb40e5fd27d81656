"""2019 levels (gujingxiao): split the challenge train boxes into seven per-level training files.

Reads LABEL_PATH/challenge-2019-train-detection-bbox.csv, drops group-of boxes, and writes
OUTPUT_PATH/level_K_files/class-descriptions-boxable-level-K.csv and train-annotations-bbox-level-K.csv
for levels 1-7 (1-5 leaf classes by frequency band, 6-7 parent classes).

The level classes are shipped as MIDs, so no display name is ambiguous. The original looked every name up
in the class list (the last row winning) and crashed on names missing there (levels 3 and 4 with some
lists); --resolve-names does that lookup, with a clear error instead of the crash. --bands makes levels
from any annotation file by box count instead of the shipped lists.
"""

from __future__ import annotations

import argparse
import os

try:
    from labelProcess import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main, setup_logging
from oid_retinanet.oid.annotations import read_boxes
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.oid.hierarchy import Hierarchy
from oid_retinanet.oid.levels import frequency_band_levels, levels_2019, write_level_files

ALL_LEVELS = ["1", "2", "3", "4", "5", "6", "7"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", nargs="+", help="levels to write (default: all)")
    p.add_argument("--train-csv", default=os.path.join(C.LABEL_PATH, "challenge-2019-train-detection-bbox.csv"),
                   help="train box annotations (default: %(default)s)")
    p.add_argument("--output-path", default=C.OUTPUT_PATH, help="where level_K_files/ go (default: %(default)s)")
    p.add_argument("--class-descriptions", default=C.CLASS_DESCRIPTIONS_2019_CSV,
                   help="class list for --resolve-names and --bands (default: %(default)s)")
    p.add_argument("--resolve-names", action="store_true",
                   help="the original's lookup: each level name through --class-descriptions, last row wins")
    p.add_argument("--bands", nargs="+", type=int, metavar="RANK",
                   help="levels by box count instead of the shipped lists: rank bounds, e.g. 38 173 308; "
                        "candidates are the leaves of --hierarchy")
    p.add_argument("--hierarchy", default=C.HIERARCHY_2019_JSON, help="hierarchy for --bands (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    boxes = read_boxes(args.train_csv)
    if args.bands:
        classes = read_class_descriptions(args.class_descriptions)
        leaves = [m for m in Hierarchy.from_json(args.hierarchy).leaves() if m in classes]
        specs = frequency_band_levels(boxes[boxes["IsGroupOf"] == 0], args.bands, classes, leaves)
    else:
        names = read_class_descriptions(args.class_descriptions, allow_aliases=True) if args.resolve_names else None
        specs = levels_2019(names)
    keys = args.levels or list(specs)
    unknown = [k for k in keys if k not in specs]
    if unknown:
        raise SystemExit(f"error: no level {', '.join(unknown)}; levels are {', '.join(specs)}")
    write_level_files([specs[k] for k in keys], {k: {"train": args.train_csv} for k in keys},
                      args.output_path, read=lambda _path: boxes)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
