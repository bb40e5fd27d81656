"""Stage 3b: convert a RetinaNet training model into an inference model (boxes, scores, labels).

MODEL_IN is a keras-retinanet snapshot (.h5, training or already converted; Keras 2.2/2.3 or tf.keras; the
backbone, conv1 variant and class count are read from the file) or one of ours (.keras). MODEL_OUT is written
in Keras 3's own format (.keras), under a temporary name renamed when complete. The inference model adds the
anchors, box decoding, clipping and filtering layers of keras-retinanet's `convert_model`, with its defaults
(class-specific NMS at 0.5, score > 0.05, at most 300 detections) unless changed by the flags below.

The output carries the model card (model/card.py): MODEL_IN's (a snapshot of ours has one), else the one its
contents imply, with --labels, --min-side/--max-side and --config recorded in it (for a keras-retinanet file,
which cannot say its classes, sides or a training model's anchors), and the filter settings below. Stage 4 and
the web demo then need no flag. --write-card also writes that card beside MODEL_IN (`MODEL_IN.card.json`), for
a keras-retinanet .h5 used as it is.

`--backbone` is accepted for the original's command line; the backbone in the file wins (a differing value
is an error).
"""

from __future__ import annotations

try:
    from retinanet_training_level_1 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import argparse

from oid_retinanet.cli import script_main
from oid_retinanet.stages.convert import build_parser, run


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    return build_parser(__doc__).parse_args(argv)


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
