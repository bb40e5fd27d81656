"""Stage 3: train RetinaNet with a ResNet50 backbone on a level's files (default level 1, images 768/1024).

As ZFTurbo's train_oid_level_1_resnet*.py with keras-retinanet's flags; see --help. Example, a short run from
random weights that snapshots every epoch, then its resumption:

    python retinanet_training_level_1/train_oid_level_1_resnet50.py --no-weights --epochs 2 --steps 100
    python retinanet_training_level_1/train_oid_level_1_resnet50.py --resume --epochs 4 --steps 100
"""

from __future__ import annotations

try:
    from retinanet_training_level_1 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.train.trainer import TRAINER_DOC, run_script


@script_main
def main(argv: list[str] | None = None) -> int:
    return run_script("resnet50", __doc__ + TRAINER_DOC, argv, C)


if __name__ == "__main__":
    raise SystemExit(main())
