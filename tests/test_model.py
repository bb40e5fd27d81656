"""RetinaNet in Keras 3 (oid_retinanet.model, oid_retinanet.data.preprocess) against keras-retinanet 1.0.0.

Reference: ../shared/fixtures/keras_retinanet/ (README there): a ResNet50 7-class keras-retinanet model rebuilt
from layout.json.gz by its materialize.py (once per test session, into a temporary folder), 5 images and
keras-retinanet's recorded outputs. Rules, from the fixture's measured noise between TF kernel paths
(6e-6 raw regression, 7.5e-7 scores, 3e-5 features, 6e-5 px boxes):
- anchors (numpy and graph layer), decoded JPEG/PNG pixels, preprocessed inputs: exact;
- features and raw outputs: atol = rtol = 1e-4; scores atol 1e-5; boxes atol 1e-3 px;
- detection count and labels: exact, except that detections whose recorded scores are within 1e-5 of each
  other may swap ranks (one such pair at 600/800: 0.09164103 / 0.09164101);
- the filtering step alone, fed keras-retinanet's own raw outputs: bit for bit.
Slow (600/800) tests are marked `slow`. The model-output comparisons run on every Keras backend (BACKENDS): the
one this process runs directly, each other one in a subprocess that runs this file with KERAS_BACKEND set
(skipped when that backend is not installed), with the same rules.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import REPO, fixture_path

keras = pytest.importorskip("keras")

from oid_retinanet.data.preprocess import (  # noqa: E402
    CAFFE_MEAN_BGR,
    compute_resize_scale,
    preprocess_image,
    read_image_bgr,
    resize_image,
    resized_shape,
)
from oid_retinanet.errors import OIDInputError  # noqa: E402
from oid_retinanet.model import anchors as anchors_mod  # noqa: E402
from oid_retinanet.model.anchors import anchors_for_shape, feature_shapes, generate_anchors  # noqa: E402
from oid_retinanet.model.decode import bbox_transform_inv_np, clip_boxes_np  # noqa: E402
from oid_retinanet.model.filter_detections import (  # noqa: E402
    FilterDetections,
    _filter_detections_static,
    _nms_np,
    filter_detections_np,
    greedy_nms,
)
from oid_retinanet.model.h5 import inspect_h5, load_keras_retinanet, load_model, load_weights_h5  # noqa: E402
from oid_retinanet.model.resnet import CONV1_SAME, CONV1_ZERO_PADDING, block_names  # noqa: E402
from oid_retinanet.model.retinanet import retinanet, training_model_of  # noqa: E402

# TF 2.21's variables still implement __array__ without numpy 2's `copy` keyword (third-party deprecation noise)
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword")

FIXTURE = "keras_retinanet"
IMAGES = {"img_a_480x640": ".png", "img_b_gray_500x300": ".png", "img_c_wide_150x600": ".png",
          "img_d_333x500": ".jpg"}
FEATURE_TOL = dict(atol=1e-4, rtol=1e-4)
SCORE_ATOL = 1e-5
BOX_ATOL = 1e-3
# intermediates_128x160.npz key -> our layer name (keys ending _chA-B hold channels A..B-1 only)
INTERMEDIATES = {
    "conv1_ch0-8": "conv1", "bn_conv1_ch0-8": "bn_conv1", "pool1_ch0-8": "pool1",
    "res2a_branch2a_ch0-8": "res2a_branch2a", "C2_res2c_relu_ch0-16": "res2c_relu",
    "C3": "res3d_relu", "C4": "res4f_relu", "C5": "res5c_relu", "C5_reduced": "C5_reduced",
    "P5_upsampled": "P5_upsampled", "P4_merged": "P4_merged", "P4_upsampled_ch0-32": "P4_upsampled",
    "P3_merged_ch0-32": "P3_merged", "P3": "P3", "P4": "P4", "P5": "P5", "P6": "P6", "P7": "P7",
    "regression": "regression", "classification": "classification", "anchors_layer": "anchors",
    "boxes_layer": "boxes", "clipped_boxes_layer": "clipped_boxes",
}


def _fx(*parts: str) -> Path:
    return fixture_path(FIXTURE, *parts)


def _meta() -> dict:
    return json.loads(_fx("meta.json").read_text())


def _image(stem: str) -> Path:
    ext = ".png" if stem == "img_small_128x160" else IMAGES[stem]
    return _fx("images", stem + ext)


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _max_dev(a, b) -> float:
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) if np.size(a) else 0.0


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def h5_files(tmp_path_factory) -> dict[str, Path]:
    """The fixture's training and inference .h5 files, rebuilt by its materialize.py (numpy + h5py, ~1 s)."""
    script = _fx("materialize.py")
    spec = importlib.util.spec_from_file_location("kr_materialize", script)
    materialize = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(materialize)
    layout = materialize.load_layout(str(_fx("layout.json.gz")))
    out = tmp_path_factory.mktemp("keras_retinanet_h5")
    files = {}
    for which in ("train", "inference"):
        files[which] = out / f"{which}.h5"
        materialize.materialize(layout, which, str(files[which]))
    return files


@pytest.fixture(scope="module")
def inference_model(h5_files):
    """Our inference model loaded from keras-retinanet's inference file."""
    return load_keras_retinanet(h5_files["inference"])


def _probe_of(inference_model):
    """One model giving the intermediates, raw outputs and detections in a single call (one trace per size)."""
    layers = sorted(set(INTERMEDIATES.values()))
    outputs = [inference_model.get_layer(name).output for name in layers] + list(inference_model.outputs)

    model = keras.Model(inference_model.input, outputs)

    def run(x: np.ndarray) -> dict[str, np.ndarray]:
        values = model.predict_on_batch(x[None])
        out = {name: np.asarray(v)[0] for name, v in zip(layers, values)}
        out["det_boxes"], out["det_scores"], out["det_labels"] = (np.asarray(v)[0] for v in values[len(layers):])
        return out

    return run


def _recorded_filter_inputs(stem: str) -> tuple[np.ndarray, np.ndarray]:
    """keras-retinanet's recorded raw outputs at 256/320, decoded: (boxes, classification) for the filter."""
    recorded = np.load(_fx("outputs_min256_max320.npz"))
    h, w = _meta()["outputs_min256_max320"][stem]["input_shape"][:2]
    boxes = clip_boxes_np(bbox_transform_inv_np(_graph_anchors_np((h, w)), recorded[f"{stem}__regression"]), h, w)
    return boxes, recorded[f"{stem}__classification"]


