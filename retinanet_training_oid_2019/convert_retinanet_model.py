"""2019 conversion (gujingxiao's convert_retinanet_model.py): a training snapshot into an inference model.

The same conversion as retinanet_training_level_1/convert_retinanet_model.py: MODEL_IN (a snapshot of
train_oid_2019_resnet50.py, or any keras-retinanet .h5) to MODEL_OUT (.keras, with the model card), keras-retinanet's
filter unless the flags change it. The original's --backbone (default resnet50) is checked against the file.
"""

from __future__ import annotations

try:
    from retinanet_training_oid_2019 import _bootstrap  # noqa: F401
except ImportError:
    import _bootstrap  # noqa: F401

from oid_retinanet.cli import script_main
from oid_retinanet.stages.convert import build_parser, run


@script_main
def main(argv: list[str] | None = None) -> int:
    return run(build_parser(__doc__).parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
