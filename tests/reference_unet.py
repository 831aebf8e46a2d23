"""The reference U-Net: model.unet's network with plain Conv3D layers in the input's (x, y, z) order.

A test oracle: model.unet.build_unet holds volumes as (z, x, y) and runs the plane convolutions as
SliceConv3D, which must compute this same function (tests/test_unet.py). The benchmarks time the
product network against it. Layer names, kernel sizes in (x, y, z), regularizers and dropout are
build_unet's, so weights copy across once conv kernels are transposed from (z, x, y, in, out).
"""

from __future__ import annotations

import keras
from keras import layers

from model.dropout import BitsDropout
from model.regularizers import L2
from model.unet import FACTORIZED_KERNELS, FULL_KERNELS


def reference_block(x, filters: int, *, block: str, dropout: float, l2: float, name: str):
    """Four Conv3D + ReLU (+ dropout) layers: (B, X, Y, Z, *) -> (B, X, Y, Z, filters)."""
    kernels = FACTORIZED_KERNELS if block == "factorized" else FULL_KERNELS
    for plane, kernel in kernels.items():
        x = layers.Conv3D(
            filters,
            kernel,
            padding="same",
            activation="relu",
            kernel_regularizer=L2(l2) if l2 > 0 else None,
            name=f"{name}_conv_{plane}",
        )(x)
        if dropout > 0:
            x = BitsDropout(dropout, name=f"{name}_drop_{plane}")(x)
    return x


def build_reference_unet(
    *,
    in_channels: int = 1,
    num_classes: int = 2,
    channels: int = 30,
    depth: int = 3,
    keep_prob: float = 0.85,
    l2: float = 3.0e-4,
    block: str = "factorized",
    spatial_shape: tuple[int, int, int] | None = None,
    name: str = "unet",
) -> keras.Model:
    """build_unet's network (same arguments) with plain Conv3D layers: (B, X, Y, Z, in) -> (B, X, Y, Z, classes)."""
    dropout = 1.0 - keep_prob
    regularizer = L2(l2) if l2 > 0 else None
    inputs = keras.Input(shape=(*(spatial_shape or (None, None, None)), in_channels), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = reference_block(x, channels * 2**level, block=block, dropout=dropout, l2=l2, name=f"enc{level + 1}")
        skips.append(x)
        x = layers.MaxPooling3D(pool_size=2, name=f"enc{level + 1}_pool")(x)
    x = reference_block(x, channels * 2**depth, block=block, dropout=dropout, l2=l2, name="bottom")
    for level in reversed(range(depth)):
        filters = channels * 2**level
        x = layers.Conv3DTranspose(filters, 1, strides=2, kernel_regularizer=regularizer, name=f"dec{level + 1}_up")(x)
        x = layers.Concatenate(name=f"dec{level + 1}_concat")([x, skips[level]])
        x = reference_block(x, filters, block=block, dropout=dropout, l2=l2, name=f"dec{level + 1}")
    x = layers.Conv3D(num_classes, 1, kernel_regularizer=regularizer, name="out_conv")(x)
    outputs = layers.Softmax(axis=-1, dtype="float32", name="out_softmax")(x)
    return keras.Model(inputs, outputs, name=name)
