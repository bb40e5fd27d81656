"""ImageNet initialisation of the backbone (oid_retinanet.model.imagenet), on random weights, no network.

keras.applications layout: a keras.applications ResNet50 (weights=None) gets random weights everywhere (conv
biases and BatchNormalization statistics included, so bias folding is exercised), is saved as a legacy Keras
.h5 (Keras 3's legacy writer, and by hand in Keras 2's layout with ':0' names and fixed-length byte strings),
and mapped into our backbone. Rule: our C2..C5 equal keras.applications' stage outputs on the same input within
1e-5 of the output's largest magnitude (float32 rounding through 16 blocks of differently ordered arithmetic;
measured ~2e-6). Our backbone uses the CONV1_ZERO_PADDING variant (keras.applications pads conv1 by 3), and the
input is 65x65 so conv1's output side (33) is odd: there keras.applications' ZeroPadding(1) + 'valid' pool1 and
our 'same' pool1 take the same windows; at 64x64 they are one pixel apart, which a test shows.

fizyr layout (keras-resnet names, as ResNet-50-model.keras.h5): a random file written in that layout into a
RetinaNet, with one layer of a wrong shape. Rule: every loaded variable equals the file's values exactly, the
wrong layer is reported (or is an error without skip_mismatch), layers outside the backbone are untouched.
"""

from __future__ import annotations

import h5py
import numpy as np
import pytest

keras = pytest.importorskip("keras")

from oid_retinanet.errors import OIDInputError  # noqa: E402
from oid_retinanet.model import imagenet  # noqa: E402
from oid_retinanet.model.imagenet import (  # noqa: E402
    backbone_conv_bn_pairs,
    keras_applications_name_map,
    load_imagenet_backbone,
)
from oid_retinanet.model.resnet import (  # noqa: E402
    CONV1_SAME,
    CONV1_ZERO_PADDING,
    FrozenBatchNormalization,
    resnet_features,
)
from oid_retinanet.model.retinanet import retinanet  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

STAGE_OUTPUTS = {"C2": "conv2_block3_out", "C3": "conv3_block4_out", "C4": "conv4_block6_out",
                 "C5": "conv5_block3_out"}
REL_TOL = 1e-5


def _random_keras_applications_resnet50(seed: int = 0):
    model = keras.applications.ResNet50(weights=None, include_top=False, input_shape=(None, None, 3))
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n), rng.normal(0, 0.1, n),
                               rng.uniform(0.5, 2.0, n)])
        elif isinstance(layer, keras.layers.Conv2D):
            k = layer.kernel.shape
            layer.set_weights([rng.normal(0, np.sqrt(2 / np.prod(k[:3])), k), rng.normal(0, 0.1, k[-1])])
    return model


def _write_keras2_style(model, path) -> None:
    """Keras 2.2's save_weights layout: root attrs, one group per layer, names 'layer/param:0' as fixed bytes."""
    with h5py.File(path, "w") as f:
        names = [layer.name for layer in model.layers]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.2.4"
        for layer in model.layers:
            g = f.create_group(layer.name)
            wnames = [f"{layer.name}/{v.name}:0" for v in layer.weights]
            g.attrs["weight_names"] = np.array([w.encode() for w in wnames])
            for wname, v in zip(wnames, layer.weights):
                g.create_dataset(wname, data=np.asarray(v.numpy()))


def _write_keras3_legacy(model, path) -> None:
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _our_backbone(conv1: str, depth: int = 50):
    inputs = keras.Input((None, None, 3))
    c = resnet_features(inputs, depth=depth, conv1=conv1)
    return keras.Model(inputs, [c[k] for k in STAGE_OUTPUTS], name=f"backbone_{conv1}")


@pytest.fixture(scope="module")
def keras_app():
    return _random_keras_applications_resnet50()


@pytest.fixture(scope="module")
def keras_app_file(keras_app, tmp_path_factory):
    path = tmp_path_factory.mktemp("ka") / "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"
    _write_keras3_legacy(keras_app, path)
    return path


def _theirs(keras_app, x, names):
    probe = keras.Model(keras_app.input, [keras_app.get_layer(n).output for n in names])
    return [np.asarray(o) for o in probe(x, training=False)]


def _assert_close(ours, theirs, label):
    scale = float(np.abs(theirs).max())
    err = float(np.abs(ours - theirs).max())
    assert ours.shape == theirs.shape, label
    assert err <= REL_TOL * scale, f"{label}: max difference {err} vs largest value {scale}"


@pytest.mark.parametrize("writer", [_write_keras3_legacy, _write_keras2_style], ids=["keras3_legacy", "keras2"])
def test_keras_applications_weights_reproduce_its_outputs(keras_app, writer, tmp_path):
    path = tmp_path / "resnet50_notop.h5"
    writer(keras_app, path)
    ours = _our_backbone(CONV1_ZERO_PADDING)
    report = load_imagenet_backbone(ours, path)
    assert report.layout == imagenet.LAYOUT_KERAS_APPLICATIONS and report.depth == 50 and report.ok
    assert len(report.loaded) == 106 and report.folded_biases == 53 and report.ignored == []
    x = np.random.default_rng(1).normal(0, 60, (2, 65, 65, 3)).astype("float32")
    got = [np.asarray(o) for o in ours(x, training=False)]
    for (level, name), a, b in zip(STAGE_OUTPUTS.items(), got, _theirs(keras_app, x, STAGE_OUTPUTS.values())):
        _assert_close(a, b, f"{level} vs {name}")


