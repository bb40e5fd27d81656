"""Concatenate per-level 2019 submissions into one (gujingxiao's concat_all_levels_submission.py).

Each output row holds an image's boxes from every input, in input order. Rows are matched by ImageId: images
come in the first input's order, then images found only in later inputs; an image missing from some inputs
keeps the boxes of the others (the counts are logged). The original paired the k-th rows of the files and
took the ImageId from the first, which silently mixed images when the files' orders differed: --by-position
does that (the inputs must have as many rows; rows whose ImageIds differ are counted). Tokens are copied
verbatim. Without arguments, the original's five level files and output name in the current folder.
"""

from __future__ import annotations

import argparse

try:
    from retinanet_inference_submission import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

from oid_retinanet.cli import script_main, setup_logging
from oid_retinanet.predict.submission_2019 import CONCAT_INPUTS, CONCAT_OUTPUT, concat_submissions


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="*", default=list(CONCAT_INPUTS),
                   help="per-level predictions CSVs, in order (default: %(default)s)")
    p.add_argument("-o", "--output", default=CONCAT_OUTPUT, help="output CSV (default: %(default)s)")
    p.add_argument("--by-position", action="store_true",
                   help="pair the k-th rows of the inputs, ImageId from the first (the original's behaviour)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    summary = concat_submissions(args.inputs, args.output, by_position=args.by_position)
    print(f"{args.output}: {summary.line()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
