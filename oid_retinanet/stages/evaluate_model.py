"""One command that scores a trained model on its level's validation images: keras-retinanet's evaluate.py for the
level files (retinanet_training_level_1/evaluate_retinanet_model.py) and gujingxiao's eval_oid_2019_resnet50.py
(retinanet_training_oid_2019/).

A dataset of your own is scored the same way: keras-retinanet's forms `csv ANNOTATIONS CLASSES MODEL` and `coco
COCO_PATH MODEL` (its val2017 set), or --dataset-format with --validation-annotations (data/datasets.py).

Stage 4 predicts the level's validation images into a cache folder (resumable; the image alone, no mirror, as
keras-retinanet evaluated), and the predictions are scored against the level file's boxes: the Open Images
metric, or keras-retinanet's VOC-style mAP (IoU 0.5, scores above 0.05, at most 300 detections an image). Images
without boxes are not scored and group-of boxes count as single boxes: a check of a level's model, not the
challenge score (evaluate_oid_map.py scores a submission on the official files). Prints a line per class and the
mAP as keras-retinanet did; writes map.json and per_class_ap.csv (evaluate_oid_map.py's report) to --output-dir.
"""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

import numpy as np

from oid_retinanet.cli import PARALLEL_ITERATIONS_HELP, fraction, positive_int, setup_logging
from oid_retinanet.errors import OIDInputError

log = logging.getLogger(__name__)

# keras-retinanet's evaluate.py, which gujingxiao's eval script called
VOC_OPTIONS = {"iou_threshold": 0.5, "score_threshold": 0.05, "max_detections": 300}