def _overlapping_candidates() -> tuple[np.ndarray, np.ndarray]:
    """400 heavily overlapping boxes (some degenerate) and 3 classes of scores with ties; 40% of the anchors have
    no score above the threshold."""
    rng = np.random.default_rng(5)
    xy = rng.uniform(0, 60, (400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(-2, 30, (400, 2)).astype(np.float32)], axis=1)
    cls = rng.uniform(0, 1, (400, 3)).astype(np.float32) ** 3
    cls[rng.uniform(size=400) < 0.4] *= 0.04
    cls[rng.uniform(size=cls.shape) < 0.1] = 0.3
    return boxes, cls


# name -> class_specific_filter, nms, block, rows of the static-shape filtering (258 anchors pass the threshold)
STATIC_FILTERS = {"blocks_of_3": (True, True, 3, 40), "rows_350": (True, True, 50, 350),
                  "agnostic": (False, True, 3, 0), "no_nms": (True, False, 4096, 0)}


def outputs_of(inference_model) -> dict[str, np.ndarray]:
    """Everything the per-backend fixture comparisons check, computed by this process's Keras backend through
    predict_on_batch (jit-compiled on JAX). Keys `case__name`: case `small` (128x160) or an IMAGES stem at 256/320
    (the probe's outputs), `flip` (the 128x160 image and its mirror as one batch of two, and the mirror alone),
    `filter_specific` / `filter_agnostic` (FilterDetections fed each stem's recorded raw outputs), `static` (the
    STATIC_FILTERS on `_overlapping_candidates`; not on torch, whose top_k does not order equal scores by index
    and which never takes that path)."""
    run = _probe_of(inference_model)
    small = preprocess_image(read_image_bgr(_image("img_small_128x160")))
    out = {f"small__{name}": v for name, v in run(small).items()}
    for stem in IMAGES:  # the raw outputs and detections only (the npz stays small)
        got = run(resize_image(preprocess_image(read_image_bgr(_image(stem))), 256, 320)[0])
        out.update({f"{stem}__{name}": got[name] for name in ("regression", "classification", "det_boxes",
                                                               "det_scores", "det_labels")})
    names = ("boxes", "scores", "labels")
    pair = [np.asarray(v) for v in inference_model.predict_on_batch(np.stack([small, small[:, ::-1]]))]
    mirror = [np.asarray(v)[0] for v in inference_model.predict_on_batch(small[None, :, ::-1])]
    out.update({f"flip__pair_{n}": v for n, v in zip(names, pair)})
    out.update({f"flip__mirror_{n}": v for n, v in zip(names, mirror)})
    for class_specific, case in ((True, "filter_specific"), (False, "filter_agnostic")):
        inputs = [keras.Input((None, 4)), keras.Input((None, 7))]
        model = keras.Model(inputs, FilterDetections(class_specific_filter=class_specific)(inputs))  # one trace
        for stem in IMAGES:
            boxes, cls = _recorded_filter_inputs(stem)
            values = model.predict_on_batch([boxes[None], cls[None]])
            out.update({f"{case}__{stem}_{n}": np.asarray(v)[0] for n, v in zip(names, values)})
    if keras.backend.backend() != "torch":
        boxes, cls = (keras.ops.convert_to_tensor(a) for a in _overlapping_candidates())
        for name, (class_specific, nms, block, rows) in STATIC_FILTERS.items():
            values = _filter_detections_static(boxes, cls, class_specific, nms, 0.05, 300, 0.5, block=block, rows=rows)
            out.update({f"static__{name}_{n}": keras.ops.convert_to_numpy(v) for n, v in zip(names, values)})
    return out


BACKENDS = ["tensorflow", "torch", "jax"]


def _skip_unless_installed(backend: str) -> None:
    if importlib.util.find_spec(backend) is None:
        pytest.skip(f"{backend} is not installed")


def _backend_env(backend: str) -> dict[str, str]:
    return dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")


