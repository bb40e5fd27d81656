"""A tiny level-1 training set made as a user makes one: the demo dataset, stage 1 and stage 2."""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from oid_retinanet.demo.dataset import CLASSES, DatasetSpec, make_dataset
from oid_retinanet.oid.classes import write_class_descriptions
from oid_retinanet.oid.levels import level_class_file, level_file

NEGATIVE_ID = "00000000000000ff"


@dataclass
class TinyLevel:
    dataset: Path
    output: Path

    def annotations(self, subset: str) -> str:
        return level_file(str(self.output), "1", subset)

    def inputs(self, subset: str) -> dict[str, str]:
        """Arguments of `load_level_data` for a subset."""
        return {"annotations_csv": self.annotations(subset), "classes_csv": level_class_file(str(self.output), "1"),
                "image_params_csv": str(self.output / f"{subset}_image_params.csv"),
                "images_dir": str(self.dataset / subset)}


def make_tiny_level(root: Path, n_train: int = 10, n_validation: int = 4, width: int = 160, height: int = 120,
                    seed: int = 7) -> TinyLevel:
    """Level-1 files restricted to the 5 demo classes, with one negative image and one image missing on disk."""
    import create_files_for_training_by_levels as stage1
    from retinanet_training_level_1 import find_image_parameters as stage2

    dataset, output = root / "dataset", root / "output"
    make_dataset(str(dataset), DatasetSpec(n_train=n_train, n_validation=n_validation, n_test=0, width=width,
                                           height=height, seed=seed))
    assert stage1.main(["--dataset-path", str(dataset), "--output-path", str(output), "--levels", "1"]) == 0
    write_class_descriptions(level_class_file(str(output), "1"), sorted(CLASSES.items()))
    train_csv = level_file(str(output), "1", "train")
    boxes = pd.read_csv(train_csv, dtype=str, keep_default_na=False)
    first = next((dataset / "train").rglob("*.jpg"))
    shutil.copy(first, first.with_name(NEGATIVE_ID + ".jpg"))
    negative = {c: "" for c in boxes.columns}
    negative.update(ImageID=NEGATIVE_ID, Source="freeform", Confidence="1.0")
    gone = boxes["ImageID"].iloc[-1]
    pd.concat([boxes, pd.DataFrame([negative])]).to_csv(train_csv, index=False)
    assert stage2.main(["--dataset-path", str(dataset), "--output-path", str(output),
                        "--subsets", "train", "validation"]) == 0
    next((dataset / "train").rglob(gone + ".jpg")).unlink()
    return TinyLevel(dataset, output)


def train_data_parallel_and_check(argv: list[str]) -> None:
    """Train a ResNet50 as the training script would with `argv` (`--multi-gpu 2`), then assert that it trained
    data-parallel over two devices: Keras' distribution set, every model and optimizer variable on both devices,
    and (JAX) every image batch split between them. Run in a fresh process: the backend and the devices are fixed
    at start."""
    import keras

    import a00_utils_and_constants as C
    from oid_retinanet.train.trainer import parse_config, train

    backend = keras.backend.backend()
    batches = []
    if backend == "jax":
        import jax

        make_array = jax.make_array_from_process_local_data  # how Keras places each batch on the devices

        def recording(sharding, data, *args, **kwargs):
            batches.append(make_array(sharding, data, *args, **kwargs))
            return batches[-1]

        jax.make_array_from_process_local_data = recording
    model = train(parse_config("resnet50", "", argv, C)).model
    variables = model.weights + model.optimizer.variables
    if backend == "jax":
        assert isinstance(keras.distribution.distribution(), keras.distribution.DataParallel)
        for v in variables:
            assert len(v.value.sharding.device_set) == 2 and v.value.sharding.is_fully_replicated, v.path
        images = [b for b in batches if b.ndim == 4]
        assert len(images) >= 2, len(images)  # --steps 2 (Keras may place one more ahead)
        for b in images:
            assert b.shape[0] == 2 and sorted(s.data.shape[0] for s in b.addressable_shards) == [1, 1]
            assert len({s.device for s in b.addressable_shards}) == 2
    else:  # tensorflow: MirroredStrategy (it splits each batch between the replicas), a copy of each variable on each
        strategy = model.distribute_strategy
        assert strategy.num_replicas_in_sync == 2
        for v in variables:
            assert len(strategy.experimental_local_results(v.value)) == 2, v.path
