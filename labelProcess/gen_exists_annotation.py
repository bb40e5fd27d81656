"""2019 exists split (gujingxiao): per level, keep the boxes of the images present in the train image folder
and split them by image into a validation and a train file.

Reads OUTPUT_PATH/level_K_files/train-annotations-bbox-level-K.csv and writes, beside it,
val-exists-annotations-bbox-level-K.csv and train-exists-annotations-bbox-level-K.csv.

The folder listing (every entry, '.jpg' removed) is shuffled; its first int(ratio * entries) names are the
validation images. As in the original the ratio applies to the whole folder, not to the level's images
(--split-level-images applies it to the level's images). Default ratios per level: 1: 0.007, 2: 0.015,
3: 0.03, 4: 0.04, 5: 0.03, 6: 0.006, 7: 0.03. Unlike the original's unseeded shuffle, --seed makes the split
reproducible, and every level uses the same shuffled order.
"""

from __future__ import annotations

import argparse

try:
    from labelProcess import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import fraction, script_main, setup_logging
from oid_retinanet.oid.label_tools import DEFAULT_VAL_RATIOS, write_exists_splits


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--levels", nargs="+", default=list(DEFAULT_VAL_RATIOS), metavar="K",
                   help=f"levels to split (default: {' '.join(DEFAULT_VAL_RATIOS)})")
    p.add_argument("--images", default=C.DATASET_PATH + "train/",
                   help="the train image folder (default: %(default)s)")
    p.add_argument("--output-path", default=C.OUTPUT_PATH,
                   help="where level_K_files/ are read and written (default: %(default)s)")
    p.add_argument("--ratio", type=fraction, help="validation ratio for every level (default: the original's "
                                                "per-level ratios)")
    p.add_argument("--seed", type=int, default=0, help="seed of the shuffle (default: %(default)s)")
    p.add_argument("--split-level-images", action="store_true",
                   help="apply the ratio to the level's images in the folder, not to the whole folder listing")
    p.add_argument("-v", "--verbose", action="store_true")
    args = p.parse_args(argv)
    if args.ratio is None:
        unknown = [k for k in args.levels if k not in DEFAULT_VAL_RATIOS]
        if unknown:
            p.error(f"no default ratio for level {', '.join(unknown)}; give --ratio")
    return args


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    ratios = {k: args.ratio if args.ratio is not None else DEFAULT_VAL_RATIOS[k] for k in args.levels}
    write_exists_splits(args.levels, args.output_path, args.images, ratios, seed=args.seed,
                        split_level_images=args.split_level_images)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