def build_parser(description: str, constants, split: str = "levels", metric: str = "oid") -> argparse.ArgumentParser:
    """The options, with the script's split and metric as defaults (`constants`: its a00, for the paths)."""
    from oid_retinanet.data.datasets import add_dataset_options
    from oid_retinanet.oid.levels import SPLITS

    p = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="*", metavar="[oid DATASET_PATH | csv ANNOTATIONS CLASSES | coco COCO_PATH] MODEL",
                   help="keras-retinanet's forms (or give --weights)")
    add_dataset_options(p, "--validation-annotations")
    p.add_argument("--weights", help="the model: ours (.keras) or keras-retinanet's .h5, training or converted")
    p.add_argument("--level", "--label-level", default="1", help="the level it was trained on (default: %(default)s)")
    p.add_argument("--split", choices=SPLITS, default=split,
                   help="which validation files: stage 1's (levels) or the 2019 exists split (default: %(default)s)")
    p.add_argument("--validation-annotations", "--val-annotations", metavar="FILE",
                   help="score on this annotation file instead of the split's")
    p.add_argument("--dataset-path", default=constants.DATASET_PATH, help="images (default: %(default)s)")
    p.add_argument("--output-path", default=constants.OUTPUT_PATH,
                   help="level files and image parameters (default: %(default)s)")
    p.add_argument("--metric", choices=["oid", "voc"], default=metric,
                   help="the Open Images metric or keras-retinanet's VOC-style mAP (default: %(default)s)")
    p.add_argument("--iou-threshold", type=fraction, default=VOC_OPTIONS["iou_threshold"],
                   help="voc: IoU of a true positive (default: %(default)s)")
    p.add_argument("--score-threshold", type=fraction, default=VOC_OPTIONS["score_threshold"],
                   help="voc: detections scoring above this count (default: %(default)s)")
    p.add_argument("--max-detections", type=positive_int, default=VOC_OPTIONS["max_detections"],
                   help="voc: detections an image at most (default: %(default)s)")
    p.add_argument("--save-path", metavar="DIR", help="draw the detections of every image into DIR")
    p.add_argument("--labels", metavar="FILE", help="the model's classes (default: its card, else the level's)")
    p.add_argument("--image-min-side", "--min-side", dest="min_side", type=positive_int,
                   help="resize: short side (default: the model's card, else the backbone's)")
    p.add_argument("--image-max-side", "--max-side", dest="max_side", type=positive_int,
                   help="resize: long side at most (default: the model's card, else the backbone's)")
    p.add_argument("--config", metavar="FILE", help="keras-retinanet's config.ini (only for a model without a card)")
    p.add_argument("--cache-dir", help="prediction cache (default: OUTPUT_PATH/cache_retinanet_<model>_level_<L>_"
                                       "validation/)")
    p.add_argument("--output-dir", help="report folder (default: the cache folder's eval/)")
    p.add_argument("--batch-size", type=positive_int, default=1, help="images per model call (default: %(default)s)")
    p.add_argument("--convert-model", action="store_true",
                   help="accepted: a training model is always converted to an inference model on load")
    p.add_argument("--parallel-iterations", type=positive_int, metavar="N", help=PARALLEL_ITERATIONS_HELP)
    p.add_argument("--gpu", help="accepted for compatibility: sets CUDA_VISIBLE_DEVICES")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def parse(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse, mapping keras-retinanet's `oid DATASET_PATH MODEL`, `csv ANNOTATIONS CLASSES MODEL` and `coco
    COCO_PATH MODEL` forms onto --dataset-format, --dataset-path, --validation-annotations, --csv-classes and
    --weights."""
    from oid_retinanet.data.datasets import dataset_words

    args = parser.parse_args(argv)
    if args.model:
        args.weights = args.model[-1]
        try:
            words = dataset_words(args.model[:-1])
        except OIDInputError as exc:
            parser.error(str(exc).replace("`oid DATASET_PATH`", "`oid DATASET_PATH MODEL`"))
        args.dataset_format = words.get("format", args.dataset_format)
        args.dataset_path = words.get("dataset_path", args.dataset_path)
        args.validation_annotations = words.get("annotations", args.validation_annotations)
        args.csv_classes = words.get("classes", args.csv_classes)
    if not args.weights:
        parser.error("the model is needed: --weights FILE (or `oid DATASET_PATH MODEL`)")
    return args


def run(args: argparse.Namespace) -> int:
    """Predict the level's validation images and score them; prints the per-class lines and the mAP."""
    setup_logging(args.verbose)
    if args.gpu:
        os.environ["CUDA_VISIBLE_DEVICES"] = args.gpu
    from oid_retinanet.data.datasets import dataset_sources
    from oid_retinanet.evaluate import evaluate_predictions
    from oid_retinanet.evaluate.oid_map import write_report
    from oid_retinanet.model.anchors import read_anchor_config
    from oid_retinanet.model.card import read_card
    from oid_retinanet.oid.predictions import ImagePredictions
    from oid_retinanet.predict.cache import cache_file, cache_folder_name, read_cache
    from oid_retinanet.predict.inference import image_id, visualize
    from oid_retinanet.predict.resolve import resolve_model
    from oid_retinanet.stages.inference import predict_to_cache
    from oid_retinanet.train.callbacks import ap_lines, level_ground_truth

    if not os.path.isfile(args.weights):
        raise FileNotFoundError(2, "No such file or directory", args.weights)
    source = dataset_sources(args.dataset_format, args.dataset_path, args.output_path, args.level, args.split,
                             validation=args.validation_annotations, classes=args.csv_classes).get("validation")
    if source is None:
        raise OIDInputError("a csv dataset is scored on --validation-annotations (or `csv ANNOTATIONS CLASSES "
                            "MODEL`)")
    data = source.load()
    name = f"level_{args.level}" if args.dataset_format == "oid" else Path(source.annotations).name.split(".")[0]
    cache_dir = args.cache_dir or os.path.join(
        args.output_path, cache_folder_name(f"{Path(args.weights).stem}_{name}_validation"))
    card = read_card(args.weights)
    # a model whose card names no classes was trained on this data's (or is told them with --labels)
    labels = args.labels or (None if card is not None and card.classes is not None else data.classes)
    resolved = resolve_model(args.weights, labels=labels, min_side=args.min_side, max_side=args.max_side,
                             config=args.config, anchors=read_anchor_config(args.config) if args.config else None)
    # the images and boxes of the model's classes, in its output order (a model trained with --labels-filter is
    # scored on its classes only; one with classes the data lacks stops here, naming them)
    data = data.only(list(resolved.labels.mids))
    predict_to_cache(resolved, data.paths, cache_dir, flip=False, batch_size=args.batch_size)
    if args.save_path:
        visualize(data.paths, cache_dir, args.save_path, len(data.paths), resolved.labels.names)
    mids = np.asarray(data.classes.mids, dtype=object)

    def predictions():
        for path in data.paths:
            cache = read_cache(cache_file(cache_dir, image_id(path)), len(mids))
            keep = cache.labels[0] >= 0
            yield ImagePredictions(image_id(path), mids[cache.labels[0][keep]], cache.scores[0][keep],
                                   cache.boxes[0][keep])

    options = {k: getattr(args, k) for k in VOC_OPTIONS} if args.metric == "voc" else {}
    result = evaluate_predictions(level_ground_truth(data), predictions(), metric=args.metric, **options)
    for line in ap_lines(result):
        print(line)
    print(f"mAP: {result.mean_ap:.4f}")
    output_dir = args.output_dir or os.path.join(cache_dir, "eval")
    write_report(result, output_dir, extra={"weights": args.weights, "level": args.level, "split": args.split,
                                            "format": args.dataset_format, "annotations": source.annotations},
                 chart=False)
    log.info("%s mAP %.4f over %d classes with boxes; report in %s", args.metric, result.mean_ap,
             result.num_scored, output_dir)
    return 0
