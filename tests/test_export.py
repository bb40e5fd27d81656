"""export_model.py: the SavedModel a deployment loads gives the Keras model's detections on a prepared image, and
carries the model card."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytestmark = pytest.mark.slow  # exports and reloads a graph


def test_savedmodel_gives_the_keras_detections_and_carries_the_card(tmp_path, capsys):
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("SavedModel export needs the TensorFlow backend")
    import tensorflow as tf

    from oid_retinanet.data.preprocess import prepare_image
    from oid_retinanet.model.card import CARD_MEMBER, ModelCard, save_model
    from oid_retinanet.model.retinanet import retinanet, retinanet_bbox
    from retinanet_training_level_1 import export_model as script

    keras.utils.set_random_seed(5)
    model = retinanet_bbox(retinanet(3, backbone="mobilenet128_0.25", prior_probability=0.5), max_detections=20)
    card = ModelCard("mobilenet128_0.25", 3, classes=[("/m/014j1m", "Apple"), ("/m/0cyhj_", "Orange"),
                                                     ("/m/09k_b", "Lemon")], min_side=96, max_side=128)
    save_model(model, tmp_path / "m.keras", card)
    out = tmp_path / "exported"
    assert script.main([str(tmp_path / "m.keras"), str(out)]) == 0
    written = json.loads((out / CARD_MEMBER).read_text())
    assert written["classes"] == [list(c) for c in card.classes] and written["filter"]["max_detections"] == 20
    image = np.random.default_rng(0).integers(0, 255, size=(240, 320, 3), dtype=np.uint8)
    x, _ = prepare_image(image, min_side=written["min_side"], max_side=written["max_side"])
    expected = [np.asarray(v) for v in model.predict_on_batch(x[None])]
    loaded = tf.saved_model.load(str(out))  # kept referenced: its variables live with it
    got = [np.asarray(v) for v in loaded.serve(tf.constant(x[None]))]
    np.testing.assert_array_equal(got[2], expected[2])
    np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-3)
    assert (expected[2] >= 0).sum() > 0  # prior 0.5: there are detections to compare
    assert script.main([str(tmp_path / "m.keras"), str(out)]) == 2  # never over an earlier export
    assert "exists" in capsys.readouterr().err


def run_onnx(path, x):
    """(detections, card text) of an ONNX file through onnxruntime."""
    import onnxruntime

    from oid_retinanet.model.export import ONNX_CARD_KEY

    session = onnxruntime.InferenceSession(str(path))
    card = session.get_modelmeta().custom_metadata_map[ONNX_CARD_KEY]
    return session.run(None, {session.get_inputs()[0].name: x}), card


def run_tflite(path, x):
    """(detections in the Keras model's output order, card text) of a TFLite file through TensorFlow's
    interpreter, with only the builtin ops (no Flex delegate, no XNNPACK)."""
    import tensorflow as tf

    from oid_retinanet.model.card import sidecar_path

    interpreter = tf.lite.Interpreter(
        model_path=str(path),
        experimental_op_resolver_type=tf.lite.experimental.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    runner = interpreter.get_signature_runner()
    outputs = runner(**{next(iter(runner.get_input_details())): x})
    return [outputs[f"output_{k}"] for k in range(3)], sidecar_path(path).read_text()


@pytest.mark.parametrize("fmt,packages,run", [("onnx", ("tf2onnx", "onnx", "onnxruntime"), run_onnx),
                                              ("tflite", (), run_tflite)])
def test_file_exports_give_the_keras_detections_and_carry_the_card(tmp_path, fmt, packages, run):
    """The ONNX and TFLite files against the Keras model (Winograd convolutions in Keras at this size, direct ones
    in the export: equal within float32 rounding), on a batch of two images."""
    keras = pytest.importorskip("keras")
    if keras.backend.backend() != "tensorflow":
        pytest.skip("the ONNX and TFLite exports go through TensorFlow: TensorFlow backend")
    for package in packages:
        pytest.importorskip(package, reason=f"{package} is not installed (requirements-export.txt)")
    from oid_retinanet.data.preprocess import prepare_image
    from oid_retinanet.model.card import ModelCard, save_model
    from oid_retinanet.model.retinanet import retinanet, retinanet_bbox
    from oid_retinanet.model.winograd import MIN_PIXELS, WinogradConv2D
    from retinanet_training_level_1 import export_model as script

    keras.utils.set_random_seed(5)
    model = retinanet_bbox(retinanet(3, backbone="mobilenet128_0.25", prior_probability=0.5, winograd=4),
                           max_detections=20)
    assert any(isinstance(layer, WinogradConv2D) for layer in model.get_layer("classification_submodel").layers)
    card = ModelCard("mobilenet128_0.25", 3, classes=[("/m/014j1m", "Apple"), ("/m/0cyhj_", "Orange"),
                                                     ("/m/09k_b", "Lemon")], min_side=192, max_side=256)
    save_model(model, tmp_path / "m.keras", card)
    out = tmp_path / f"m.{fmt}"
    assert script.main(["--format", fmt, str(tmp_path / "m.keras"), str(out)]) == 0
    rng = np.random.default_rng(0)
    x = np.stack([prepare_image(rng.integers(0, 255, size=(480, 640, 3), dtype=np.uint8), min_side=192,
                                max_side=256)[0] for _ in range(2)])
    assert (x.shape[1] // 8) * (x.shape[2] // 8) >= MIN_PIXELS  # P3's convs run Winograd in Keras
    expected = [np.asarray(v) for v in model.predict_on_batch(x)]
    got, card_text = run(out, x)
    written = json.loads(card_text)
    assert written["classes"] == [list(c) for c in card.classes] and written["filter"]["max_detections"] == 20
    assert (expected[2] >= 0).sum() > 0
    np.testing.assert_array_equal(got[2], expected[2])
    np.testing.assert_allclose(got[1], expected[1], atol=1e-4)
    np.testing.assert_allclose(got[0], expected[0], atol=1e-2)


def test_a_missing_exporter_is_one_line_naming_the_package(tmp_path, capsys, monkeypatch):
    from oid_retinanet.model import export
    from retinanet_training_level_1 import export_model as script

    monkeypatch.setitem(export.EXPORT_PACKAGES, "onnx", ("tf2onnx", "no_such_package_here"))
    assert script.main(["--format", "onnx", str(tmp_path / "m.keras"), str(tmp_path / "m.onnx")]) == 2
    assert "no_such_package_here: pip install -r requirements-export.txt" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()
