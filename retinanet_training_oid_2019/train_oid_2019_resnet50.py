"""2019 training (gujingxiao's train_oid_2019_resnet50.py): RetinaNet on one label level of the 2019 levels.

Reads what labelProcess/ writes for level N (--label-level N): the class list
OUTPUT_PATH/level_N_files/class-descriptions-boxable-level-N.csv, the exists split of gen_exists_annotation.py
(train-exists-annotations-bbox-level-N.csv to train on, or its -select file of tooMuch_label_select.py with
--select; val-exists-annotations-bbox-level-N.csv to validate on), the image sizes of collect_image_parameters.py
(OUTPUT_PATH/train_image_params.csv, for both subsets) and the images of DATASET_PATH/train/, where the split
leaves the validation images too. The original's defaults: batch 2, 100 epochs of 10,000 steps, Adam 1e-4,
images 768/1024, the learning rate x0.8 after two epochs without a lower loss. Its `oid DATASET_PATH` form and
--version challenge2019 work. Unlike the original, the validation split is scored after every epoch
(--no-evaluation to skip); snapshots are named as the original's, `resnet50_oid_level_N_EE`, in .keras with the
model card. Example:

    python retinanet_training_oid_2019/train_oid_2019_resnet50.py --label-level 6 --select --weights \
        models/retinanet_resnet50_500_classes_0.4594.h5 --freeze-backbone
"""

from __future__ import annotations

try:
    from retinanet_training_oid_2019 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

import a00_utils_and_constants as C
from oid_retinanet.cli import script_main
from oid_retinanet.train.trainer import FLOW_2019, TRAINER_DOC, run_script


@script_main
def main(argv: list[str] | None = None) -> int:
    return run_script("resnet50", __doc__ + TRAINER_DOC, argv, C, FLOW_2019)


if __name__ == "__main__":
    raise SystemExit(main())
