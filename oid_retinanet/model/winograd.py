"""Winograd F(2x2, 3x3) convolution: the same 3x3 stride-1 convolution with 2.25x fewer multiplications.

A 3x3 convolution computed tile by tile (Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks",
2016): each 4x4 input tile d becomes B^T d B (16 values per channel), the kernel g becomes G g G^T, the 16
per-position products are summed over input channels by one batched matmul (16 x [tiles, C] @ [C, K]), and
A^T m A turns each 4x4 product tile into a 2x2 output tile: 16 multiply-adds per 4 outputs instead of 9 per
output. The transforms are small matrix products over the tile axes (`tensordot` with the 4x4 and 2x4
matrices below), written with `keras.ops` only, so the layer runs and trains on every backend.

Where it pays: the transforms cost memory traffic in proportion to C + K, the matmul saves arithmetic in
proportion to C * K, so it wins on convolutions with many output filters. In RetinaNet that is the last
classification conv with 443 or 500 classes (256 -> 9 * classes filters, about half of the model's
arithmetic): on this project's 2-core CPU (TensorFlow) it runs 1.5-1.8x faster there, and slower than the direct
convolution on the 256 -> 256 convs (bench/bench_model.py measures the model). Its rounding error is smaller
than the direct convolution's (the transforms' coefficients are 0, +-1 and 1/2, exact in float32; measured
~7e-7 vs ~2.5e-6 of the output's largest magnitude against a float64 reference): same results, less work.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

B_T = np.array([[1, 0, -1, 0],
                [0, 1, 1, 0],
                [0, -1, 1, 0],
                [0, 1, 0, -1]], dtype=np.float32)
G = np.array([[1, 0, 0],
              [0.5, 0.5, 0.5],
              [0.5, -0.5, 0.5],
              [0, 0, 1]], dtype=np.float32)
A_T = np.array([[1, 1, 1, 0],
                [0, 1, -1, -1]], dtype=np.float32)
TILE = 2  # output tile side
WINDOW = TILE + 2  # input tile side
# The heads use Winograd convolutions from this many output filters on (the classification conv of >= 228
# classes); below it the direct convolution is faster (measured on 96x128x256 inputs, see the module doc).
MIN_FILTERS = 2048


def transform_kernel(kernel):
    """(3, 3, C, K) kernel -> (16, C, K): G g G^T, flattened in the (column, row) order of `conv3x3_winograd`."""
    g = ops.convert_to_tensor(G, dtype=kernel.dtype)
    u = ops.tensordot(g, kernel, axes=[[1], [1]])  # (4 columns, 3 rows, C, K)
    u = ops.tensordot(g, u, axes=[[1], [1]])  # (4 rows, 4 columns, C, K)
    u = ops.transpose(u, (1, 0, 2, 3))
    return ops.reshape(u, (WINDOW * WINDOW, kernel.shape[2], kernel.shape[3]))


def conv3x3_winograd(x, kernel, padding: str = "same"):
    """3x3 stride-1 convolution of x (B, H, W, C) with kernel (3, 3, C, K), 'same' or 'valid', no bias."""
    if padding == "same":
        x = ops.pad(x, [[0, 0], [1, 1], [1, 1], [0, 0]])
    shape = ops.shape(x)  # the spatial sizes may be symbolic (a model traced for any image size)
    out_h, out_w = shape[1] - 2, shape[2] - 2
    tiles_h, tiles_w = (out_h + 1) // TILE, (out_w + 1) // TILE
    # An odd output side gets one more row/column of zeros so that every tile is whole; cropped at the end.
    x = ops.pad(x, [[0, 0], [0, out_h % TILE], [0, out_w % TILE], [0, 0]])
    b_t = ops.convert_to_tensor(B_T, dtype=x.dtype)
    a_t = ops.convert_to_tensor(A_T, dtype=x.dtype)
    rows = ops.stack([x[:, i:i + TILE * tiles_h:TILE] for i in range(WINDOW)])  # (4, B, th, W', C)
    rows = ops.tensordot(b_t, rows, axes=1)
    tiles = ops.stack([rows[:, :, :, j:j + TILE * tiles_w:TILE] for j in range(WINDOW)], axis=1)  # (4, 4, B, th, tw, C)
    v = ops.tensordot(b_t, tiles, axes=[[1], [1]])  # (4 columns, 4 rows, B, th, tw, C)
    channels, filters = x.shape[-1], kernel.shape[-1]
    m = ops.matmul(ops.reshape(v, (WINDOW * WINDOW, -1, channels)), transform_kernel(kernel))
    m = ops.reshape(m, (WINDOW, WINDOW, -1, tiles_h, tiles_w, filters))
    y = ops.tensordot(a_t, m, axes=[[1], [1]])  # (2 rows, 4 columns, B, th, tw, K)
    y = ops.tensordot(a_t, y, axes=[[1], [1]])  # (2 columns, 2 rows, B, th, tw, K)
    y = ops.transpose(y, (2, 3, 1, 4, 0, 5))  # (B, th, row, tw, column, K)
    y = ops.reshape(y, (-1, TILE * tiles_h, TILE * tiles_w, filters))
    return y[:, :out_h, :out_w]


def is_eligible(conv: keras.layers.Conv2D) -> bool:
    """A 3x3 stride-1 undilated ungrouped channels_last Conv2D ('same' or 'valid'): what Winograd F(2x2, 3x3) does."""
    return (tuple(conv.kernel_size) == (3, 3) and tuple(conv.strides) == (1, 1)
            and tuple(conv.dilation_rate) == (1, 1) and conv.groups == 1
            and conv.data_format == "channels_last" and conv.padding in ("same", "valid"))


@keras.saving.register_keras_serializable(package="oid_retinanet")
class WinogradConv2D(keras.layers.Conv2D):
    """Conv2D (same variables, config and weights files) computed with Winograd F(2x2, 3x3)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not is_eligible(self):
            raise ValueError(f"{self.name}: Winograd F(2x2, 3x3) needs a 3x3 kernel, stride 1, no dilation, one "
                             f"group and channels_last; got kernel_size={self.kernel_size}, strides={self.strides}, "
                             f"dilation_rate={self.dilation_rate}, groups={self.groups}, "
                             f"data_format={self.data_format}, padding={self.padding}")

    def call(self, inputs):
        y = conv3x3_winograd(inputs, ops.cast(self.kernel, inputs.dtype), self.padding)
        if self.use_bias:
            y = y + ops.cast(self.bias, y.dtype)
        return self.activation(y) if self.activation is not None else y
