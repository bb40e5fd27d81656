"""Winograd F(4x4, 3x3) and F(2x2, 3x3) convolution (model/winograd.py) against a float64 direct convolution and
Keras' Conv2D.

Tolerances: float32 against float64 is judged relative to the output's largest magnitude. F(2x2, 3x3) must be at
least as accurate as Keras' own direct float32 convolution on the same input (measured 0.25-0.9x its error);
F(4x4, 3x3) within 8x of it or 1e-5 (its transforms' coefficients up to 16/15 and 8 amplify rounding: measured
1.6-7.7x the direct convolution's error, 1.5e-6 to 5e-6 on 64 and 256 channels). The layer must equal Conv2D with
the same weights within 1e-5 of the output's scale. Where it chooses the direct convolution (small inputs, training) it
must be Conv2D exactly.
Every test runs on each installed Keras backend (the others in a subprocess running this file).
"""

from __future__ import annotations

import subprocess
import sys

import keras
import numpy as np
import pytest

from oid_retinanet.model import winograd as winograd_module
from oid_retinanet.model.retinanet import retinanet, retinanet_bbox
from oid_retinanet.model.winograd import MIN_CHANNELS, TILE, WinogradConv2D, conv3x3_winograd, default_tile
from tests.conftest import REPO
from tests.test_model import BACKENDS, _backend_env, _conv_np, _skip_unless_installed


def _relative(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("shape", [(7, 9), (8, 8), (3, 3), (1, 5), (10, 13)])
@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("tile", [4, 2])
def test_winograd_equals_float64_direct_convolution(shape, padding, tile):
    if padding == "valid" and min(shape) < 3:
        pytest.skip("no 'valid' output")
    rng = np.random.default_rng(sum(shape))
    x = rng.standard_normal((2, *shape, 64)).astype(np.float32)
    kernel = (rng.standard_normal((3, 3, 64, 40)) / 24).astype(np.float32)
    pad = (1, 1) if padding == "same" else (0, 0)
    expected = np.stack([_conv_np(image, kernel, 1, pad) for image in x])
    got = keras.ops.convert_to_numpy(conv3x3_winograd(x, kernel, padding, tile))
    direct = keras.ops.convert_to_numpy(keras.ops.conv(x, kernel, padding=padding))
    assert got.shape == expected.shape == direct.shape
    if tile == 2:
        assert _relative(got, expected) <= max(2 * _relative(direct, expected), 2e-6)
    else:
        assert _relative(got, expected) <= max(8 * _relative(direct, expected), 1e-5)


def _pair(padding: str, activation: str | None, channels: int = 16, filters: int = 24, tile: int = 4,
          min_pixels: int = 0):
    """A Conv2D and a WinogradConv2D (Winograd from `min_pixels` input positions on: by default always) with the
    same random weights, each wrapped in a model of any input size."""
    rng = np.random.default_rng(0)
    inputs = keras.Input((None, None, channels))
    direct = keras.layers.Conv2D(filters, 3, padding=padding, activation=activation)
    winograd = WinogradConv2D(filters, 3, padding=padding, activation=activation, tile=tile, min_pixels=min_pixels)
    a, b = keras.Model(inputs, direct(inputs)), keras.Model(inputs, winograd(inputs))
    direct.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.2 for w in direct.get_weights()])
    winograd.set_weights(direct.get_weights())
    return a, b


@pytest.mark.parametrize("padding,activation", [("same", "relu"), ("valid", None)])
@pytest.mark.parametrize("tile", [4, 2])
def test_layer_equals_conv2d_for_several_sizes_in_one_traced_model(padding, activation, tile):
    a, b = _pair(padding, activation, tile=tile)
    rng = np.random.default_rng(1)
    for shape in [(9, 12), (16, 8), (5, 7)]:  # new sizes retrace the predict function with unknown sides
        x = rng.standard_normal((2, *shape, 16)).astype(np.float32)
        u, v = a.predict_on_batch(x), b.predict_on_batch(x)
        assert u.shape == v.shape
        np.testing.assert_allclose(v, u, atol=1e-5 * np.abs(u).max(), rtol=0)


