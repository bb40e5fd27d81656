"""Stage 4: predictions of one RetinaNet model for a set of images: a per-image cache, then a Kaggle CSV.

As ZFTurbo's `retinanet_inference_example.py`: every image is read, preprocessed, resized (ResNet50/101:
768/1024, ResNet152: 600/800, from the backbone in the weights file) and predicted together with its
horizontally mirrored copy; boxes normalised by the resized image's size are cached per image in
--cache-dir (images already cached are skipped, so a rerun resumes). Then both rows of every cache file in
the folder are merged (`create_csv_for_retinanet`: boxes scoring at least --skip-box-thr, the weighted merge
at --iou-thr, the best --limit-boxes) into `ImageId,PredictionString` rows.

--weights: a keras-retinanet .h5 (training or converted) or one of ours (.keras); a training model is
converted to an inference model on load. The model's card (inside our .keras files, or a <weights>.card.json
sidecar) gives its classes, image sides and anchors; the flags --labels, --min-side/--max-side and --config
override it (predict/resolve.py says the order). Without a card: the cache folder's classes.csv, else the
released models' lists for 443 (2018 level 1) and 500 (2019) classes, and the backbone's sides. The cache
folder records the list in classes.csv: --from-cache reads it from there, and a model with another class
list cannot write into the folder.
--no-flip predicts the image alone: its cache files have one row and the CSV keeps its scores as they are
(a second, empty row would give the image's boxes the weight 1/2 of a two-list merge and halve them).
--shard I/N predicts every N-th of the sorted images (run the N shards anywhere on one cache folder) and
writes no CSV; write it with --from-cache when all shards are done. Unreadable images are listed in
<cache-dir>/failures.txt and skipped.
"""

from __future__ import annotations

import argparse

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.stages.inference import build_parser, parse, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return parse(build_parser(__doc__), argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv), C)


if __name__ == "__main__":
    raise SystemExit(main())