@pytest.fixture(scope="module", params=BACKENDS)
def outputs(request, h5_files, inference_model) -> dict[str, np.ndarray]:
    """`outputs_of` on each backend: here for this process's backend, else in a subprocess running this file."""
    backend = request.param
    if backend == keras.backend.backend():
        return outputs_of(inference_model)
    _skip_unless_installed(backend)
    path = h5_files["inference"].parent / f"{backend}_outputs.npz"
    result = subprocess.run([sys.executable, __file__, str(h5_files["inference"]), str(path)], capture_output=True,
                            text=True, env=_backend_env(backend), cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    with np.load(path) as npz:
        return dict(npz)


@pytest.fixture(scope="module")
def probe(inference_model):
    return _probe_of(inference_model)


@pytest.fixture(scope="module")
def small_outputs(probe):
    x = preprocess_image(read_image_bgr(_image("img_small_128x160")))
    return probe(x)


# --------------------------------------------------------------------------------------------- anchors
@pytest.mark.parametrize("key", ["anchors_128x160x3", "anchors_533x800x3"])
def test_anchors_for_shape_exact(key):
    expected = np.load(_fx("anchors.npz"))[key]
    shape = tuple(int(v) for v in key.split("_")[1].split("x"))
    got = anchors_for_shape(shape)
    assert got.dtype == np.float64
    assert np.array_equal(got, expected)
    assert anchors_mod.num_anchors_for_shape(shape) == len(expected)


def test_feature_shapes_and_anchor_order():
    assert [list(s) for s in feature_shapes((128, 160, 3))] == _meta()["anchors"]["guess_shapes_128x160"]
    base = generate_anchors(32)
    # ratio-major: anchors 0..2 have ratio 0.5 (h = w / 2), scales 1, 2^(1/3), 2^(2/3); centred on 0
    w, h = base[:, 2] - base[:, 0], base[:, 3] - base[:, 1]
    np.testing.assert_allclose(h / w, np.repeat([0.5, 1, 2], 3), rtol=1e-12)
    np.testing.assert_allclose(np.sqrt(w * h), 32 * np.tile([1, 2 ** (1 / 3), 2 ** (2 / 3)], 3), rtol=1e-6)
    np.testing.assert_allclose(base[:, :2] + base[:, 2:], 0, atol=1e-12)


# ------------------------------------------------------------------------------------- preprocessing
def test_preprocess_needs_no_float64_copy_of_the_image():
    """A large upload's mean subtraction: the values of a whole-image float64 difference rounded to float32 (the
    rule the recorded input hash below checks), with at most the float32 image plus 10% allocated meanwhile."""
    import tracemalloc

    x = np.random.default_rng(1).integers(0, 256, (1500, 2000, 3), dtype=np.uint8)
    expected = (x.astype(np.float32) - np.asarray(CAFFE_MEAN_BGR, dtype=np.float64)).astype(np.float32)
    tracemalloc.start()
    try:
        got = preprocess_image(x)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == np.float32 and peak <= 1.1 * expected.nbytes, (peak, expected.nbytes)


@pytest.mark.parametrize("stem", list(IMAGES) + ["img_small_128x160"])
def test_read_image_bgr_decodes_as_reference(stem):
    img = read_image_bgr(_image(stem))
    meta = _meta()
    if stem == "img_small_128x160":
        assert _sha(preprocess_image(img)) == meta["intermediates_128x160"]["input_sha256"]
        return
    ref = meta["outputs_min256_max320"][stem]
    assert list(img.shape) == ref["decoded_bgr_shape"] and img.dtype == np.uint8
    assert _sha(img) == ref["decoded_bgr_sha256"]


@pytest.mark.parametrize("size", ["min256_max320", "min600_max800"])
@pytest.mark.parametrize("stem", list(IMAGES))
def test_preprocess_then_resize(stem, size):
    min_side, max_side = (int(v) for v in size.replace("min", "").split("_max"))
    recorded = np.load(_fx(f"outputs_{size}.npz"))
    ref = _meta()[f"outputs_{size}"][stem]
    x, scale = resize_image(preprocess_image(read_image_bgr(_image(stem))), min_side, max_side)
    assert scale == ref["scale"] == recorded[f"{stem}__scale"]
    assert list(x.shape) == ref["input_shape"] and x.dtype == np.float32
    assert list(resized_shape(ref["decoded_bgr_shape"], min_side, max_side)) == ref["input_shape"][:2]
    assert np.array_equal(x[::8, ::8], recorded[f"{stem}__input_sub8"])
    if size == "min256_max320":
        # Whole input bit for bit. (At 600/800 the upscaled inputs of a, b, c differ from the recorded sha256
        # though every stored x[::8, ::8] sample is equal: OpenCV 5.0 vs 4.11 rounding, ~1e-5 at most.)
        assert _sha(x) == ref["input_sha256"]


def test_resize_scale_rule():
    assert compute_resize_scale((333, 500, 3), 600, 800) == 1.6  # short side rules
    assert compute_resize_scale((150, 600, 3), 600, 800) == 800 / 600  # long side capped
    assert compute_resize_scale((480, 640, 3)) == 800 / 480
    assert resized_shape((333, 500), 600, 800) == (533, 800)  # 532.8 -> 533
    # cv2 samples with fx = fy = scale, not with out/in: resizing to the size directly differs
    img = preprocess_image(read_image_bgr(_image("img_d_333x500")))
    ours, _ = resize_image(img, 600, 800)
    import cv2

    assert _max_dev(ours, cv2.resize(img, (800, 533))) > 1.0


def test_caffe_preprocessing_before_resize_matters():
    img = read_image_bgr(_image("img_d_333x500"))
    x = preprocess_image(img)
    assert x.dtype == np.float32
    np.testing.assert_array_equal(x[0, 0], (img[0, 0].astype(np.float64) - [103.939, 116.779, 123.68]).astype(
        np.float32))
    late = preprocess_image(resize_image(img, 256, 320)[0])
    assert _max_dev(late, resize_image(x, 256, 320)[0]) > 0.1


def test_readers_of_other_modes(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    gray = rng.integers(0, 256, (20, 30), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "gray.png")
    assert np.array_equal(read_image_bgr(tmp_path / "gray.png"), np.repeat(gray[:, :, None], 3, axis=2))
    rgba = np.dstack([rgb, rng.integers(0, 256, (20, 30), dtype=np.uint8)])
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    assert np.array_equal(read_image_bgr(tmp_path / "rgba.png"), rgb[:, :, ::-1])  # alpha dropped, not composited
    palette = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    palette.save(tmp_path / "palette.png")
    assert np.array_equal(read_image_bgr(tmp_path / "palette.png"),
                          np.asarray(palette.convert("RGB"))[:, :, ::-1])
    g16 = (rng.integers(0, 65536, (20, 30))).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "gray16.png")
    clipped = read_image_bgr(tmp_path / "gray16.png")  # keras-retinanet: PIL's conversion clips at 255
    assert np.array_equal(clipped[:, :, 0], np.minimum(g16, 255).astype(np.uint8))
    scaled = read_image_bgr(tmp_path / "gray16.png", sixteen_bit="scale")
    assert np.array_equal(scaled[:, :, 1], (g16 >> 8).astype(np.uint8))
    cmyk = Image.fromarray(rgb).convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=95)
    got = read_image_bgr(tmp_path / "cmyk.jpg")
    assert got.shape == (20, 30, 3) and got.dtype == np.uint8
    assert np.mean(np.abs(got.astype(int) - rgb[:, :, ::-1])) < 20
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(OIDInputError, match="bad.jpg"):
        read_image_bgr(tmp_path / "bad.jpg")
    with pytest.raises(FileNotFoundError):
        read_image_bgr(tmp_path / "absent.jpg")


# --------------------------------------------------------------------------------------- .h5 loading
def test_inspect_h5(h5_files):
    for which, is_inference in (("train", False), ("inference", True)):
        info = inspect_h5(h5_files[which])
        assert (info.backbone, info.conv1, info.num_classes, info.num_anchors) == ("resnet50", CONV1_SAME, 7, 9)
        assert info.is_inference is is_inference
        assert info.clip_size_minus_one  # tf.keras 2.15 file: keras-retinanet 1.0.0 clips to W - 1
    info = inspect_h5(h5_files["inference"])
    assert info.filter_config == {"nms": True, "class_specific_filter": True, "nms_threshold": 0.5,
                                  "score_threshold": 0.05, "max_detections": 300}
    assert info.anchor_params == anchors_mod.DEFAULT_ANCHOR_PARAMS
    assert info.box_std == (0.2, 0.2, 0.2, 0.2)