class InferenceCall(keras.Model):
    """Calls its layer with training=False, which a functional model would replace with fit's training=True."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def call(self, x):
        return self.layer(x, training=False)


def test_gradients_equal_conv2d():
    """Gradients through the Winograd computation (keras.ops only, so autodiff works): one SGD step from equal
    weights gives equal weights."""
    a, b = _pair("same", "relu")
    b = InferenceCall(b.layers[-1])
    x = np.random.default_rng(2).standard_normal((2, 10, 11, 16)).astype(np.float32)
    y = np.random.default_rng(3).standard_normal((2, 10, 11, 24)).astype(np.float32)
    for model in (a, b):
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        model.train_on_batch(x, y)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_allclose(wb, wa, atol=1e-5, rtol=0)
    assert not np.array_equal(a.get_weights()[0], b.get_weights()[0])  # the Winograd path ran, not Conv2D's


def _is_direct(u, v) -> bool:
    """v is Conv2D's output u bit for bit (the direct convolution), or only within Winograd's rounding."""
    np.testing.assert_allclose(v, u, atol=1e-5 * np.abs(u).max(), rtol=0)
    return bool(np.array_equal(u, v))


def test_small_inputs_and_training_compute_the_direct_convolution():
    """Winograd from min_pixels input positions on, chosen per call: by Python for a known size (eager, JAX,
    torch), by ops.cond in a TensorFlow graph traced for any size; in training always the direct convolution."""
    a, b = _pair("same", None, min_pixels=100)
    rng = np.random.default_rng(7)
    for shape, direct in [((9, 12), False), ((8, 12), True), ((10, 10), False), ((9, 11), True), ((4, 30), False)]:
        x = rng.standard_normal((2, *shape, 16)).astype(np.float32)
        u = keras.ops.convert_to_numpy(a(x))
        assert _is_direct(u, keras.ops.convert_to_numpy(b(x))) == direct, shape
        assert _is_direct(a.predict_on_batch(x), b.predict_on_batch(x)) == direct, shape  # traced: sizes vary
        assert _is_direct(u, keras.ops.convert_to_numpy(b(x, training=True))), shape


def _winograd_layers(model) -> dict[str, int]:
    inner = [sub for layer in model.layers for sub in (layer.layers if isinstance(layer, keras.Model) else [layer])]
    return {layer.name: layer.tile for layer in inner if type(layer) is WinogradConv2D}


def test_which_convolutions_use_winograd(monkeypatch):
    """The 3x3 stride-1 convs of at least MIN_CHANNELS channels and filters: ResNet50's res3-res5 branch2b, P3-P5,
    the head towers, and the classification conv of a 443-class model (not of a 7-class one, nor the regression
    conv, nor res2's 64-filter convs, nor the strided P6/P7); with the same outputs as the direct convolutions
    (Winograd on every input size here: the test image is small)."""
    assert MIN_CHANNELS == 128
    monkeypatch.setattr(winograd_module, "MIN_PIXELS", 0)
    resnet = [f"res{stage}{block}_branch2b" for stage, blocks in ((3, "abcd"), (4, "abcdef"), (5, "abc"))
              for block in blocks]
    towers = [f"pyramid_{head}_{i}" for head in ("regression", "classification") for i in range(4)]
    expected = resnet + ["P3", "P4", "P5"] + towers
    assert _winograd_layers(retinanet(7, winograd=4)) == dict.fromkeys(expected, 4)
    fast = retinanet(443, winograd=4)
    assert _winograd_layers(fast) == dict.fromkeys(expected + ["pyramid_classification"], 4)
    assert set(_winograd_layers(retinanet(7, winograd=2)).values()) == {2}
    plain = retinanet(443, winograd=0)
    assert _winograd_layers(plain) == {}
    # Same variable names: weights files load into either.
    assert [v.path for v in plain.weights] == [v.path for v in fast.weights]
    rng = np.random.default_rng(4)
    plain.set_weights([rng.standard_normal(w.shape).astype(np.float32) * 0.02 + (1.0 if "variance" in w.path else 0)
                       for w in plain.weights])
    fast.set_weights(plain.get_weights())
    x = rng.uniform(-100, 100, (1, 64, 96, 3)).astype(np.float32)
    for u, v in zip(plain.predict_on_batch(x), fast.predict_on_batch(x)):
        np.testing.assert_allclose(v, u, atol=1e-6, rtol=1e-5)
    boxes_u, scores_u, labels_u = retinanet_bbox(plain).predict_on_batch(x)
    boxes_v, scores_v, labels_v = retinanet_bbox(fast).predict_on_batch(x)
    np.testing.assert_array_equal(labels_v, labels_u)
    np.testing.assert_allclose(scores_v, scores_u, atol=1e-6, rtol=0)


def test_default_is_winograd_on_a_cpu():
    """No winograd argument: F(4x4, 3x3) where the backend computes on a CPU (0 on a GPU: not this machine)."""
    if default_tile() == 0:
        pytest.skip("this backend has a GPU: the default is the direct convolution")
    assert default_tile() == TILE == 4
    assert set(_winograd_layers(retinanet(7)).values()) == {4}


def test_mixed_precision_computes_the_direct_convolution():
    a, _ = _pair("same", None)
    x = np.random.default_rng(6).standard_normal((1, 8, 9, 16)).astype(np.float32)
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_bfloat16")
    try:
        direct, winograd = keras.layers.Conv2D(24, 3, padding="same"), WinogradConv2D(24, 3, padding="same")
        direct.build(x.shape)
        winograd.build(x.shape)
    finally:
        keras.config.set_dtype_policy(policy)
    winograd.set_weights(a.get_weights())
    direct.set_weights(a.get_weights())
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(winograd(x)), keras.ops.convert_to_numpy(direct(x)))


def test_keras_format_round_trip(tmp_path):
    a, b = _pair("same", "relu", tile=2)
    b.save(tmp_path / "w.keras")
    loaded = keras.saving.load_model(tmp_path / "w.keras")
    assert [(layer.tile, layer.min_pixels) for layer in loaded.layers if type(layer) is WinogradConv2D] == [(2, 0)]
    x = np.random.default_rng(5).standard_normal((1, 6, 7, 16)).astype(np.float32)
    np.testing.assert_array_equal(loaded.predict_on_batch(x), b.predict_on_batch(x))


def test_ineligible_convolution_is_refused():
    with pytest.raises(ValueError, match="stride 1"):
        WinogradConv2D(8, 3, strides=2)
    with pytest.raises(ValueError, match="3x3"):
        WinogradConv2D(8, 5)
    with pytest.raises(ValueError, match="tile side must be one of"):
        WinogradConv2D(8, 3, tile=3)


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != keras.backend.backend()])
def test_on_other_backends(backend, tmp_path):
    _skip_unless_installed(backend)
    # --basetemp inside ours: the inner pytest must not rotate (delete) the outer run's temporary folders
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--basetemp",
                             str(tmp_path / "pytest"), __file__, "-k", "not test_on_other_backends"],
                            capture_output=True, text=True,
                            env=_backend_env(backend), cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and " failed" not in result.stdout
