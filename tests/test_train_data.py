"""Training data: anchor targets and losses against keras-retinanet's recorded values, augmentation by hand,
the level-file reader and the generator on a generated dataset."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from oid_retinanet.data.augment import RandomTransform, random_intensity_change, transform_boxes
from oid_retinanet.data.datasets import load_level_data
from oid_retinanet.data.generator import GeneratorConfig, OpenImagesGenerator, balanced_draw
from oid_retinanet.data.preprocess import compute_resize_scale
from oid_retinanet.data.targets import LABEL_IGNORE, LABEL_NEGATIVE, anchor_targets, dense_targets
from oid_retinanet.errors import OIDInputError
from oid_retinanet.model.anchors import anchors_for_shape
from tests.conftest import fixture_path


@pytest.fixture(scope="module")
def recorded():
    return np.load(fixture_path("keras_retinanet", "targets_losses_128x160.npz"))


def test_targets_equal_keras_retinanet(recorded):
    # Exact: the same IoU rule and float64 arithmetic as keras-retinanet's numpy code.
    anchors = anchors_for_shape((128, 160, 3))
    np.testing.assert_array_equal(anchors, recorded["anchors"])
    reg, cls = anchor_targets(anchors, [(128, 160)], [recorded["gt_boxes"]], [recorded["gt_labels"]])
    np.testing.assert_array_equal(reg[0], recorded["regression_targets"])
    np.testing.assert_array_equal(dense_targets(reg, cls, 7)[0], recorded["labels_targets"])
    np.testing.assert_array_equal(reg[0, :, 4] == 1, recorded["positive_indices"])
    state = reg[0, :, 4]
    assert (state == 1).sum() == 136 and (state == -1).sum() == 249
    assert set(np.unique(cls)) <= {LABEL_IGNORE, LABEL_NEGATIVE, 0, 2, 3, 6}


def test_losses_equal_keras_retinanet(recorded):
    from oid_retinanet.train.losses import focal_loss, smooth_l1_loss

    reg, cls = anchor_targets(recorded["anchors"], [(128, 160)], [recorded["gt_boxes"]], [recorded["gt_labels"]])
    focal = float(focal_loss(cls, recorded["classification_pred"][None]))
    smooth = float(smooth_l1_loss(reg, recorded["regression_pred"][None]))
    np.testing.assert_allclose(focal, float(recorded["focal_loss"]), rtol=1e-5)
    np.testing.assert_allclose(smooth, float(recorded["smooth_l1_loss"]), rtol=1e-5)


def _dense_focal(codes: np.ndarray, p: np.ndarray, alpha=0.25, gamma=2.0) -> float:
    """keras-retinanet's focal loss written out on a one-hot tensor (sums in float64)."""
    k = p.shape[-1]
    onehot = np.zeros(p.shape)
    pos = codes >= 0
    onehot[pos, codes[pos]] = 1
    eps = np.float32(1e-7)
    p = np.clip(p.astype(np.float32), eps, np.float32(1) - eps)  # the clip and logs in float32, as the graph
    log_p, log_q = np.log(p + eps).astype(np.float64), np.log(np.float32(1) - p + eps).astype(np.float64)
    p = p.astype(np.float64)
    a = np.where(onehot == 1, alpha, 1 - alpha)
    w = np.where(onehot == 1, 1 - p, p)
    bce = -(onehot * log_p + (1 - onehot) * log_q)
    keep = codes != LABEL_IGNORE
    assert k == p.shape[-1]
    return float((a * w**gamma * bce)[keep].sum() / max(1, pos.sum()))


def test_focal_loss_without_one_hot_equals_dense_formula():
    from oid_retinanet.train.losses import focal_loss

    rng = np.random.default_rng(3)
    codes = rng.choice([LABEL_IGNORE, LABEL_NEGATIVE, 0, 1, 2, 3, 4], size=(2, 300),
                       p=[.1, .6, .06, .06, .06, .06, .06])
    p = rng.random((2, 300, 5)).astype(np.float32)
    p[0, :3] = [0.0, 1.0, 0.5, 1e-9, 1 - 1e-9]  # the clipping at both ends
    got = float(focal_loss(codes[..., None].astype(np.float32), p))
    np.testing.assert_allclose(got, _dense_focal(codes, p), rtol=1e-5)
    # no positives: divided by 1
    neg = np.full((1, 10, 1), LABEL_NEGATIVE, np.float32)
    np.testing.assert_allclose(float(focal_loss(neg, p[:1, :10])), _dense_focal(neg[..., 0].astype(int), p[:1, :10]),
                               rtol=1e-5)