def test_train_and_inference_files_load_the_same_weights(h5_files, inference_model):
    train = load_keras_retinanet(h5_files["train"])
    assert len(train.outputs) == 2 and train.get_layer("classification").output.shape[-1] == 7
    theirs = {v.path: keras.ops.convert_to_numpy(v) for v in train.weights}
    ours = {v.path: keras.ops.convert_to_numpy(v) for v in training_model_of(inference_model).weights}
    assert theirs.keys() == ours.keys() and len(theirs) > 300
    assert all(np.array_equal(theirs[k], ours[k]) for k in theirs)
    with h5py.File(h5_files["train"], "r") as f:
        np.testing.assert_array_equal(
            ours["pyramid_classification/kernel"],
            f["model_weights/classification_submodel/pyramid_classification/kernel:0"][()])


def _rewrite_as_keras22(src: Path, dst: Path, weights_only: bool = False, suffix_nested: bool = False) -> None:
    """Copy a tf.keras file into Keras 2.2's way of storing it: fixed-length byte-string name lists (the layer
    names split into two chunks, as Keras 2 does for long lists), keras_version 2.2.4, 'Model' class names;
    optionally a save_weights layout (layer groups at the root) and TF1-style '_1' suffixes on nested names."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        config = f.attrs["model_config"].replace('"Functional"', '"Model"')
        for key in list(f.attrs):
            del f.attrs[key]
        root = f["model_weights"]
        f.attrs["keras_version"] = np.bytes_(b"2.2.4")
        f.attrs["backend"] = np.bytes_(b"tensorflow")
        f.attrs.create("model_config", config.encode(), dtype=h5py.string_dtype("ascii"))
        names = [n if isinstance(n, str) else n.decode() for n in root.attrs["layer_names"]]
        del root.attrs["layer_names"]
        root.attrs["layer_names0"] = np.array([n.encode() for n in names[:100]], dtype="S")
        root.attrs["layer_names1"] = np.array([n.encode() for n in names[100:]], dtype="S")
        for name in names:
            group = root[name]
            wnames = [w if isinstance(w, str) else w.decode() for w in group.attrs["weight_names"]]
            if suffix_nested and name.endswith("_submodel"):
                renamed = []
                for w in wnames:
                    inner, param = w.split("/")
                    group.move(inner, inner + "_1") if inner in group else None
                    renamed.append(f"{inner}_1/{param}")
                wnames = renamed
            group.attrs["weight_names"] = np.array([w.encode() for w in wnames], dtype="S")
        if weights_only:
            del f["optimizer_weights"]
            for key in list(f.attrs):
                del f.attrs[key]
            for name in names:
                f.move(f"model_weights/{name}", name)
            f.attrs["layer_names0"] = np.array([n.encode() for n in names[:100]], dtype="S")
            f.attrs["layer_names1"] = np.array([n.encode() for n in names[100:]], dtype="S")
            f.attrs["keras_version"] = np.bytes_(b"2.2.4")
            del f["model_weights"]


@pytest.mark.parametrize("variant", ["keras22", "keras22_weights_only", "keras22_suffixed"])
def test_keras22_layouts_load(h5_files, inference_model, tmp_path, variant):
    path = tmp_path / f"{variant}.h5"
    _rewrite_as_keras22(h5_files["train"], path, weights_only=variant.endswith("weights_only"),
                        suffix_nested=variant.endswith("suffixed"))
    info = inspect_h5(path)
    assert (info.backbone, info.conv1, info.num_classes) == ("resnet50", CONV1_SAME, 7)
    assert info.keras_version == "2.2.4" and info.clip_size_minus_one is False  # keras-retinanet <= 0.5.1
    model = training_model_of(inference_model)
    before = [keras.ops.convert_to_numpy(v).copy() for v in model.weights]
    for v in model.weights:
        v.assign(np.zeros(v.shape, v.dtype))
    try:
        report = load_weights_h5(model, path)
        assert report.ok and report.loaded == len(before)
        assert all(np.array_equal(keras.ops.convert_to_numpy(v), b) for v, b in zip(model.weights, before))
    finally:
        for v, b in zip(model.weights, before):
            v.assign(b)


def test_mismatch_is_a_clear_error(h5_files):
    other = retinanet(5)
    with pytest.raises(OIDInputError) as err:
        load_weights_h5(other, h5_files["train"])
    message = str(err.value)
    assert str(h5_files["train"]) in message and "classification_submodel/pyramid_classification/kernel" in message
    assert "(file (3, 3, 256, 63), model (3, 3, 256, 45))" in message
    report = load_weights_h5(other, h5_files["train"], skip_mismatch=True)
    assert report.shape_mismatch == [
        "classification_submodel/pyramid_classification/kernel (file (3, 3, 256, 63), model (3, 3, 256, 45))",
        "classification_submodel/pyramid_classification/bias (file (63,), model (45,))"]
    assert report.loaded == len(other.weights) - 2
    ref = {v.path: keras.ops.convert_to_numpy(v) for v in load_keras_retinanet(h5_files["train"]).weights}
    assert np.array_equal(keras.ops.convert_to_numpy(other.get_layer("P3").weights[0]), ref["P3/kernel"])

    deeper = retinanet(7, backbone="resnet101")
    expected = r"holds a resnet50 .* 7 classes; missing in the file: res3b1_branch2a, .*not in the model: res3b_"
    with pytest.raises(OIDInputError, match=expected):
        load_weights_h5(deeper, h5_files["train"])


def test_not_a_model_file(tmp_path):
    (tmp_path / "x.h5").write_bytes(b"junk")
    with pytest.raises(OIDInputError, match="x.h5"):
        inspect_h5(tmp_path / "x.h5")
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_group("model_weights")
    with pytest.raises(OIDInputError, match="layer_names"):
        inspect_h5(tmp_path / "empty.h5")


# --------------------------------------------------------------------------- model outputs, 128x160
def _case(outputs: dict[str, np.ndarray], case: str) -> dict[str, np.ndarray]:
    """One case's entries of the `outputs` fixture, by name."""
    return {k[len(case) + 2:]: v for k, v in outputs.items() if k.startswith(case + "__")}


