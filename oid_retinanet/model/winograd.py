"""Winograd F(4x4, 3x3) and F(2x2, 3x3): a 3x3 stride-1 convolution with 4x (2.25x) fewer multiplications.

A 3x3 convolution computed tile by tile (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016). For an output tile of side m (TILE, 4 or 2) each (m+2)x(m+2) input tile d becomes B^T d B, the kernel g
becomes G g G^T, the (m+2)^2 per-position products are summed over input channels by one batched matmul
((m+2)^2 x [tiles, C] @ [C, K]), and A^T M A turns each product tile into an m x m output tile: (m+2)^2 / m^2
multiplications per output (2.25 for m = 4, 4 for m = 2) instead of 9. Each 2-D transform is one matmul of the
Kronecker product of its matrix with itself along the leading axis of its operand (a reshape: no transposed copy
and no intermediate of the large product tensor), written with `keras.ops` only, so the layer runs and trains on
every backend.

The matrices are the Toom-Cook ones for interpolation points (0, -1, 1, 1/2, -2, inf) for m = 4 (the points
Barabasz et al., "Error analysis and improving the accuracy of Winograd convolution", 2020, found the most
accurate: about 3x less error than Lavin's (0, +-1, +-2)) and (0, 1, -1, inf) for m = 2. Measured against a float64
direct convolution, relative to the output's largest magnitude (256 input channels): F(2x2, 3x3) ~5e-7, below the
direct float32 convolution's ~1.3e-6; F(4x4, 3x3) ~4e-6 (root mean square 3x the direct convolution's). On the
443-class benchmark model the detections are keras-retinanet's (the same 300 labels, boxes and scores within 2e-6).

Where it pays: the transforms cost memory traffic in proportion to C + K, the matmul saves arithmetic in
proportion to C * K, so it wins from about 128 input channels and filters on (MIN_CHANNELS; `conv3x3` chooses). On
this project's 2-core CPU with TensorFlow F(4x4, 3x3) runs a 256 -> 256 conv at 96x128 1.8x faster than the direct
convolution and RetinaNet's 443-class classification conv (256 -> 3987) 2.5x faster; 64 -> 64 at 192x256 is
slower. The transforms' dozens of small ops and the kernel transform also cost a fixed time per call, so each
layer chooses per call: Winograd from MIN_PIXELS input positions on (RetinaNet at 768x1024: all but P6 and P7;
at 128x160: none), the direct convolution below and in training, whose gradients through the transforms cost more
than they save. Tiles are gathered with unit-stride slices of blocks of `tile` rows, not with strided slices, which
cost TensorFlow 9x more there. In RetinaNet (`retinanet(..., winograd=4)`, the CPU default) that makes the whole
model 1.4-1.9x faster at 768x1024 (bench/bench_model.py). On torch (eager) the gain is smaller: its convolutions
are no longer the bottleneck there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import numpy as np
from keras import ops

# (B^T, G, A^T) for the output tile sides; B^T (m+2, m+2), G (m+2, 3), A^T (m, m+2).
MATRICES = {
    2: (np.array([[1, 0, -1, 0],
                  [0, 1, 1, 0],
                  [0, -1, 1, 0],
                  [0, 1, 0, -1]]),
        np.array([[1, 0, 0],
                  [1 / 2, 1 / 2, 1 / 2],
                  [1 / 2, -1 / 2, 1 / 2],
                  [0, 0, 1]]),
        np.array([[1, 1, 1, 0],
                  [0, 1, -1, -1]])),
    4: (np.array([[1, -3 / 2, -2, 3 / 2, 1, 0],
                  [0, 1, -5 / 2, 1 / 2, 1, 0],
                  [0, -1, 1 / 2, 5 / 2, 1, 0],
                  [0, -2, -1, 2, 1, 0],
                  [0, 1 / 2, -1, -1 / 2, 1, 0],
                  [0, 1, -3 / 2, -2, 3 / 2, 1]]),
        np.array([[1, 0, 0],
                  [-1 / 3, 1 / 3, -1 / 3],
                  [1 / 3, 1 / 3, 1 / 3],
                  [-16 / 15, -8 / 15, -4 / 15],
                  [1 / 15, -2 / 15, 4 / 15],
                  [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0],
                  [0, -1, 1, 1 / 2, -2, 0],
                  [0, 1, 1, 1 / 4, 4, 0],
                  [0, -1, 1, 1 / 8, -8, 1]])),
}
TILE = 4  # the default output tile side
# RetinaNet's 3x3 convolutions use Winograd from this many input channels and filters on; below it the transforms
# cost more than the arithmetic saved (on this project's CPU: 64 -> 64 at 192x256 slower, 128 -> 128 at 96x128
# faster than the direct convolution; see the module doc).
MIN_CHANNELS = 128
# ... and from this many input positions (height x width) on: below it the dozens of small transform ops and the
# kernel transform cost more than the arithmetic saved (measured on this project's CPU with TensorFlow, F(4x4)
# against the direct convolution: 128 -> 128 channels 0.84x at 16x20 and 1.08x at 24x32; 256 -> 256 0.84x and 1.06x;
# 512 -> 512 0.88x and 1.39x; 256 -> 3987 0.91x at 12x16 and 1.19x at 16x20). At 768x1024 that leaves P6 and P7
# (12x16, 6x8) to the direct convolution; at 128x160 the whole model.
MIN_PIXELS = 512


def _leading_two(matrix: np.ndarray, x):
    """matrix (p, q) applied along both of x's first two axes: (q, q, ...) -> (p, p, ...).

    One matmul with the Kronecker product (p^2, q^2): it reads x and writes the result once, where applying the
    matrix along one axis and then the other would also write and read an intermediate as large."""
    p, q = matrix.shape
    kron = ops.convert_to_tensor(np.kron(matrix, matrix).astype(np.float32), dtype=x.dtype)
    rest = ops.shape(x)[2:]
    return ops.reshape(ops.matmul(kron, ops.reshape(x, (q * q, -1))), (p, p, *rest))


def transform_kernel(kernel, tile: int = TILE):
    """(3, 3, C, K) kernel -> ((tile+2)^2, C, K): G g G^T, flattened in (row, column) order."""
    window = tile + 2
    return ops.reshape(_leading_two(MATRICES[tile][1], kernel), (window * window, kernel.shape[2], kernel.shape[3]))


def conv3x3_winograd(x, kernel, padding: str = "same", tile: int = TILE):
    """3x3 stride-1 convolution of x (B, H, W, C) with kernel (3, 3, C, K), 'same' or 'valid', no bias."""
    if tile not in MATRICES:
        raise ValueError(f"Winograd tile side must be one of {sorted(MATRICES)}, got {tile}")
    b_t, _, a_t = MATRICES[tile]
    window = tile + 2
    if padding == "same":
        x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    shape = ops.shape(x)  # the spatial sizes may be symbolic (a model traced for any image size)
    out_h, out_w = shape[1] - 2, shape[2] - 2
    tiles_h, tiles_w = (out_h + tile - 1) // tile, (out_w + tile - 1) // tile
    # Zero rows/columns below and right make every tile whole (their outputs are cropped at the end) and the sides
    # tile * (tiles + 1): the tiles are then gathered with unit-stride slices of blocks of `tile` rows (columns),
    # several times faster on TensorFlow than slicing with a stride.
    x = ops.pad(x, [[0, 0], [0, tile * (tiles_h + 1) - out_h - 2], [0, tile * (tiles_w + 1) - out_w - 2], [0, 0]])
    channels = x.shape[-1]
    blocks = ops.reshape(x, (-1, tiles_h + 1, tile, tile * (tiles_w + 1), channels))
    rows = ops.stack([blocks[:, i // tile:i // tile + tiles_h, i % tile] for i in range(window)])  # (row, B, th, W', C)
    blocks = ops.reshape(rows, (window, -1, tiles_h, tiles_w + 1, tile, channels))
    tiles = ops.stack([blocks[:, :, :, j // tile:j // tile + tiles_w, j % tile] for j in range(window)], axis=1)
    v = _leading_two(b_t, tiles)  # B^T d B: (row, column, B, th, tw, C)
    filters = kernel.shape[-1]
    m = ops.matmul(ops.reshape(v, (window * window, -1, channels)), transform_kernel(kernel, tile))
    y = _leading_two(a_t, ops.reshape(m, (window, window, -1, tiles_h, tiles_w, filters)))  # A^T M A
    y = ops.transpose(y, (2, 3, 0, 4, 1, 5))  # (B, th, row, tw, column, K)
    y = ops.reshape(y, (-1, tile * tiles_h, tile * tiles_w, filters))
    return y[:, :out_h, :out_w]


def is_eligible(conv: keras.layers.Conv2D) -> bool:
    """A 3x3 stride-1 undilated ungrouped channels_last Conv2D ('same' or 'valid'): what Winograd convolution does."""
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.strides) == (1, 1)
            and tuple(conv.dilation_rate) == (1, 1) and conv.groups == 1
            and conv.data_format == "channels_last" and conv.padding in ("same", "valid"))


def default_tile() -> int:
    """TILE where the Keras backend computes on a CPU; 0 (the direct convolution) where it has a GPU, whose
    convolution libraries choose their own algorithms (Winograd among them) and where these keras.ops transforms
    have not been measured to pay."""
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        gpu = bool(tf.config.list_physical_devices("GPU"))
    elif backend == "torch":
        import torch

        gpu = torch.cuda.is_available()
    elif backend == "jax":
        import jax

        gpu = jax.default_backend() != "cpu"
    else:
        gpu = False
    return 0 if gpu else TILE


def conv3x3(filters: int, channels: int, winograd: int, **kwargs) -> keras.layers.Conv2D:
    """A 3x3 stride-1 convolution of `channels` -> `filters` (kwargs as Conv2D's): WinogradConv2D F(m x m, 3x3),
    m = winograd, when winograd is not 0 and both counts are at least MIN_CHANNELS; Keras' Conv2D otherwise.
    Either has the same variables, so the same weights load into both."""
    if winograd and min(channels, filters) >= MIN_CHANNELS:
        return WinogradConv2D(filters, 3, tile=winograd, **kwargs)
    return keras.layers.Conv2D(filters, 3, **kwargs)


@keras.saving.register_keras_serializable(package="oid_retinanet")
class WinogradConv2D(keras.layers.Conv2D):
    """Conv2D (same variables, weights files and results within float32 rounding) computed with Winograd
    F(tile x tile, 3x3), `tile` 4 (the default) or 2, on inputs of at least `min_pixels` positions (MIN_PIXELS).

    Keras' direct convolution on smaller inputs, in training (`training=True`: the gradients of the transforms
    cost more than the direct convolution's on this project's CPU, 0.4-0.9x at 128 and 256 channels) and under a
    mixed-precision policy (bfloat16, float16: the transforms' rounding would add to its own). Where the sides are
    only known when it runs (a TensorFlow graph traced for any image size) it chooses then, with `ops.cond`."""

    def __init__(self, *args, tile: int = TILE, min_pixels: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        if tile not in MATRICES:
            raise ValueError(f"{self.name}: Winograd tile side must be one of {sorted(MATRICES)}, got {tile}")
        self.tile = tile
        self.min_pixels = MIN_PIXELS if min_pixels is None else int(min_pixels)
        if not is_eligible(self):
            raise ValueError(f"{self.name}: Winograd F({tile}x{tile}, 3x3) needs a 3x3 kernel, stride 1, no dilation, "
                             f"one group and channels_last; got kernel_size={self.kernel_size}, "
                             f"strides={self.strides}, dilation_rate={self.dilation_rate}, groups={self.groups}, "
                             f"data_format={self.data_format}, padding={self.padding}")

    direct_only = False  # set by `direct_convolutions`

    def call(self, inputs, training=None):
        direct = super().call
        if training or self.compute_dtype != "float32" or self.direct_only:
            return direct(inputs)
        height, width = inputs.shape[1:3]
        if height is not None and width is not None:  # eager, JAX and torch, a graph traced for this size
            return self._winograd(inputs) if height * width >= self.min_pixels else direct(inputs)
        shape = ops.shape(inputs)
        return ops.cond(shape[1] * shape[2] >= self.min_pixels, lambda: self._winograd(inputs), lambda: direct(inputs))

    def _winograd(self, inputs):
        y = conv3x3_winograd(inputs, ops.cast(self.kernel, inputs.dtype), self.padding, self.tile)
        if self.use_bias:
            y = y + ops.cast(self.bias, y.dtype)
        return self.activation(y) if self.activation is not None else y

    def get_config(self):
        return {**super().get_config(), "tile": self.tile, "min_pixels": self.min_pixels}


@contextlib.contextmanager
def direct_convolutions(model: keras.Model) -> Iterator[int]:
    """Inside, every WinogradConv2D of `model` (nested models included) computes the direct convolution: for an
    exporter that cannot convert the size test (`ops.cond`, e.g. tf2onnx). Yields how many layers it switched."""
    layers = [layer for layer in _all_layers(model) if isinstance(layer, WinogradConv2D)]
    for layer in layers:
        layer.direct_only = True
    try:
        yield len(layers)
    finally:
        for layer in layers:
            layer.direct_only = False


def _all_layers(layer) -> Iterator:
    yield layer
    for inner in getattr(layer, "layers", ()):
        yield from _all_layers(inner)
