"""The MobileNet backbones: feature sizes (for the training anchors), the caffe -> tf input mapping, saving."""

from __future__ import annotations

import numpy as np
import pytest

from oid_retinanet.model import mobilenet
from oid_retinanet.model.anchors import num_anchors_for_shape


@pytest.fixture(scope="module")
def model():
    from oid_retinanet.model.retinanet import retinanet

    return retinanet(3, backbone="mobilenet128_0.25")


@pytest.mark.parametrize("shape", [(120, 160), (121, 163), (97, 250), (64, 80), (33, 47)])
def test_feature_shapes_are_the_models(model, shape):
    n = model.predict_on_batch(np.zeros((1, *shape, 3), np.float32))[0].shape[1]
    assert n == sum(h * w for h, w in mobilenet.feature_shapes(shape)) * 9
    if shape == (121, 163):  # odd sides: the ResNet rule (ceil) would give more anchors
        assert num_anchors_for_shape(shape) > n


def test_caffe_input_becomes_tf_mode():
    bgr = np.array([[[[0, 127.5, 255]]]], np.float32)
    caffe = bgr - np.array(mobilenet.CAFFE_MEAN_BGR, np.float32)
    np.testing.assert_allclose(np.asarray(mobilenet.CaffeToTF()(caffe)), bgr / 127.5 - 1, atol=1e-6)


def test_names_and_layers(model):
    from oid_retinanet.model.backbones import backbone_of_model, is_backbone_layer

    assert mobilenet.parse_mobilenet("mobilenet224_0.5") == 0.5
    with pytest.raises(ValueError, match="unknown MobileNet"):
        mobilenet.parse_mobilenet("mobilenet100_0.5")
    assert backbone_of_model(model) == "mobilenet224_0.25"
    heads = [layer.name for layer in model.layers if not is_backbone_layer(layer.name)]
    assert "conv_pw_13" not in heads and "P3" in heads and "classification_submodel" in heads
    assert all(not is_backbone_layer(n) for n in ("P3", "C5_reduced", "regression", "classification"))


def test_save_and_load_gives_the_same_outputs(model, tmp_path):
    from oid_retinanet.model.h5 import load_model

    path = tmp_path / "m.keras"
    model.save(path)
    x = np.random.default_rng(0).normal(0, 60, (1, 96, 128, 3)).astype(np.float32)
    again = load_model(str(path), inference=False)
    for a, b in zip(model.predict_on_batch(x), again.predict_on_batch(x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_keras_retinanet_mobilenet_h5_loads(tmp_path):
    """A MobileNet file in keras-retinanet's layout (keras.applications' layer names, no caffe_to_tf layer: its
    'tf' preprocessing ran outside the model) is recognised, width from conv1, and loads to the same outputs."""
    import h5py

    from oid_retinanet.model.h5 import inspect_h5, load_keras_retinanet
    from oid_retinanet.model.retinanet import retinanet
    from tests.test_model import _write_keras2_h5

    model = retinanet(3, backbone="mobilenet128_0.5")
    rng = np.random.default_rng(3)
    for v in model.weights:
        v.assign((rng.standard_normal(v.shape) * 0.05).astype(np.float32) + (1.0 if "variance" in v.path else 0))
    path = tmp_path / "mobilenet.h5"
    _write_keras2_h5(model, path)
    with h5py.File(path, "a") as f:
        root = f["model_weights"]
        del root["caffe_to_tf"]
        names = [n.decode() if isinstance(n, bytes) else n for n in root.attrs["layer_names"]]
        root.attrs["layer_names"] = np.array([n for n in names if n != "caffe_to_tf"], dtype=object)
    info = inspect_h5(path)
    assert (info.backbone, info.num_classes, info.is_inference) == ("mobilenet224_0.5", 3, False)
    loaded = load_keras_retinanet(path)
    x = rng.normal(0, 60, (1, 64, 96, 3)).astype(np.float32)
    for a, b in zip(model.predict_on_batch(x), loaded.predict_on_batch(x)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