@pytest.mark.parametrize("key", [k for k in INTERMEDIATES if not k.endswith("_layer")])
def test_intermediates_128x160(outputs, key):
    expected = np.load(_fx("intermediates_128x160.npz"))[key]
    got = outputs[f"small__{INTERMEDIATES[key]}"][..., :expected.shape[-1]]
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, **FEATURE_TOL)


def test_graph_anchors_and_boxes_128x160(outputs):
    small = _case(outputs, "small")
    recorded = np.load(_fx("intermediates_128x160.npz"))
    assert np.array_equal(small["anchors"], recorded["anchors_layer"])  # float32, same arithmetic
    assert _max_dev(small["anchors"], anchors_for_shape((128, 160))) <= 3.1e-5
    np.testing.assert_allclose(small["boxes"], recorded["boxes_layer"], rtol=0, atol=BOX_ATOL)
    np.testing.assert_allclose(small["clipped_boxes"], recorded["clipped_boxes_layer"], rtol=0, atol=BOX_ATOL)


NEAR_TIE = 1e-5  # scores closer than this may come out in either order (README: near-ties may reorder)


def _assert_same_detections(boxes, scores, labels, ref_boxes, ref_scores, ref_labels):
    """Same count; each recorded detection matched by one of ours with the same label, score within SCORE_ATOL
    and box within BOX_ATOL, at the same rank or at the rank of a recorded score within NEAR_TIE of its own."""
    assert boxes.shape == ref_boxes.shape and labels.dtype == np.int32
    n = int((ref_scores > -1).sum())
    assert int((scores > -1).sum()) == n
    np.testing.assert_array_equal(labels[n:], -1)
    used = np.zeros(n, bool)
    swapped = 0
    for i in range(n):
        ranks = [i] + [j for j in np.flatnonzero(np.abs(ref_scores[:n] - ref_scores[i]) <= NEAR_TIE) if j != i]
        match = next((j for j in ranks if not used[j] and labels[j] == ref_labels[i]
                      and abs(float(scores[j]) - float(ref_scores[i])) <= SCORE_ATOL
                      and np.all(np.abs(boxes[j] - ref_boxes[i]) <= BOX_ATOL)), None)
        assert match is not None, (f"recorded detection {i} (label {ref_labels[i]}, score {ref_scores[i]}, box "
                                   f"{ref_boxes[i]}) not found; ours there: {labels[i]}, {scores[i]}, {boxes[i]}")
        used[match] = True
        swapped += match != i
    assert swapped <= 4, f"{swapped} near-tie reorderings"


def test_detections_128x160(outputs):
    small = _case(outputs, "small")
    recorded = np.load(_fx("intermediates_128x160.npz"))
    _assert_same_detections(small["det_boxes"], small["det_scores"], small["det_labels"],
                            recorded["det_boxes"], recorded["det_scores"], recorded["det_labels"])


def test_flip_batch_of_two_equals_single_images(outputs):
    small, flip = _case(outputs, "small"), _case(outputs, "flip")
    np.testing.assert_allclose(flip["pair_boxes"][0], small["det_boxes"], atol=BOX_ATOL, rtol=0)
    np.testing.assert_array_equal(flip["pair_labels"][0], small["det_labels"])
    np.testing.assert_array_equal(flip["pair_labels"][1], flip["mirror_labels"])
    np.testing.assert_allclose(flip["pair_scores"][1], flip["mirror_scores"], atol=SCORE_ATOL, rtol=0)
    assert not np.array_equal(flip["mirror_boxes"], small["det_boxes"])  # the mirror is another image


# ------------------------------------------------------------------------ model outputs, 256/320
@pytest.mark.parametrize("stem", list(IMAGES))
def test_outputs_min256_max320(outputs, stem):
    recorded = np.load(_fx("outputs_min256_max320.npz"))
    out = _case(outputs, stem)
    np.testing.assert_allclose(out["regression"], recorded[f"{stem}__regression"], **FEATURE_TOL)
    np.testing.assert_allclose(out["classification"], recorded[f"{stem}__classification"], **FEATURE_TOL)
    assert _meta()["outputs_min256_max320"][stem]["n_detections"] == int((recorded[f"{stem}__scores"] > -1).sum())
    _assert_same_detections(out["det_boxes"], out["det_scores"], out["det_labels"], recorded[f"{stem}__boxes"],
                            recorded[f"{stem}__scores"], recorded[f"{stem}__labels"])


def _graph_anchors_np(shape) -> np.ndarray:
    """The Anchors layer's float32 arithmetic in numpy: (arange + 0.5) * stride + float32 base anchors."""
    params = anchors_mod.DEFAULT_ANCHOR_PARAMS
    parts = []
    for (h, w), size, stride in zip(feature_shapes(shape), params.sizes, params.strides):
        base = generate_anchors(size).astype(np.float32)
        sx = (np.arange(w, dtype=np.float32) + np.float32(0.5)) * np.float32(stride)
        sy = (np.arange(h, dtype=np.float32) + np.float32(0.5)) * np.float32(stride)
        gx, gy = np.meshgrid(sx, sy)
        shifts = np.stack([gx.ravel(), gy.ravel(), gx.ravel(), gy.ravel()], axis=1)
        parts.append((base[None] + shifts[:, None]).reshape(-1, 4))
    return np.concatenate(parts)


@pytest.mark.parametrize("class_specific", [True, False])
def test_filtering_of_recorded_raw_outputs_is_bitwise(outputs, class_specific):
    """keras-retinanet's own raw outputs through our decoding and filtering: its detections bit for bit
    (class-specific). The class-agnostic option has no recording: the graph layer must equal the
    independent numpy implementation."""
    recorded = np.load(_fx("outputs_min256_max320.npz"))
    filtered = _case(outputs, "filter_specific" if class_specific else "filter_agnostic")
    for stem in IMAGES:
        ref = filter_detections_np(*_recorded_filter_inputs(stem), class_specific_filter=class_specific)
        got = [filtered[f"{stem}_{n}"] for n in ("boxes", "scores", "labels")]
        for g, r in zip(got, ref):
            assert g.dtype == r.dtype and np.array_equal(g, r), stem
        if class_specific:
            for r, key in zip(ref, ("boxes", "scores", "labels")):
                assert np.array_equal(r, recorded[f"{stem}__{key}"]), (stem, key)