def test_conv1_variant_and_pool1_offset(keras_app, keras_app_file):
    """At 64x64: the zero-padding conv1 matches keras.applications' conv1 exactly, 'same' does not; after
    pool1 the even side puts the windows one pixel apart, so C2 differs (documented, not offered as exact)."""
    x = np.random.default_rng(2).normal(0, 60, (1, 64, 64, 3)).astype("float32")
    conv1_theirs, c2_theirs = _theirs(keras_app, x, ["conv1_relu", "conv2_block3_out"])
    for conv1, conv1_matches in ((CONV1_ZERO_PADDING, True), (CONV1_SAME, False)):
        ours = _our_backbone(conv1)
        load_imagenet_backbone(ours, keras_app_file)
        probe = keras.Model(ours.input, [ours.get_layer("conv1_relu").output, ours.outputs[0]])
        conv1_ours, c2_ours = (np.asarray(o) for o in probe(x, training=False))
        conv1_err = np.abs(conv1_ours - conv1_theirs).max() / np.abs(conv1_theirs).max()
        assert (conv1_err <= REL_TOL) == conv1_matches, (conv1, conv1_err)
        assert np.abs(c2_ours - c2_theirs).max() > 0.01 * np.abs(c2_theirs).max()


def test_fold_bias_and_epsilon_hand_worked():
    """One BN: conv output y + bias b then BN(eps 1.001e-5) equals our BN(eps 1e-5) on y with folded values;
    tiny variances make the epsilon visible (unfolded it would differ by ~5e-5 relative)."""
    rng = np.random.default_rng(3)
    n = 8
    bn = {"gamma": rng.uniform(0.5, 1.5, n), "beta": rng.normal(0, 1, n), "moving_mean": rng.normal(0, 1, n),
          "moving_variance": rng.uniform(1e-7, 1e-6, n)}
    bias = rng.normal(0, 1, n)
    y = rng.normal(0, 1, (4, 3, 3, n))
    expected = (bn["gamma"] * (y + bias - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1.001e-5)
                + bn["beta"])
    folded = imagenet._fold(bn, bias, 1.001e-5, 1e-5)
    ours = (folded["gamma"] * (y - folded["moving_mean"]) / np.sqrt(folded["moving_variance"] + 1e-5)
            + folded["beta"])
    np.testing.assert_allclose(ours, expected, rtol=1e-12, atol=1e-12)
    unfolded_eps = bn["gamma"] * (y + bias - bn["moving_mean"]) / np.sqrt(bn["moving_variance"] + 1e-5) + bn["beta"]
    assert np.abs(unfolded_eps - expected).max() > 1e-6
    # and our Keras layer computes that formula with the folded values
    layer = FrozenBatchNormalization(name="bn")
    layer.build((None, 3, 3, n))
    layer.set_weights([folded[p].astype("float32") for p in ("gamma", "beta", "moving_mean", "moving_variance")])
    np.testing.assert_allclose(np.asarray(layer(y.astype("float32"))), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("depth", [50, 101, 152])
def test_keras_applications_name_map_covers_both_networks(depth):
    """Every weighted keras.applications layer maps to a distinct weighted layer of ours, and back."""
    build = {50: keras.applications.ResNet50, 101: keras.applications.ResNet101,
             152: keras.applications.ResNet152}[depth]
    theirs = build(weights=None, include_top=False, input_shape=(None, None, 3))
    theirs_names = {layer.name for layer in theirs.layers if layer.weights}
    ours = _our_backbone(CONV1_SAME, depth)
    ours_names = {layer.name for layer in ours.layers if layer.weights}
    mapping = keras_applications_name_map(depth)
    assert set(mapping) == theirs_names
    assert set(mapping.values()) == ours_names and len(mapping) == len(ours_names)
    assert {name for pair in backbone_conv_bn_pairs(depth) for name in pair} == ours_names


def test_name_map_hand_worked():
    m50, m101 = keras_applications_name_map(50), keras_applications_name_map(101)
    assert m50["conv1_conv"] == "conv1" and m50["conv1_bn"] == "bn_conv1"
    assert m50["conv2_block1_0_conv"] == "res2a_branch1"
    assert m50["conv4_block6_3_conv"] == "res4f_branch2c"
    assert m50["conv5_block3_2_bn"] == "bn5c_branch2b"
    assert m101["conv3_block2_1_conv"] == "res3b1_branch2a"
    assert m101["conv4_block23_3_bn"] == "bn4b22_branch2c"
    assert m101["conv5_block2_1_conv"] == "res5b_branch2a"
    assert keras_applications_name_map(152)["conv3_block8_2_conv"] == "res3b7_branch2b"


def _write_keras_resnet_model_file(path, model, rng, wrong: str | None = None, extra_classes: int = 10):
    """A keras-resnet model file as fizyr's (Keras 2 `model.save`): model_weights/<layer>/<layer>/<param>:0 with
    our backbone's layer names and shapes, plus the fc1000 classifier; `wrong` gets a kernel of another shape."""
    values = {}
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.1.3"
        root = f.create_group("model_weights")
        names = [n for pair in backbone_conv_bn_pairs(50) for n in pair] + ["fc1000"]
        root.attrs["layer_names"] = np.array([n.encode() for n in ["input_1", "padding_conv1"] + names])
        for name in ["input_1", "padding_conv1"]:
            root.create_group(name).attrs["weight_names"] = np.array([], dtype="S1")
        for name in names:
            if name == "fc1000":
                params = {"kernel": (2048, extra_classes), "bias": (extra_classes,)}
            else:
                params = {v.name: tuple(v.shape) for v in model.get_layer(name).weights}
            if name == wrong:
                params["kernel"] = params["kernel"][:-1] + (params["kernel"][-1] // 2,)
            g = root.create_group(name)
            g.attrs["weight_names"] = np.array([f"{name}/{p}:0".encode() for p in params])
            for p, shape in params.items():
                data = (rng.uniform(0.5, 2.0, shape) if p == "moving_variance" else rng.normal(0, 1, shape))
                g.create_dataset(f"{name}/{p}:0", data=data.astype("float32"))
                values[(name, p)] = data.astype("float32")
    return values


@pytest.fixture(scope="module")
def retinanet50():
    return retinanet(2, backbone="resnet50")


def test_fizyr_layout_loads_by_name_and_reports_mismatch(retinanet50, tmp_path):
    model = retinanet50
    path = tmp_path / "ResNet-50-model.keras.h5"
    values = _write_keras_resnet_model_file(path, model, np.random.default_rng(4), wrong="res3a_branch2b")
    before = {v.path: np.asarray(v.numpy()).copy() for v in model.weights}
    with pytest.raises(OIDInputError, match=r"of another shape: res3a_branch2b/kernel \(file \(3, 3, 128, 64\), "
                                            r"model \(3, 3, 128, 128\)\)"):
        load_imagenet_backbone(model, path)
    assert all(np.array_equal(before[v.path], v.numpy()) for v in model.weights), "an error must assign nothing"

    report = load_imagenet_backbone(model, path, skip_mismatch=True)
    assert report.layout == imagenet.LAYOUT_KERAS_RESNET and report.depth == 50
    assert report.shape_mismatch == ["res3a_branch2b/kernel (file (3, 3, 128, 64), model (3, 3, 128, 128))"]
    assert report.missing == [] and report.ignored == ["fc1000"] and report.folded_biases == 0
    assert len(report.loaded) == 105 and "res3a_branch2b" not in report.loaded
    for name in report.loaded:
        for v in model.get_layer(name).weights:
            np.testing.assert_array_equal(v.numpy(), values[(name, v.name)], err_msg=f"{name}/{v.name}")
    kept = [v for v in model.weights if v.path.startswith(("res3a_branch2b/", "P5/", "pyramid_classification"))]
    assert kept and all(np.array_equal(before[v.path], v.numpy()) for v in kept)
    assert "res3a_branch2b/kernel" in report.describe()


def test_source_name_uses_cached_download(retinanet50, tmp_path):
    """'fizyr' resolves to MODELS_PATH/ResNet-50-model.keras.h5; present, it is used without any request."""
    values = _write_keras_resnet_model_file(tmp_path / "ResNet-50-model.keras.h5", retinanet50,
                                            np.random.default_rng(5))
    report = load_imagenet_backbone(retinanet50, "fizyr", models_path=tmp_path, progress=False)
    assert report.ok and len(report.loaded) == 106
    np.testing.assert_array_equal(retinanet50.get_layer("res5c_branch2c").kernel.numpy(),
                                  values[("res5c_branch2c", "kernel")])
    assert imagenet.fetch_imagenet_weights("resnet50", "fizyr", tmp_path) == tmp_path / "ResNet-50-model.keras.h5"
    with pytest.raises(OIDInputError, match="unknown ImageNet weights source 'caffe'"):
        imagenet.fetch_imagenet_weights(50, "caffe", tmp_path)


def test_other_depth_is_an_error(retinanet50, tmp_path):
    path = tmp_path / "ResNet-101-model.keras.h5"
    with h5py.File(path, "w") as f:
        names = [n for pair in backbone_conv_bn_pairs(101) for n in pair]
        f.attrs["layer_names"] = np.array([n.encode() for n in names])
        for n in names:
            f.create_group(n).attrs["weight_names"] = np.array([], dtype="S1")
    with pytest.raises(OIDInputError, match="keras-resnet ResNet101 weights, but the model's backbone is a ResNet50"):
        load_imagenet_backbone(retinanet50, path)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f.attrs["layer_names"] = np.array([b"dense"])
        f.create_group("dense").attrs["weight_names"] = np.array([], dtype="S1")
    with pytest.raises(OIDInputError, match="not an ImageNet ResNet weights file"):
        load_imagenet_backbone(retinanet50, tmp_path / "other.h5")
