"""Stage 5: add parent-class boxes to a predictions CSV through the label hierarchy.

Reads a Kaggle `ImageId,PredictionString` CSV (e.g. the level-1 model's predictions, 443 leaf classes) and
writes the same rows with, after each image's boxes, one box per parent class: every box is copied to each of
its ancestors, and the copies of one parent class in one image are reduced by NMS. --only-new writes the
parent boxes alone (the original's return_only_new; its __main__ ran with it on fixed file names).

Defaults reproduce ZFTurbo's 2018 script exactly, quirks included: parents looked up by display name through
the 500-class list and the v4 600 hierarchy (so Training bench boxes gain Furniture and computer mice gain
Animal, their names in the 500 list being "Bench" and "Mouse"), NMS at IoU 0.75 with the pixel '+1' on
normalised coordinates. --variant 2019 is gujingxiao's script (the 2019 hierarchy and class list from
LABEL_PATH, NMS 0.9). --corrected keys parents by MID and drops the '+1'; --iou-thr sets the threshold.

Large files are streamed in blocks; the output is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import argparse
import os

import a00_utils_and_constants as C
from oid_retinanet.cli import fraction, script_main, setup_logging
from oid_retinanet.errors import OIDInputError
from oid_retinanet.predict.expand import DEFAULT_BLOCK_SIZE, DEFAULT_IOU_THR, VARIANTS, expand_csv, load_parent_table

# Each variant's metadata: the class list of the predictions, the hierarchy, and the list naming its nodes
# (None: the class list itself).
VARIANT_FILES = {
    "2018": (C.CLASS_DESCRIPTIONS_500_CSV, C.HIERARCHY_JSON, C.CLASS_DESCRIPTIONS_CSV),
    "2019": (C.CLASS_DESCRIPTIONS_2019_CSV, C.HIERARCHY_2019_JSON, None),
}


def build_parser(description: str, variant: str, input_csv: str, output_csv: str) -> argparse.ArgumentParser:
    """The options of the expansion, shared by the 2018 script and the 2019 one (retinanet_inference_submission/)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input_csv", nargs="?", default=input_csv, help="predictions CSV (default: %(default)s)")
    p.add_argument("output_csv", nargs="?", default=output_csv, help="output CSV (default: %(default)s)")
    p.add_argument("--only-new", action="store_true", help="write only the added parent boxes")
    p.add_argument("--variant", choices=VARIANTS, default=variant,
                   help="2018: ZFTurbo's script; 2019: gujingxiao's (default: %(default)s)")
    p.add_argument("--iou-thr", type=fraction, metavar="X",
                   help="NMS threshold for the parent boxes (default: the variant's, "
                        + ", ".join(f"{v}: {t}" for v, t in DEFAULT_IOU_THR.items()) + ")")
    p.add_argument("--corrected", action="store_true",
                   help="parents keyed by MID (not by display name) and IoU without the '+1'")
    p.add_argument("--class-descriptions", metavar="CSV",
                   help="class list of the predictions (default: 2018 " + VARIANT_FILES["2018"][0]
                        + "; 2019 " + VARIANT_FILES["2019"][0] + ")")
    p.add_argument("--hierarchy", metavar="JSON",
                   help="label hierarchy (default: 2018 " + VARIANT_FILES["2018"][1] + "; 2019 "
                        + VARIANT_FILES["2019"][1] + ")")
    p.add_argument("--hierarchy-names", metavar="CSV",
                   help="class list naming the hierarchy's nodes for the by-name lookup (default: 2018 "
                        + VARIANT_FILES["2018"][2] + "; 2019 the --class-descriptions file)")
    p.add_argument("--block-size", type=int, default=DEFAULT_BLOCK_SIZE >> 20, choices=range(1, 257), metavar="MB",
                   help="MB of CSV processed at a time, 1-256; memory grows with it (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def run(args: argparse.Namespace) -> int:
    """Expand as the parsed options ask and print a summary line."""
    setup_logging(args.verbose)
    default_labels, default_hierarchy, default_names = VARIANT_FILES[args.variant]
    labels = args.class_descriptions or default_labels
    names = args.hierarchy_names or default_names or labels
    for path, option in ((labels, "--class-descriptions"), (args.hierarchy or default_hierarchy, "--hierarchy")):
        if not os.path.exists(path):
            raise OIDInputError(f"not found; the 2019 class list and hierarchy are not shipped: put them in "
                                f"LABEL_PATH ({C.LABEL_PATH}) or pass {option}" if args.variant == "2019"
                                else f"not found (pass {option})", path)
    table = load_parent_table(labels, args.hierarchy or default_hierarchy, names, corrected=args.corrected)
    iou_thr = DEFAULT_IOU_THR[args.variant] if args.iou_thr is None else args.iou_thr
    summary = expand_csv(args.input_csv, args.output_csv, table, iou_thr=iou_thr, plus_one=not args.corrected,
                         return_only_new=args.only_new, block_size=args.block_size << 20)
    print(f"{args.output_csv}: {summary.line()}")
    return 0


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser(__doc__, "2018", C.SUBM_PATH + "retinanet_training_level_1.csv",
                          C.SUBM_PATH + "retinanet_level_1_all_levels.csv")
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
