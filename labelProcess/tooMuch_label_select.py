"""2019 too-much selection (gujingxiao): drop the images whose boxes are almost all of a few very frequent
labels.

An image is dropped, all its rows, when the boxes of --labels make up more than --max-share of its rows
(exactly --max-share is kept). Reads OUTPUT_PATH/level_K_files/train-exists-annotations-bbox-level-K.csv
and writes train-exists-annotations-bbox-level-K-select.csv beside it (--input and --output name other
files). Default labels: level 6 Tree, Person, Footwear (/m/07j7r /m/01g317 /m/09j5n), the original's
setting; level 1 Man, Human face, Woman, Window (/m/04yx4 /m/0dzct /m/03bt1vf /m/0d4v4), its commented one.
Logs the rows per label before and after.
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
from oid_retinanet.cli import fraction, script_main, setup_logging
from oid_retinanet.files import write_csv
from oid_retinanet.oid.annotations import read_boxes
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.oid.label_tools import (
    MAX_SHARE,
    TOO_MUCH_LABELS,
    check_mids,
    label_count_table,
    require_files,
    select_too_much,
)
from oid_retinanet.oid.levels import level_class_file, level_file

log = logging.getLogger("tooMuch_label_select")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--level", default="6", help="level whose files are read and written (default: %(default)s)")
    p.add_argument("--output-path", default=C.OUTPUT_PATH, help="where level_K_files/ are (default: %(default)s)")
    p.add_argument("--input", help="annotation CSV (default: level_K_files/train-exists-annotations-bbox-level-K.csv)")
    p.add_argument("--output", help="selected CSV (default: the input name with -select before .csv)")
    p.add_argument("--labels", nargs="+", metavar="MID",
                   help="the too-much labels (default: the original's list for levels 6 and 1)")
    p.add_argument("--max-share", type=fraction, default=MAX_SHARE,
                   help="drop an image when these labels make up more than this share of its boxes "
                        "(default: %(default)s)")
    p.add_argument("--class-descriptions",
                   help="class list for names in the log (default: the level's, when present)")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.labels is None:
        if args.level not in TOO_MUCH_LABELS:
            p.error(f"no default labels for level {args.level}; give --labels")
        args.labels = list(TOO_MUCH_LABELS[args.level])
    return args


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    labels = check_mids(args.labels)
    src = args.input or level_file(args.output_path, args.level, "train-exists")
    dst = args.output or os.path.splitext(src)[0] + "-select.csv"
    require_files([src])
    setup_logging(args.verbose)
    class_file = args.class_descriptions or level_class_file(args.output_path, args.level)
    classes = None
    if args.class_descriptions or os.path.isfile(class_file):
        classes = read_class_descriptions(class_file, allow_aliases=True)
    boxes = read_boxes(src, allow_negatives=True)
    absent = [m for m in labels if not (boxes["LabelName"] == m).any()]
    if absent:
        log.warning("label(s) with no boxes in %s: %s", src, ", ".join(absent))
    kept, dropped = select_too_much(boxes, labels, args.max_share)
    write_csv(kept, dst)
    table = label_count_table(boxes, kept, classes)
    log.info("rows per label before and after:\n%s", table.to_string(index=False))
    log.info("dropped %d of %d images (%d of %d rows); %d images, %d rows -> %s", len(dropped),
             boxes["ImageID"].nunique(), len(boxes) - len(kept), len(boxes), kept["ImageID"].nunique(),
             len(kept), dst)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
