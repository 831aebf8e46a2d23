"""The paper's U-Net: convolutional blocks of plane-wise 3×3 convolutions, as a Keras functional model.

Shape contract: input (B, X, Y, Z, C) with X, Y, Z any multiple of 2**depth (use
`model.inference.predict_volume` for other sizes, which pads and crops); output the same
spatial size with `num_classes` softmax channels, (B, X, Y, Z, num_classes).
"""

from __future__ import annotations

import keras
from keras import layers

from model.config import BLOCKS

# The factorized block: four 2D convolutions, one per orthogonal plane, the first plane again last.
FACTORIZED_KERNELS = {"xy": (3, 3, 1), "xz": (3, 1, 3), "yz": (1, 3, 3), "xy2": (3, 3, 1)}
FULL_KERNELS = {"full1": (3, 3, 3), "full2": (3, 3, 3), "full3": (3, 3, 3), "full4": (3, 3, 3)}


def conv_block(x, filters: int, *, block: str, dropout: float, l2: float, name: str):
    """Four convolutions, each followed by ReLU and dropout: (B, X, Y, Z, *) -> (B, X, Y, Z, filters).

    `block="factorized"` uses kernels 3×3×1, 3×1×3, 1×3×3, 3×3×1 (the paper's); `"full"` uses four
    3×3×3 kernels, to measure what the factorization saves.
    """
    kernels = FACTORIZED_KERNELS if block == "factorized" else FULL_KERNELS
    for plane, kernel in kernels.items():
        x = layers.Conv3D(
            filters,
            kernel,
            padding="same",
            activation="relu",
            kernel_regularizer=keras.regularizers.L2(l2) if l2 > 0 else None,
            name=f"{name}_conv_{plane}",
        )(x)
        if dropout > 0:
            x = layers.Dropout(dropout, name=f"{name}_drop_{plane}")(x)
    return x


def build_unet(
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
    """Build the paper's U-Net.

    Args:
        in_channels: image channels (modalities).
        num_classes: output classes including the background.
        channels: filters of the first block; each level down doubles them.
        depth: number of 2×2×2 max-pool steps (input sizes must be multiples of 2**depth).
        keep_prob: dropout keep probability after every convolution and before the output layer.
        l2: L2 weight on every convolution kernel (Keras's L2: weight · Σ w²).
        block: "factorized" (the paper's plane-wise block) or "full" (3×3×3 kernels).
        spatial_shape: fix the input size (X, Y, Z); None (default) accepts any size.

    Returns:
        An uncompiled `keras.Model` mapping (B, X, Y, Z, in_channels) to softmax
        probabilities (B, X, Y, Z, num_classes).
    """
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}.")
    if depth < 1 or channels < 1 or num_classes < 2 or in_channels < 1:
        raise ValueError(
            f"depth ({depth}), channels ({channels}), in_channels ({in_channels}) must be ≥ 1 and num_classes ({num_classes}) ≥ 2."
        )
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}.")
    dropout = 1.0 - keep_prob
    regularizer = keras.regularizers.L2(l2) if l2 > 0 else None

    inputs = keras.Input(shape=(*(spatial_shape or (None, None, None)), in_channels), name="image")
    x = inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, channels * 2**level, block=block, dropout=dropout, l2=l2, name=f"enc{level + 1}")
        skips.append(x)
        x = layers.MaxPooling3D(pool_size=2, name=f"enc{level + 1}_pool")(x)
    x = conv_block(x, channels * 2**depth, block=block, dropout=dropout, l2=l2, name="bottom")
    for level in reversed(range(depth)):
        filters = channels * 2**level
        # The paper's upconvolution: a 1×1×1 kernel with stride 2.
        x = layers.Conv3DTranspose(
            filters, 1, strides=2, kernel_regularizer=regularizer, name=f"dec{level + 1}_up"
        )(x)
        x = layers.Concatenate(name=f"dec{level + 1}_concat")([x, skips[level]])
        x = conv_block(x, filters, block=block, dropout=dropout, l2=l2, name=f"dec{level + 1}")
    # The last block ends in dropout, which is the paper's "dropout right before the output
    # layer"; a second one there would drop twice.
    x = layers.Conv3D(num_classes, 1, kernel_regularizer=regularizer, name="out_conv")(x)
    # Softmax in float32 so the IoU sums stay in float32 under mixed precision too.
    outputs = layers.Softmax(axis=-1, dtype="float32", name="out_softmax")(x)
    return keras.Model(inputs, outputs, name=name)