def test_static_shape_filtering_equals_numpy(outputs):
    """The static-shape filtering FilterDetections runs on JAX (candidates in blocks by top_k, first over the rows
    of the anchors that pass when there are no more than `rows`), bit for bit the numpy implementation on
    overlapping boxes with tied scores, whatever the block and row counts."""
    static = _case(outputs, "static")
    if not static:
        pytest.skip("not on torch: torch.topk does not order equal scores by index (and torch never takes this path)")
    for name, (class_specific, nms, _, _) in STATIC_FILTERS.items():
        ref = filter_detections_np(*_overlapping_candidates(), class_specific_filter=class_specific, nms=nms)
        assert int((ref[1] > -1).sum()) == (207 if name == "agnostic" else 300)  # the data fill the output
        for n, r in zip(("boxes", "scores", "labels"), ref):
            assert static[f"{name}_{n}"].dtype == r.dtype and np.array_equal(static[f"{name}_{n}"], r), (name, n)


def test_filter_detections_options_hand_worked():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [50, 50, 60, 60]], np.float32)
    scores = np.array([[0.9, 0.0], [0.8, 0.7], [0.05, 0.6], [0.3, 0.3]], np.float32)
    layer = FilterDetections(max_detections=5)
    b, s, lab = (np.asarray(v)[0] for v in layer([boxes[None], scores[None]]))
    # class 0: 0.9 keeps, 0.8 (IoU 0.68) goes, 0.05 is not > 0.05; class 1: 0.7, then 0.6 (IoU 0.68) goes;
    # the tie 0.3/0.3 at anchor 3 orders class 0 first
    np.testing.assert_array_equal(s, np.array([0.9, 0.7, 0.3, 0.3, -1], np.float32))
    np.testing.assert_array_equal(lab, [0, 1, 0, 1, -1])
    np.testing.assert_array_equal(b[4], [-1, -1, -1, -1])
    b, s, lab = (np.asarray(v)[0] for v in FilterDetections(max_detections=5, class_specific_filter=False)(
        [boxes[None], scores[None]]))
    np.testing.assert_array_equal(s, np.array([0.9, 0.3, -1, -1, -1], np.float32))  # best class per anchor
    np.testing.assert_array_equal(lab, [0, 0, -1, -1, -1])
    b, s, lab = (np.asarray(v)[0] for v in FilterDetections(max_detections=3, nms=False)(
        [boxes[None], scores[None]]))
    np.testing.assert_array_equal(s, np.array([0.9, 0.8, 0.7], np.float32))
    empty = [np.asarray(v)[0] for v in FilterDetections(max_detections=2)([boxes[None], scores[None] * 0])]
    assert (empty[1] == -1).all() and (empty[2] == -1).all()


@pytest.mark.parametrize("prefix", [3, 50, 10_000])
def test_greedy_nms_prefix_does_not_change_results(prefix):
    """greedy_nms tries the best `prefix` candidates first and falls back to all of them: same result as the
    numpy per-class NMS whatever the prefix (heavily overlapping boxes, so the fallback is taken)."""
    rng = np.random.default_rng(3)
    xy = rng.uniform(0, 40, (400, 2)).astype(np.float32)
    boxes = np.concatenate([xy, xy + rng.uniform(5, 30, (400, 2)).astype(np.float32)], axis=1)
    labels = rng.integers(0, 3, 400).astype(np.int32)
    scores = rng.uniform(0, 1, 400).astype(np.float32)
    order = np.lexsort((np.arange(400), labels, -scores))
    keep, count = greedy_nms(boxes[order], labels[order], 0.5, 60, prefix=prefix)
    keep = keras.ops.convert_to_numpy(keep)[: int(count)]
    expected = []
    for c in range(3):
        idx = np.flatnonzero(labels == c)
        expected.extend(idx[_nms_np(boxes[idx], scores[idx], 0.5, 60)])
    expected = sorted(expected, key=lambda i: (-scores[i], labels[i], i))[:60]
    assert int(count) == 60 and list(order[keep]) == expected


# ---------------------------------------------------------------------------- backbones and variants
def test_resnet_block_names():
    assert [len(s) for s in block_names(101)] == [3, 4, 23, 3]
    assert block_names(101)[2][:3] == ["4a", "4b1", "4b2"] and block_names(101)[2][-1] == "4b22"
    assert block_names(152)[1][-1] == "3b7" and block_names(152)[2][-1] == "4b35"
    assert block_names(50)[2] == ["4a", "4b", "4c", "4d", "4e", "4f"]
    assert block_names(152)[0] == ["2a", "2b", "2c"] and block_names(152)[3] == ["5a", "5b", "5c"]


def _conv_np(x: np.ndarray, kernel: np.ndarray, stride: int, pad: tuple[int, int]) -> np.ndarray:
    """Direct 2-D convolution (cross-correlation) in float64 with explicit zero padding (before, after)."""
    xp = np.pad(x.astype(np.float64), ((pad[0], pad[1]), (pad[0], pad[1]), (0, 0)))
    k = kernel.shape[0]
    oh, ow = (xp.shape[0] - k) // stride + 1, (xp.shape[1] - k) // stride + 1
    out = np.zeros((oh, ow, kernel.shape[-1]))
    for i in range(k):
        for j in range(k):
            patch = xp[i:i + stride * oh:stride, j:j + stride * ow:stride]
            out += patch @ kernel[i, j].astype(np.float64)
    return out


@pytest.mark.parametrize("conv1", [CONV1_SAME, CONV1_ZERO_PADDING])
def test_conv1_variants(h5_files, conv1):
    """keras-resnet 0.2.0 ('same': TF pads an even side 2 before, 3 after) and 0.1.0 (ZeroPadding2D(3))."""
    model = retinanet(7, conv1=conv1)
    load_weights_h5(model, h5_files["train"])
    assert ("padding_conv1" in [layer.name for layer in model.layers]) == (conv1 == CONV1_ZERO_PADDING)
    probe = keras.Model(model.input, [model.get_layer("conv1").output, model.outputs[1]])
    kernel = keras.ops.convert_to_numpy(model.get_layer("conv1").kernel)
    x = preprocess_image(read_image_bgr(_image("img_small_128x160")))[:40, :50]
    got, _ = (keras.ops.convert_to_numpy(v) for v in probe(x[None]))  # eager: one small call, no trace
    expected = _conv_np(x, kernel, 2, (2, 3) if conv1 == CONV1_SAME else (3, 3))
    np.testing.assert_allclose(got[0], expected, atol=2e-4, rtol=1e-5)
    if conv1 == CONV1_ZERO_PADDING:  # odd sides: both variants pad 3/3 and agree everywhere
        odd = preprocess_image(read_image_bgr(_image("img_small_128x160")))[:65, :97]
        same = retinanet(7)
        load_weights_h5(same, h5_files["train"])
        np.testing.assert_allclose(keras.ops.convert_to_numpy(probe(odd[None])[1]),
                                   keras.ops.convert_to_numpy(same(odd[None])[1]), atol=1e-6, rtol=0)