def test_smooth_l1_by_hand():
    from oid_retinanet.train.losses import smooth_l1_loss

    # sigma 3: |d| < 1/9 -> 4.5 d^2, else |d| - 1/18; only state-1 anchors count, divided by their number.
    y_true = np.array([[[0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [5, 5, 5, 5, 0], [9, 9, 9, 9, -1]]], np.float32)
    y_pred = np.array([[[0.1, 0, 0, 0], [1, -1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]], np.float32)
    expected = (4.5 * 0.01 + 2 * (1 - 1 / 18)) / 2
    np.testing.assert_allclose(float(smooth_l1_loss(y_true, y_pred)), expected, rtol=1e-6)


def test_padding_anchors_are_ignored():
    anchors = anchors_for_shape((64, 96, 3))
    reg, cls = anchor_targets(anchors, [(64, 96), (64, 48)], [np.zeros((0, 4)), np.zeros((0, 4))],
                              [np.zeros(0), np.zeros(0)])
    centres_x = (anchors[:, 0] + anchors[:, 2]) / 2
    centres_y = (anchors[:, 1] + anchors[:, 3]) / 2
    outside = (centres_x >= 96) | (centres_y >= 64)  # coarse levels have cells past the edge
    assert outside.any() and not outside.all()
    np.testing.assert_array_equal(reg[0, :, 4], np.where(outside, -1, 0))  # a negative image: all else negative
    np.testing.assert_array_equal(cls[0, :, 0], np.where(outside, LABEL_IGNORE, LABEL_NEGATIVE))
    np.testing.assert_array_equal(reg[1, :, 4] == -1, (centres_x >= 48) | (centres_y >= 64))
    np.testing.assert_array_equal(cls[1, :, 0] == LABEL_IGNORE, (centres_x >= 48) | (centres_y >= 64))


def test_transform_boxes_by_hand():
    flip = np.diag([-1.0, 1.0, 1.0])
    flip[0, 2] = 100  # x -> 100 - x
    np.testing.assert_allclose(transform_boxes(flip, np.array([[10, 20, 30, 40]])), [[70, 20, 90, 40]])
    rot90 = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1.0]])  # (x, y) -> (-y, x)
    np.testing.assert_allclose(transform_boxes(rot90, np.array([[1, 2, 3, 5]])), [[-5, 1, -2, 3]])


def test_random_transform_about_the_centre():
    rng = np.random.default_rng(0)
    t = RandomTransform(min_scaling=(2, 2), max_scaling=(2, 2))
    m = t.for_image(rng, 100, 200)  # scaling by 2 about (100, 50)
    np.testing.assert_allclose(transform_boxes(m, np.array([[90, 40, 110, 60]])), [[80, 30, 120, 70]])
    image = np.zeros((100, 200, 3), np.float32)
    image[40:60, 90:110] = 1
    out, boxes = RandomTransform(flip_x_chance=1.0).apply(rng, image, np.array([[90, 40, 110, 60]]))
    np.testing.assert_allclose(boxes, [[90, 40, 110, 60]])  # symmetric about the centre: the same box
    assert out[50, 100].tolist() == [1, 1, 1] and out[10, 10].tolist() == [0, 0, 0]


def test_intensity_change_per_channel_and_clipped():
    image = np.full((4, 4, 3), 250, np.uint8)
    image[0, 0] = 5
    out = random_intensity_change(image, np.random.default_rng(1), -30, 30)
    delta = np.random.default_rng(1).integers(-30, 30, size=3, endpoint=True)
    np.testing.assert_array_equal(out[1, 1], np.clip(250 + delta, 0, 255))
    np.testing.assert_array_equal(out[0, 0], np.clip(5 + delta, 0, 255))


def test_balanced_draw_visits_classes_evenly():
    lists = [np.arange(100), np.array([100]), np.array([], int), np.array([101, 102])]
    picks = balanced_draw(lists, 30000, np.random.default_rng(0))
    shares = [np.isin(picks, a).mean() for a in lists if len(a)]
    np.testing.assert_allclose(shares, [1 / 3] * 3, atol=0.02)  # 3 non-empty lists, each a third


@pytest.fixture(scope="module")
def tiny_level(tmp_path_factory):
    """A generated dataset with level files (5 classes) and image parameters, as stages 1 and 2 write them."""
    from tests.train_helpers import make_tiny_level

    return make_tiny_level(tmp_path_factory.mktemp("tiny"))


def test_load_level_data(tiny_level, caplog):
    data = load_level_data(**tiny_level.inputs("train"))
    boxes = pd.read_csv(tiny_level.annotations("train"))
    real = boxes[boxes["LabelName"].notna()]
    assert len(data) == boxes["ImageID"].nunique() - 1  # one image removed from disk
    assert "not in" in caplog.text
    assert (np.diff(data.offsets) == 0).sum() == 1  # the negative image stays, without boxes
    i = list(data.image_ids).index(real["ImageID"].iloc[0])
    got_boxes, got_labels = data.image_boxes(i)
    rows = real[real["ImageID"] == real["ImageID"].iloc[0]]
    np.testing.assert_allclose(got_boxes, rows[["XMin", "YMin", "XMax", "YMax"]].to_numpy())
    assert [data.classes.mids[k] for k in got_labels] == rows["LabelName"].tolist()


