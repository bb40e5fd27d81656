"""Image reading and preprocessing exactly as keras-retinanet does it, for training and inference alike.

The order matters: read (BGR, uint8) -> caffe preprocessing (float32, mean subtracted, no scaling) -> resize
(`resize_image`). Resizing the uint8 image first and subtracting afterwards differs by up to 0.74.

- Reading is PIL's `Image.open(path).convert('RGB')`, then channels reversed to BGR: grayscale gives three equal
  channels, RGBA drops alpha (no compositing), CMYK goes through PIL's conversion, palette images are
  expanded. 16-bit images ('I;16', 'I') are clipped to 255 by that conversion, as keras-retinanet read them;
  `sixteen_bit="scale"` maps them to 8 bits by their top byte instead. EXIF orientation is not applied.
- Caffe mode subtracts (103.939, 116.779, 123.68) from B, G, R. keras-retinanet subtracts a float64 list from a
  float32 array, so each value is rounded once from the float64 difference; we do the same.
- `resize_image`: `scale = min_side / min(h, w)`, reduced to `max_side / max(h, w)` when the long side would
  exceed max_side; then `cv2.resize(img, None, fx=scale, fy=scale)` (bilinear, no antialiasing). OpenCV samples
  with the given fx/fy, not with out_size / in_size, and the output size is round(w * scale), round(h * scale).
"""

from __future__ import annotations

import os

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from oid_retinanet.errors import OIDInputError
from oid_retinanet.model.backbones import CAFFE_MEAN_BGR, KERAS_RETINANET_SIDES

MIN_SIDE, MAX_SIDE = KERAS_RETINANET_SIDES
SIXTEEN_BIT_MODES = ("clip", "scale")


def read_image_bgr(path: str | os.PathLike, sixteen_bit: str = "clip") -> np.ndarray:
    """Read an image file as (H, W, 3) uint8 BGR, the way keras-retinanet's `read_image_bgr` does.

    sixteen_bit: 'clip' (keras-retinanet: PIL's conversion clips values above 255) or 'scale' (value >> 8).
    Raises OIDInputError naming the file when it is not a readable image.
    """
    if sixteen_bit not in SIXTEEN_BIT_MODES:
        raise ValueError(f"sixteen_bit must be one of {SIXTEEN_BIT_MODES}, got {sixteen_bit!r}")
    try:
        with Image.open(path) as img:
            if sixteen_bit == "scale" and img.mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img).astype(np.int64)
                gray = np.clip(arr >> 8, 0, 255).astype(np.uint8)
                return np.repeat(gray[:, :, None], 3, axis=2)
            return pil_to_bgr(img)
    except FileNotFoundError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise OIDInputError(f"cannot read image ({exc})", path=os.fspath(path)) from None


def pil_to_bgr(img: Image.Image) -> np.ndarray:
    """(H, W, 3) uint8 BGR of an open PIL image: PIL's RGB conversion (grayscale, palette, RGBA, CMYK; 16-bit
    values above 255 clip), channels reversed, as keras-retinanet's `read_image_bgr`."""
    return np.ascontiguousarray(np.asarray(img.convert("RGB"))[:, :, ::-1])


PREPROCESS_BLOCK = 1 << 16  # pixels per block of the mean subtraction (1.5 MB of float64)


def preprocess_image(x: np.ndarray, mode: str = "caffe") -> np.ndarray:
    """float32 network input from a BGR image: 'caffe' subtracts the ImageNet BGR mean, 'tf' maps to [-1, 1]."""
    x = np.array(x, dtype=np.float32, order="C")
    if mode == "caffe":
        # each value rounded once from the float64 difference, as keras-retinanet, in blocks of pixels: a
        # whole-image float64 copy would take 0.9 GB for a 36-megapixel upload
        mean = np.asarray(CAFFE_MEAN_BGR, dtype=np.float64)
        pixels = x.reshape(-1, x.shape[-1])
        for start in range(0, len(pixels), PREPROCESS_BLOCK):
            block = pixels[start:start + PREPROCESS_BLOCK]
            block[...] = block - mean
        return x
    if mode == "tf":
        x /= np.float32(127.5)
        x -= np.float32(1.0)
        return x
    raise ValueError(f"unknown preprocessing mode {mode!r}: expected 'caffe' or 'tf'")


def compute_resize_scale(image_shape, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE) -> float:
    """keras-retinanet's scale: the short side to min_side, unless the long side would then exceed max_side."""
    rows, cols = int(image_shape[0]), int(image_shape[1])
    scale = min_side / min(rows, cols)
    if max(rows, cols) * scale > max_side:
        scale = max_side / max(rows, cols)
    return scale


def resize_image(img: np.ndarray, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE) -> tuple[np.ndarray, float]:
    """Resize as keras-retinanet does (`cv2.resize` with fx = fy = scale, bilinear); returns (image, scale).

    Detections on the resized image divided by `scale` are in pixels of the original.
    """
    scale = compute_resize_scale(img.shape, min_side=min_side, max_side=max_side)
    return cv2.resize(img, None, fx=scale, fy=scale), scale


def resized_shape(image_shape, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE) -> tuple[int, int]:
    """(H, W) that `resize_image` gives for an image of `image_shape`: round(h * scale), round(w * scale)."""
    scale = compute_resize_scale(image_shape, min_side=min_side, max_side=max_side)
    return int(round(image_shape[0] * scale)), int(round(image_shape[1] * scale))


def prepare_image(image: str | os.PathLike | np.ndarray, min_side: int = MIN_SIDE, max_side: int = MAX_SIDE,
                  mode: str = "caffe") -> tuple[np.ndarray, float]:
    """Path or BGR uint8 array -> (float32 network input, scale): read, preprocess, then resize."""
    if not isinstance(image, np.ndarray):
        image = read_image_bgr(image)
    return resize_image(preprocess_image(image, mode=mode), min_side=min_side, max_side=max_side)
