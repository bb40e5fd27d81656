"""debug.py and the anchor coverage it reports (keras-retinanet's debug.py): which boxes some anchor learns, by a
hand-worked case, and the script's table and drawings on a generated level."""

from __future__ import annotations

import numpy as np
import pytest

from oid_retinanet.data.targets import matched_boxes
from oid_retinanet.model.anchors import anchors_for_shape
from tests.train_helpers import make_tiny_level


def test_matched_boxes_by_hand():
    anchors = anchors_for_shape((256, 256, 3))
    exact = anchors[1000]  # a box that is an anchor: IoU 1
    tiny = np.array([100.0, 100.0, 104.0, 104.0])  # 4 x 4 px: the smallest anchor (32 px, 1024 px^2) has IoU < 0.02
    big = np.array([0.0, 0.0, 256.0, 256.0])
    assert matched_boxes(anchors, np.stack([exact, tiny, big])).tolist() == [True, False, True]
    assert matched_boxes(anchors, np.zeros((0, 4))).tolist() == []


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return make_tiny_level(tmp_path_factory.mktemp("debug"))


def test_debug_script_draws_and_counts(tiny, tmp_path, capsys):
    from oid_retinanet.data.datasets import load_level_data
    from oid_retinanet.oid.levels import level_inputs
    from retinanet_training_level_1 import debug

    base = ["--dataset-path", str(tiny.dataset), "--output-path", str(tiny.output), "--image-min-side", "64",
            "--image-max-side", "80", "--limit", "3"]
    assert debug.main([*base, "--save-path", str(tmp_path / "png")]) == 0
    table = capsys.readouterr().out.splitlines()
    inputs = level_inputs(str(tiny.output), str(tiny.dataset), "1")
    data = load_level_data(inputs.annotations["train"], inputs.classes, inputs.params["train"], inputs.images["train"])
    boxes = int(data.offsets[3] - data.offsets[0])  # the first three images' boxes, counted here
    assert table[-1].split()[:2] == ["all", str(boxes)] and boxes > 0
    import cv2

    pictures = sorted((tmp_path / "png").glob("*.png"))
    assert [p.stem for p in pictures] == sorted(data.image_ids[:3])
    from oid_retinanet.data.preprocess import resized_shape

    sizes = {i: (int(h), int(w)) for i, w, h in zip(data.image_ids[:3], data.widths, data.heights)}
    for p in pictures:  # the generator's resize
        assert cv2.imread(str(p)).shape[:2] == tuple(resized_shape(sizes[p.stem], 64, 80))
    # anchors far larger than any box learn none of them
    config = tmp_path / "huge.ini"
    config.write_text("[anchor_parameters]\nsizes = 2048 4096 8192 16384 32768\nstrides = 8 16 32 64 128\n"
                      "ratios = 1\nscales = 1\n")
    assert debug.main([*base, "--config", str(config)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split() == ["all", str(boxes), str(boxes), "100.0%"]


def test_debug_script_shows_the_drawings_in_a_window_where_there_is_one(tiny, monkeypatch, capsys):
    from oid_retinanet.data import debug as drawing
    from retinanet_training_level_1 import debug

    shown = []

    def window(image_id, picture):  # stands for matplotlib's window: q after the second image
        shown.append((image_id, picture.shape, picture.dtype))
        return len(shown) < 2

    monkeypatch.setattr(drawing, "show_in_window", window)
    base = ["--dataset-path", str(tiny.dataset), "--output-path", str(tiny.output), "--image-min-side", "64",
            "--image-max-side", "80", "--limit", "4"]
    monkeypatch.setattr(drawing, "window_available", lambda: True)
    assert debug.main(base) == 0
    # the generator's pictures: 160 x 120 images at 64/80 (the long side bounds: 80 x 60)
    assert [(shape, dtype) for _, shape, dtype in shown] == [((60, 80, 3), np.uint8)] * 2
    assert capsys.readouterr().out.splitlines()[-1].split()[0] == "all"  # the table covers all 4 images still
    assert debug.main([*base, "--no-window"]) == 0 and len(shown) == 2
    monkeypatch.setattr(drawing, "window_available", lambda: False)
    assert debug.main(base) == 0 and len(shown) == 2
