"""Split a 2019 submission into parts of 20,000 rows (gujingxiao's split_csv.py).

The original cut the all-levels submission of the ResNet152/101 ensemble into five files
`{name}_part_{0..4}.csv`, so that the final ensemble (final_prediction_ensemble.py) could run part by part
in memory. Here the parts go beside the input (or into --output-dir); at least --parts files are written
(header-only ones if the input is short, as the original did), more if the input needs them: the original
silently dropped the rows past the fifth part and past row 99,999. Rows are copied verbatim, ImageIds stay
strings (pandas made all-digit ids numbers, and the original crashed writing them), and every row is checked.
Without arguments, the original's input name in the current folder.
"""

from __future__ import annotations

import argparse

try:
    from retinanet_inference_submission import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

from oid_retinanet.cli import positive_int, script_main, setup_logging
from oid_retinanet.predict.submission_2019 import SPLIT_INPUT, SPLIT_PARTS, SPLIT_ROWS, split_submission


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input_csv", nargs="?", default=SPLIT_INPUT, help="predictions CSV (default: %(default)s)")
    p.add_argument("--rows-per-part", type=positive_int, default=SPLIT_ROWS,
                   help="data rows in each part (default: %(default)s)")
    p.add_argument("--parts", type=positive_int, default=SPLIT_PARTS,
                   help="parts written at least (default: %(default)s)")
    p.add_argument("--output-dir", help="folder of the parts (default: the input's folder)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    parts = split_submission(args.input_csv, args.rows_per_part, args.parts, args.output_dir)
    for path, rows in parts:
        print(f"{path}: {rows} images")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
