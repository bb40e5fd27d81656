"""Keras' torch backend without a copy of every image tensor at each convolution (imported by `retinanet`).

Keras 3's torch backend computes a channels_last convolution or pooling as: permute the (B, H, W, C) input to
(B, C, H, W), `.contiguous()` (a full copy into NCHW memory), call torch, permute back. But the permuted view is
already what torch calls the channels_last memory format, which its oneDNN (CPU) and cuDNN (GPU)
convolutions and poolings take directly, giving a channels_last result whose permutation back is plain
(B, H, W, C) memory again. So for 2-D inputs we keep the view: the same numbers (the convolution kernels are
the same; bit-identical on this project's CPU), ~100 fewer full-size copies per RetinaNet forward pass. On this
project's 2-core CPU it makes the torch backend 1.3-1.4x faster (5.8-6.2 -> 4.4 CPU s for the fixture's ResNet50
at 768x1024, bench/bench_model.py; the copies were 37% of the time).

`apply()` replaces Keras' private helper `keras.src.backend.torch.nn._transpose_spatial_inputs` (Keras is pinned
in requirements.txt); where that helper is missing it changes nothing. Other backends are untouched.
"""

from __future__ import annotations

import logging

import keras

log = logging.getLogger(__name__)


def apply() -> bool:
    """Install the copy-free transposition on the torch backend; returns whether it is installed."""
    if keras.backend.backend() != "torch":
        return False
    try:
        from keras.src.backend.torch import nn as torch_nn
    except ImportError:  # a Keras without that module: leave it as it is
        return False
    original = getattr(torch_nn, "_transpose_spatial_inputs", None)
    if original is None:
        log.debug("keras.src.backend.torch.nn has no _transpose_spatial_inputs: Keras' own layout kept")
        return False
    if getattr(original, "keeps_channels_last", False):
        return True
    import torch

    def transpose_spatial_inputs(inputs):
        """(B, H, W, C) -> a (B, C, H, W) view in channels_last memory (no copy); other ranks as Keras does."""
        if inputs.ndim == 4:
            return torch.permute(inputs, (0, 3, 1, 2))
        return original(inputs)

    transpose_spatial_inputs.keeps_channels_last = True
    transpose_spatial_inputs.original = original
    torch_nn._transpose_spatial_inputs = transpose_spatial_inputs
    return True


apply()
