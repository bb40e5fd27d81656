"""2019 class distribution (gujingxiao): boxes per class, as CSV tables and PNG bar charts.

--mode levels (default): for each level, the classes of level_K_files/class-descriptions-boxable-level-K.csv
and the boxes of level_K_files/train-annotations-bbox-level-K.csv (--file-pattern for other files, e.g.
'train-exists-annotations-bbox-level-{level}.csv') give class_distribution_level_K.csv (mid, name, boxes,
images, group_of_boxes; most boxes first) and class_distribution_level_K.png. --annotations CSV
[--class-descriptions CSV] analyses one file instead, named by --levels K or 'all'.

--mode hierarchy: the original's analysis. The classes of the class list are split into leaves of the
hierarchy and parents (the others), each ranked by box count (group-of included) and cut into bands
(leaves at ranks 38 173 308, the 2019 levels 1-4; parents at 20): class_ranking.csv,
class_ranking_leaves.png, class_ranking_parents.png, and the bands in the log.
"""

from __future__ import annotations

import argparse
import logging
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
from oid_retinanet.oid.label_tools import (
    LEAF_BANDS,
    PARENT_BANDS,
    band_summary,
    require_files,
    write_distribution,
    write_ranking,
)
from oid_retinanet.oid.levels import level_class_file, level_folder

log = logging.getLogger("analyse_class_distribution")
ALL_LEVELS = ["1", "2", "3", "4", "5", "6", "7"]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("levels", "hierarchy"), default="levels",
                   help="per-level tables, or leaves and parents ranked (default: %(default)s)")
    p.add_argument("--levels", nargs="+", metavar="K", help=f"levels (default: {' '.join(ALL_LEVELS)})")
    p.add_argument("--output-path", default=C.OUTPUT_PATH,
                   help="where level_K_files/ are read (default: %(default)s)")
    p.add_argument("--file-pattern", default="train-annotations-bbox-level-{level}.csv",
                   help="annotation file of a level folder (default: %(default)s)")
    p.add_argument("--annotations", help="one annotation CSV to analyse (levels mode) or the train boxes "
                   "(hierarchy mode; default: LABEL_PATH/challenge-2019-train-detection-bbox.csv)")
    p.add_argument("--class-descriptions", help="class list of --annotations (hierarchy mode default: "
                   f"{C.CLASS_DESCRIPTIONS_2019_CSV})")
    p.add_argument("--hierarchy", default=C.HIERARCHY_2019_JSON, help="hierarchy mode: (default: %(default)s)")
    p.add_argument("--leaf-bands", nargs="+", type=int, default=list(LEAF_BANDS), metavar="RANK",
                   help="hierarchy mode: rank bounds of the leaf bands (default: %(default)s)")
    p.add_argument("--parent-bands", nargs="+", type=int, default=list(PARENT_BANDS), metavar="RANK",
                   help="hierarchy mode: rank bounds of the parent bands (default: %(default)s)")
    p.add_argument("--out-dir", help="where the tables and charts go (default: --output-path)")
    p.add_argument("--no-plot", action="store_true", help="tables only")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.mode == "levels" and args.annotations and args.levels and len(args.levels) != 1:
        p.error("with --annotations give one level name with --levels")
    return args


def _levels(args: argparse.Namespace, out_dir: str) -> None:
    if args.annotations:
        jobs = [(args.levels[0] if args.levels else "all", args.annotations, args.class_descriptions)]
    else:
        jobs = [(k, os.path.join(level_folder(args.output_path, k), args.file_pattern.format(level=k)),
                 args.class_descriptions or level_class_file(args.output_path, k)) for k in args.levels or ALL_LEVELS]
    require_files(p for _, path, classes in jobs for p in (path, classes) if p)
    setup_logging(args.verbose)
    for key, path, class_file in jobs:
        classes = read_class_descriptions(class_file, allow_aliases=True) if class_file else None
        boxes = read_boxes(path, allow_negatives=True)
        name = key if key == "all" else f"level_{key}"
        label = "all classes" if key == "all" else f"level {key}"
        table = write_distribution(boxes, classes, out_dir, name, f"{label} ({os.path.basename(path)})",
                                   plot=not args.no_plot)
        log.info("%s: %d classes, %d boxes -> %s", label, len(table), int(table["boxes"].sum()),
                 os.path.join(out_dir, f"class_distribution_{name}.csv"))


def _hierarchy(args: argparse.Namespace, out_dir: str) -> None:
    annotations = args.annotations or os.path.join(C.LABEL_PATH, "challenge-2019-train-detection-bbox.csv")
    class_file = args.class_descriptions or C.CLASS_DESCRIPTIONS_2019_CSV
    require_files([annotations, class_file, args.hierarchy])
    setup_logging(args.verbose)
    classes = read_class_descriptions(class_file)
    hierarchy = Hierarchy.from_json(args.hierarchy)
    boxes = read_boxes(annotations, allow_negatives=True)
    ranking = write_ranking(boxes, classes, hierarchy, out_dir, args.leaf_bands, args.parent_bands,
                            plot=not args.no_plot)
    log.info("bands:\n%s", band_summary(ranking).to_string(index=False))
    log.info("%s -> %s", annotations, os.path.join(out_dir, "class_ranking.csv"))


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir = args.out_dir or args.output_path
    if args.mode == "levels":
        _levels(args, out_dir)
    else:
        _hierarchy(args, out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