def _write_keras2_h5(model: keras.Model, path: Path) -> None:
    """Write `model`'s weights in tf.keras 2's HDF5 layout (nested submodel groups, ':0' names, vlen attrs)."""
    str_dt = h5py.string_dtype("ascii")
    with h5py.File(path, "w") as f:
        f.attrs.create("keras_version", "2.15.0", dtype=h5py.string_dtype("utf-8"))
        root = f.create_group("model_weights")
        names = [layer.name for layer in model.layers]
        root.attrs.create("layer_names", np.array(names, dtype=object), dtype=str_dt)
        for layer in model.layers:
            group = root.create_group(layer.name)
            pairs = []
            if isinstance(layer, keras.Model):
                pairs = [(f"{inner.name}/{v.name}:0", v) for inner in layer.layers for v in inner.weights]
            else:
                pairs = [(f"{layer.name}/{v.name}:0", v) for v in layer.weights]
            group.attrs.create("weight_names", np.array([n for n, _ in pairs], dtype=object), dtype=str_dt)
            for name, v in pairs:
                group.create_dataset(name, data=keras.ops.convert_to_numpy(v))


def test_other_depth_and_class_count_through_the_same_path(tmp_path):
    """A ResNet101, 3-class, 0.1.0-conv1 model written in keras-retinanet's layout loads by inference alone."""
    rng = np.random.default_rng(1)
    source = retinanet(3, backbone="resnet101", conv1=CONV1_ZERO_PADDING)
    for v in source.weights:
        v.assign((rng.standard_normal(v.shape) * 0.01).astype(np.float32) + (1.0 if "variance" in v.name else 0))
    path = tmp_path / "resnet101_3.h5"
    _write_keras2_h5(source, path)
    info = inspect_h5(path)
    assert (info.backbone, info.conv1, info.num_classes, info.is_inference) == (
        "resnet101", CONV1_ZERO_PADDING, 3, False)
    loaded = load_keras_retinanet(path)
    x = np.random.default_rng(2).uniform(-100, 100, (1, 64, 96, 3)).astype(np.float32)
    for a, b in zip(source(x), loaded(x)):
        assert np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))


TRAIN_STEP = """
import numpy as np, keras
from oid_retinanet.model.retinanet import retinanet, retinanet_bbox
from oid_retinanet.model.anchors import num_anchors_for_shape
model = retinanet(3)  # from scratch, no weights
frozen = {v.path: keras.ops.convert_to_numpy(v).copy() for v in model.weights if "bn" in v.path}
head = keras.ops.convert_to_numpy(model.get_layer("classification_submodel").get_layer("pyramid_classification").bias)
assert np.allclose(head, -np.log(99.0), atol=1e-6)  # prior probability 0.01
assert not any(v.trainable for v in model.weights if "bn" in v.path)
model.compile(optimizer=keras.optimizers.SGD(0.01), loss=["mse", "binary_crossentropy"])
n = num_anchors_for_shape((64, 96))
x = np.random.default_rng(0).uniform(-100, 100, (2, 64, 96, 3)).astype("float32")
y = [np.zeros((2, n, 4), "float32"), np.zeros((2, n, 3), "float32")]
loss = model.train_on_batch(x, y)
assert np.all(np.isfinite(loss))
after = keras.ops.convert_to_numpy(model.get_layer("classification_submodel").get_layer("pyramid_classification").bias)
assert not np.array_equal(after, head)  # the heads learn
for v in model.weights:  # frozen BatchNormalization: statistics and affine weights unchanged
    if v.path in frozen:
        assert np.array_equal(keras.ops.convert_to_numpy(v), frozen[v.path]), v.path
boxes, scores, labels = retinanet_bbox(model).predict_on_batch(x[:1])
assert tuple(boxes.shape) == (1, 300, 4) and tuple(labels.shape) == (1, 300)
"""


@pytest.mark.parametrize("backend", BACKENDS)
def test_from_scratch_model_trains_a_step_and_predicts(backend):
    if backend == keras.backend.backend():
        exec(compile(TRAIN_STEP, "train_step", "exec"), {})
        return
    _skip_unless_installed(backend)  # the backend is fixed at import: a subprocess
    result = subprocess.run([sys.executable, "-c", TRAIN_STEP], capture_output=True, text=True,
                            env=_backend_env(backend), cwd=REPO, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]


TORCH_LAYOUT = """
import numpy as np, keras, torch
from keras.src.backend.torch import nn as torch_nn
original = torch_nn._transpose_spatial_inputs
import oid_retinanet.model.retinanet  # installs model/torch_layout.py
patched = torch_nn._transpose_spatial_inputs
assert patched is not original and patched.original is original
x = torch.randn(2, 37, 45, 16)
view = patched(x)
assert view.data_ptr() == x.data_ptr() and view.is_contiguous(memory_format=torch.channels_last)
assert original(x).data_ptr() != x.data_ptr()  # what Keras does: a copy
layers = [keras.layers.Conv2D(8, 3, padding="same"), keras.layers.Conv2D(8, 3, strides=2, padding="same"),
          keras.layers.Conv2D(8, 7, strides=2, padding="valid"), keras.layers.Conv2D(8, 3, dilation_rate=2),
          keras.layers.DepthwiseConv2D(3, padding="same"), keras.layers.MaxPooling2D(3, 2, padding="same"),
          keras.layers.AveragePooling2D(2), keras.layers.Conv2DTranspose(8, 3, strides=2)]
x = keras.ops.convert_to_tensor(np.random.default_rng(0).standard_normal((2, 37, 45, 16)).astype("float32"))
for layer in layers:
    with torch.enable_grad():
        results = []
        for helper in (patched, original):
            torch_nn._transpose_spatial_inputs = helper
            t = x.detach().clone().requires_grad_(True)
            y = layer(t)
            (y * y).sum().backward()
            results.append((y.detach().cpu().numpy(), t.grad.cpu().numpy()))
    torch_nn._transpose_spatial_inputs = patched
    (y1, g1), (y2, g2) = results
    assert y1.shape == y2.shape, layer.name
    np.testing.assert_allclose(y1, y2, rtol=0, atol=1e-5 * max(1.0, np.abs(y2).max()), err_msg=layer.name)
    np.testing.assert_allclose(g1, g2, rtol=0, atol=1e-5 * max(1.0, np.abs(g2).max()), err_msg=layer.name)
"""