def test_load_level_data_errors(tiny_level, tmp_path):
    inputs = tiny_level.inputs("train")
    bad = tmp_path / "bad.csv"
    df = pd.read_csv(inputs["annotations_csv"], dtype=str, keep_default_na=False)
    df.loc[3, "LabelName"] = "/m/unknown"
    df.to_csv(bad, index=False)
    with pytest.raises(OIDInputError, match=r"row 5.*unknown MID '/m/unknown'|unknown MID '/m/unknown'.*row 5"):
        load_level_data(**{**inputs, "annotations_csv": str(bad)})
    with pytest.raises(OIDInputError, match="image folder not found"):
        load_level_data(**{**inputs, "images_dir": str(tmp_path / "nowhere")})


def test_generator_batches(tiny_level):
    data = load_level_data(**tiny_level.inputs("train"))
    gen = OpenImagesGenerator(data, GeneratorConfig(batch_size=2, min_side=64, max_side=80, steps=3, seed=5,
                                                    transform=RandomTransform.ORIGINAL_FULL, intensity=(-30, 30)))
    assert len(gen) == 3
    x, y = gen[1]
    assert x.shape[0] == 2 and x.dtype == np.float32 and max(x.shape[1:3]) <= 80
    n = len(anchors_for_shape(x.shape[1:]))
    assert y["regression"].shape == (2, n, 5) and y["classification"].shape == (2, n, 1)
    x2, y2 = gen[1]  # the same batch again: a function of (seed, epoch, index) only
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y["classification"], y2["classification"])
    gen.on_epoch_end()
    assert len(data) >= 3 and any(not np.array_equal(a, b) for a, b in zip(gen.groups, OpenImagesGenerator(
        data, gen.config).groups))  # epoch 1 draws other batches than epoch 0
    # without augmentation an image's targets are those of its resized boxes
    val = OpenImagesGenerator(data, GeneratorConfig(min_side=64, max_side=80, sampling="sequential"))
    assert sum(len(g) for g in val.groups) == len(data)
    idx = int(val.groups[0][0])
    x, y = val[0]
    boxes, labels = data.image_boxes(idx)
    w, h = data.widths[idx], data.heights[idx]
    scale = compute_resize_scale((h, w), 64, 80)
    expected_reg, expected_cls = anchor_targets(anchors_for_shape(x.shape[1:]), [x.shape[1:3]],
                                                [boxes * [w, h, w, h] * scale], [labels])
    np.testing.assert_array_equal(y["regression"], expected_reg)
    np.testing.assert_array_equal(y["classification"], expected_cls)


def test_training_log_writes_only_logged_columns(tmp_path):
    """Keras' CSVLogger adds all-"NA" val_* columns without validation data; ours writes what was logged, and
    appends under the same header on resume."""
    import keras

    from oid_retinanet.train.callbacks import TrainingLog

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((4, 3), "float32"), np.zeros((4, 1), "float32")
    path = tmp_path / "training_log.csv"
    model.fit(x, y, epochs=1, verbose=0, callbacks=[TrainingLog(str(path), append=True)])
    model.fit(x, y, initial_epoch=1, epochs=2, verbose=0, callbacks=[TrainingLog(str(path), append=True)])
    log = pd.read_csv(path)
    assert list(log.columns) == ["epoch", "loss"]  # keras.callbacks.CSVLogger: also an all-NA val_loss
    assert log["epoch"].tolist() == [0, 1] and np.isfinite(log["loss"]).all()


def test_snapshot_keeps_the_newest(tmp_path):
    """--keep-snapshots 2: after three epochs the snapshots of epochs 2 and 3 remain (another level's stays)."""
    import keras

    from oid_retinanet.train.callbacks import Snapshot, latest_snapshot, snapshots

    (tmp_path / "resnet50_oid_level_2_01.keras").write_bytes(b"another level")
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.zeros((4, 1), "float32"), epochs=3, verbose=0,
              callbacks=[Snapshot(tmp_path, "resnet50", "1", keep=2)])
    assert [epoch for epoch, _ in snapshots(tmp_path, "resnet50", "1")] == [2, 3]
    assert latest_snapshot(tmp_path, "resnet50", "1").name == "resnet50_oid_level_1_03.keras"
    assert (tmp_path / "resnet50_oid_level_2_01.keras").exists()


def test_snapshot_every_n_epochs_and_the_last(tmp_path):
    """--snapshot-every 3 over 7 epochs, resumed at 2: epochs 3, 6 and the last, 7; none of a run's others."""
    import keras

    from oid_retinanet.train.callbacks import Snapshot, snapshots

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(np.ones((4, 3), "float32"), np.zeros((4, 1), "float32"), initial_epoch=1, epochs=7, verbose=0,
              callbacks=[Snapshot(tmp_path, "resnet50", "1", every=3)])
    assert [epoch for epoch, _ in snapshots(tmp_path, "resnet50", "1")] == [3, 6, 7]
