"""What the model is trained on, drawn, and the anchors' coverage of the boxes (keras-retinanet's debug.py).

For a level's images (--level, --split, --subset), or a dataset of your own (keras-retinanet's forms `csv
ANNOTATIONS CLASSES` and `coco COCO_PATH`, or --dataset-format with --annotations), each image as the generator
prepares it (resized to --image-min-side/--image-max-side, with --random-transform the training augmentation), its
boxes green where some anchor is positive for them (IoU >= 0.5) and red where none is, and the positive anchors
yellow (--no-anchors hides them); PNG files in --save-path, and in a window where a display exists (matplotlib's;
any key shows the next image, q stops; --no-window to skip it). Always prints, by box size, how many boxes no anchor
learns: the number anchor settings (--config, keras-retinanet's config.ini) are tuned with. Example:

    python retinanet_training_level_1/debug.py --level 1 --limit 200 --save-path debug/ --config anchors.ini
    python retinanet_training_level_1/debug.py --save-path debug/ csv train.csv classes.csv
"""

from __future__ import annotations

try:
    from retinanet_training_level_1 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import argparse
import logging

import a00_utils_and_constants as C
from oid_retinanet.cli import positive_int, script_main, setup_logging
from oid_retinanet.errors import OIDInputError

log = logging.getLogger("debug")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from oid_retinanet.data.datasets import add_dataset_options
    from oid_retinanet.model.backbones import default_sides, usage
    from oid_retinanet.oid.levels import SPLITS

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("dataset", nargs="*", metavar="[csv ANNOTATIONS CLASSES | coco COCO_PATH | oid DATASET_PATH]",
                   help="keras-retinanet's dataset forms (default: the level's files)")
    add_dataset_options(p, "--annotations")
    p.add_argument("--annotations", metavar="FILE", help="the --subset's annotation file instead of the default")
    p.add_argument("--level", "--label-level", default="1", help="the level's files (default: %(default)s)")
    p.add_argument("--split", choices=SPLITS, default="levels", help="stage 1's files or the 2019 exists split "
                   "(default: %(default)s)")
    p.add_argument("--subset", choices=["train", "validation"], default="train", help="(default: %(default)s)")
    p.add_argument("--dataset-path", default=C.DATASET_PATH, help="images (default: %(default)s)")
    p.add_argument("--output-path", default=C.OUTPUT_PATH, help="level files and image parameters "
                   "(default: %(default)s)")
    p.add_argument("--backbone", default="resnet50", help=f"whose feature maps place the anchors: {usage()} "
                   "(default: %(default)s)")
    sides = default_sides("resnet50")
    p.add_argument("--image-min-side", type=positive_int, default=sides[0], help="(default: %(default)s)")
    p.add_argument("--image-max-side", type=positive_int, default=sides[1], help="(default: %(default)s)")
    p.add_argument("--config", metavar="FILE", help="keras-retinanet's config.ini with the anchors to check")
    p.add_argument("--random-transform", action="store_true", help="apply the training augmentation first")
    p.add_argument("--no-anchors", dest="anchors", action="store_false", help="do not draw the positive anchors")
    p.add_argument("--limit", type=positive_int, help="the first N images only (default: all)")
    p.add_argument("--save-path", metavar="DIR", help="draw the images into DIR as PNG files")
    p.add_argument("--no-window", dest="window", action="store_false",
                   help="no window even where a display exists (default: one where it does)")
    p.add_argument("--seed", type=int, default=0, help="of the random transform (default: %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    return p.parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    setup_logging(args.verbose)
    from oid_retinanet.data.augment import RandomTransform
    from oid_retinanet.data.datasets import dataset_sources, dataset_words
    from oid_retinanet.data.debug import debug_images, show_in_window, window_available
    from oid_retinanet.data.generator import GeneratorConfig, OpenImagesGenerator
    from oid_retinanet.model.anchors import DEFAULT_ANCHOR_PARAMS, read_anchor_config
    from oid_retinanet.model.backbones import family, feature_shapes_fn

    family(args.backbone)  # a clear error for an unknown name
    words = dataset_words(args.dataset)
    given = {args.subset: words.get("annotations", args.annotations)}
    sources = dataset_sources(words.get("format", args.dataset_format), words.get("dataset_path", args.dataset_path),
                              args.output_path, args.level, args.split, train=given.get("train"),
                              validation=given.get("validation"), classes=words.get("classes", args.csv_classes))
    if args.subset not in sources:
        raise OIDInputError(f"no {args.subset} annotations given (--annotations)")
    source = sources[args.subset]
    data = source.load()
    anchors = read_anchor_config(args.config) if args.config else DEFAULT_ANCHOR_PARAMS
    generator = OpenImagesGenerator(data, GeneratorConfig(
        min_side=args.image_min_side, max_side=args.image_max_side, anchor_params=anchors,
        feature_shapes=feature_shapes_fn(args.backbone), transform=RandomTransform.ORIGINAL_FULL,
        sampling="sequential"))
    indices = range(min(len(data), args.limit or len(data)))
    show = show_in_window if args.window and window_available() else None
    if show is None and args.save_path is None:
        log.info("no display for a window: give --save-path DIR for the drawings")
    coverage = debug_images(generator, indices, args.save_path, args.random_transform, args.anchors, args.seed, show)
    print(f"{len(indices)} images of {source.annotations} at {args.image_min_side}/"
          f"{args.image_max_side}, anchors {anchors.describe()}:\n{coverage.table()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