def test_torch_convolutions_take_channels_last_views():
    """model/torch_layout.py on the torch backend: the transposed input is a view (no copy), and every 2-D
    convolution and pooling Keras builds on it gives what Keras' own copying helper gives, outputs and
    gradients (float32 rounding: 1e-5 of the largest value; bit-identical in practice on this CPU)."""
    _skip_unless_installed("torch")
    result = subprocess.run([sys.executable, "-c", TORCH_LAYOUT], capture_output=True, text=True,
                            env=_backend_env("torch"), cwd=REPO, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]


def test_bfloat16_option_within_its_measured_deviation(h5_files):
    """dtype_policy='mixed_bfloat16' (about 2x faster on this CPU): the same weights, convs in bfloat16.
    bfloat16 keeps 8 significant bits, so the outputs move: measured at 128x160, regression 0.027 and scores
    0.0032 at most; accepted: 0.06 and 0.01. Decoding and filtering stay float32."""
    model = load_keras_retinanet(h5_files["inference"], dtype_policy="mixed_bfloat16")
    assert keras.config.dtype_policy().name == "float32"  # the global policy is restored
    probe = keras.Model(model.input, [model.get_layer("regression").output,
                                      model.get_layer("classification").output] + list(model.outputs))
    x = preprocess_image(read_image_bgr(_image("img_small_128x160")))
    reg, cls, boxes, scores, labels = (keras.ops.convert_to_numpy(v)[0] for v in probe(x[None]))
    recorded = np.load(_fx("intermediates_128x160.npz"))
    assert _max_dev(reg, recorded["regression"]) <= 0.06
    assert _max_dev(cls, recorded["classification"]) <= 0.01
    assert boxes.dtype == scores.dtype == np.float32 and labels.dtype == np.int32
    assert abs(int((scores > -1).sum()) - int((recorded["det_scores"] > -1).sum())) <= 10


# --------------------------------------------------------------------------- Keras 3 format, converting
def test_keras_format_round_trip(inference_model, small_outputs, tmp_path):
    path = tmp_path / "model.keras"
    inference_model.save(path)
    again = load_model(path)
    x = preprocess_image(read_image_bgr(_image("img_small_128x160")))
    boxes, scores, labels = (np.asarray(v)[0] for v in again.predict_on_batch(x[None]))
    np.testing.assert_array_equal(labels, small_outputs["det_labels"])
    np.testing.assert_allclose(boxes, small_outputs["det_boxes"], atol=1e-5, rtol=0)
    layer = again.get_layer("filtered_detections")
    assert (layer.score_threshold, layer.nms_threshold, layer.max_detections) == (0.05, 0.5, 300)
    training = load_model(path, inference=False)
    assert [o.shape[-1] for o in training.outputs] == [4, 7]


def _run_script(*args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run([sys.executable, str(REPO / "retinanet_training_level_1" / "convert_retinanet_model.py"),
                           *args], capture_output=True, text=True, env=env, cwd=REPO, timeout=600)


def test_convert_script(h5_files, small_outputs, tmp_path):
    out = tmp_path / "converted.keras"
    result = _run_script(str(h5_files["train"]), str(out))
    assert result.returncode == 0, result.stderr
    model = load_model(out)
    x = preprocess_image(read_image_bgr(_image("img_small_128x160")))
    boxes, scores, labels = (np.asarray(v)[0] for v in model.predict_on_batch(x[None]))
    recorded = np.load(_fx("intermediates_128x160.npz"))
    _assert_same_detections(boxes, scores, labels, recorded["det_boxes"], recorded["det_scores"],
                            recorded["det_labels"])
    # ours in, class-agnostic out
    out2 = tmp_path / "agnostic.keras"
    result = _run_script(str(out), str(out2), "--no-class-specific-filter")
    assert result.returncode == 0, result.stderr
    assert load_model(out2).get_layer("filtered_detections").class_specific_filter is False
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"junk")
    result = _run_script(str(bad), str(tmp_path / "x.keras"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "bad.h5" in result.stderr
    assert not (tmp_path / "x.keras").exists()


# ---------------------------------------------------------------------------------------- slow: 600/800
@pytest.mark.slow
def test_outputs_min600_max800_wide_image(probe):
    stem = "img_c_wide_150x600"
    recorded = np.load(_fx("outputs_min600_max800.npz"))
    x, _ = resize_image(preprocess_image(read_image_bgr(_image(stem))), 600, 800)
    out = probe(x)
    np.testing.assert_allclose(out["regression"][::16], recorded[f"{stem}__regression_sub16"], **FEATURE_TOL)
    np.testing.assert_allclose(out["classification"][::16], recorded[f"{stem}__classification_sub16"],
                               **FEATURE_TOL)
    # float16 copies of the full outputs: their own rounding is up to 1e-3 at |x| ~ 2
    np.testing.assert_allclose(out["regression"], recorded[f"{stem}__regression_f16"].astype(np.float32),
                               atol=2e-3, rtol=0)
    np.testing.assert_allclose(out["classification"], recorded[f"{stem}__classification_f16"].astype(np.float32),
                               atol=2e-3, rtol=0)
    _assert_same_detections(out["det_boxes"], out["det_scores"], out["det_labels"], recorded[f"{stem}__boxes"],
                            recorded[f"{stem}__scores"], recorded[f"{stem}__labels"])


if __name__ == "__main__":  # the `outputs` fixture runs this file under another backend: model file in, .npz out
    np.savez(sys.argv[2], **outputs_of(load_keras_retinanet(sys.argv[1])))
