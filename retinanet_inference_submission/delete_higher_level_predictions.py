"""Delete the parent-class boxes of a 2019 submission (gujingxiao's delete_higher_level_predictions.py).

Keeps only the boxes whose label is one of the 443 leaf classes of the 2019 levels 1-5 (the original's
LEVEL_CHILDREN), or of the classes of --keep-classes. Tokens are copied verbatim; an image left without
boxes is written `id,`. The original's __main__ read and wrote the file names below, in the current folder.
"""

from __future__ import annotations

import argparse

try:
    from retinanet_inference_submission import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

from oid_retinanet.cli import script_main, setup_logging
from oid_retinanet.oid.classes import read_class_descriptions
from oid_retinanet.predict.submission_2019 import delete_higher_level

INPUT_CSV = "retinanet_ensemble_submission_0.1_0.55_predictions_all_levels.csv"
OUTPUT_CSV = "retinanet_ensemble_submission_0.1_0.55_predictions.csv"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input_csv", nargs="?", default=INPUT_CSV, help="predictions CSV (default: %(default)s)")
    p.add_argument("output_csv", nargs="?", default=OUTPUT_CSV, help="output CSV (default: %(default)s)")
    p.add_argument("--keep-classes", metavar="CSV",
                   help="class-description file of the classes to keep (default: the 443 2019 leaf classes)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    keep = read_class_descriptions(args.keep_classes, allow_aliases=True).mids if args.keep_classes else None
    summary = delete_higher_level(args.input_csv, args.output_csv, keep)
    print(f"{args.output_csv}: {summary.line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
