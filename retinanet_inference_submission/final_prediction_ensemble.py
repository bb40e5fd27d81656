"""The last steps of the 2019 submission (gujingxiao's final_prediction_ensemble.py).

Three steps, run in this order on the parts made by split_csv.py:

  ensemble             several all-level submissions merged into one, per part: every file is one list of
                       boxes, merged with gujingxiao's merge (IoU above 0.55 with the same label, against the
                       clusters as they were before each file), numbers written as Python writes floats
  combine              the parts put back together, row after row
  delete-low-scores    only the boxes scoring above 0.02 kept (what the original's __main__ ran; the other two
                       were commented out there). Without a step, this one with the original's file names.

The original paired the rows of the ensembled files by position, ImageId from the first file (mixing images
when the orders differed, crashing when a later file was shorter); here rows are matched by ImageId
(--by-position keeps the original's pairing). It weighted each file 1 / the number of files with boxes for
that image, so a box's score halved or not depending on whether the other model found anything in the image;
here every file weighs 1 / the number of files (--original-weights keeps the original's). It never cut an
image's boxes (the limit was commented out): --limit-boxes does. combine refuses an ImageId found twice (the
original wrote it twice). Bad rows stop with the file, line and value (the original called exit() or crashed
on a double space); ImageIds stay strings.
"""

from __future__ import annotations

import argparse

try:
    from retinanet_inference_submission import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

from oid_retinanet.boxes.merge import CONF_TYPES
from oid_retinanet.cli import fraction, positive_int, script_main, setup_logging
from oid_retinanet.predict.submission_2019 import (
    COMBINE_INPUTS,
    COMBINE_OUTPUT,
    FINAL_ENSEMBLE_INPUTS,
    FINAL_ENSEMBLE_OUTPUT,
    FINAL_IOU_THR,
    LOW_SCORES_INPUT,
    LOW_SCORES_OUTPUT,
    LOW_SCORES_THR,
    combine_parts,
    delete_low_scores,
    final_ensemble,
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-v", "--verbose", action="store_true")
    steps = p.add_subparsers(dest="step", metavar="STEP")

    e = steps.add_parser("ensemble", help="merge several all-level submissions (one part of each)")
    e.add_argument("inputs", nargs="*", default=list(FINAL_ENSEMBLE_INPUTS),
                   help="predictions CSVs, one list of boxes each (default: %(default)s)")
    e.add_argument("-o", "--output", help=f"output CSV (default: {FINAL_ENSEMBLE_OUTPUT.format(type='TYPE')})")
    e.add_argument("--type", choices=CONF_TYPES, default="avg", help="merged score (default: %(default)s)")
    e.add_argument("--iou-thr", type=fraction, default=FINAL_IOU_THR,
                   help="boxes of a label merge above this IoU (default: %(default)s)")
    e.add_argument("--limit-boxes", type=positive_int,
                   help="keep an image's best N boxes (default: all, as the original)")
    e.add_argument("--by-position", action="store_true",
                   help="pair the k-th rows of the inputs, ImageId from the first (the original's behaviour)")
    e.add_argument("--original-weights", action="store_true",
                   help="weigh each file 1 / the number of files with boxes for the image (the original's)")

    c = steps.add_parser("combine", help="put the ensembled parts back together")
    c.add_argument("inputs", nargs="*", default=list(COMBINE_INPUTS),
                   help="the parts, in order (default: %(default)s)")
    c.add_argument("-o", "--output", default=COMBINE_OUTPUT, help="output CSV (default: %(default)s)")

    d = steps.add_parser("delete-low-scores", help="keep the boxes scoring above a threshold")
    d.add_argument("input_csv", nargs="?", default=LOW_SCORES_INPUT, help="predictions CSV (default: %(default)s)")
    d.add_argument("--thr", type=float, default=LOW_SCORES_THR,
                   help="keep boxes scoring strictly above this (default: %(default)s)")
    d.add_argument("-o", "--output", help=f"output CSV (default: {LOW_SCORES_OUTPUT.format(thr='THR')})")
    return p


@script_main
def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose)
    if args.step is None:  # the original's __main__
        args = parser.parse_args(["delete-low-scores"])
    if args.step == "ensemble":
        output = args.output or FINAL_ENSEMBLE_OUTPUT.format(type=args.type)
        summary = final_ensemble(args.inputs, output, args.iou_thr, args.type, args.limit_boxes, args.by_position,
                                 args.original_weights)
    elif args.step == "combine":
        output = args.output
        summary = combine_parts(args.inputs, output)
    else:
        output = args.output or LOW_SCORES_OUTPUT.format(thr=args.thr)
        summary = delete_low_scores(args.input_csv, output, args.thr)
    print(f"{output}: {summary.line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
