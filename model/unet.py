"""The paper's U-Net: convolutional blocks of plane-wise 3×3 convolutions, as a Keras functional model.

Shape contract: input (B, X, Y, Z, C) with X, Y, Z any multiple of 2**depth (use
`model.inference.predict_volume` for other sizes, which pads and crops); output the same
spatial size with `num_classes` softmax channels, (B, X, Y, Z, num_classes).

Inside the network volumes are held as (B, Z, X, Y, C). The factorized block's two xy-plane
convolutions then run as 2D convolutions over the (B·Z) slices, a reshape that moves no memory.
On a 2-core CPU that made a training step 19 % faster at 64×64×16 and 2–15 % at 128×128×16 than
flat 3D kernels in (X, Y, Z) order (benchmarks/README.md). It changes only the order of the
arithmetic: the network is the same (`layout="xyz"` builds it the plain way, for comparison).
"""

from __future__ import annotations

import keras
from keras import layers, ops

from model.config import BLOCKS
from model.dropout import BitsDropout
from model.regularizers import L2

# The axis orders a network can hold volumes in: "zxy" (the default; see the module docstring) or
# "xyz", the input's own order with plain Conv3D layers, kept to measure the other against.
LAYOUTS = ("zxy", "xyz")
# (B, X, Y, Z, C) <-> (B, Z, X, Y, C), as keras.layers.Permute's 1-based dimension orders.
TO_ZXY = (3, 1, 2, 4)
TO_XYZ = (2, 3, 1, 4)

# The factorized block: four 2D convolutions, one per orthogonal plane, the first plane again last.
# Kernel sizes in (x, y, z): "xy" is 3×3 in x and y and 1 in z.
FACTORIZED_KERNELS = {"xy": (3, 3, 1), "xz": (3, 1, 3), "yz": (1, 3, 3), "xy2": (3, 3, 1)}
FULL_KERNELS = {"full1": (3, 3, 3), "full2": (3, 3, 3), "full3": (3, 3, 3), "full4": (3, 3, 3)}


@keras.saving.register_keras_serializable(package="hpsearch")
class SliceConv3D(layers.Conv3D):
    """A Conv3D with kernel (1, kh, kw), run as a 2D convolution on each slice of the first spatial axis.

    Weights, configuration and output are those of the Conv3D it subclasses: input (B, D, H, W, C_in),
    output (B, D, H, W, filters), kernel (1, kh, kw, C_in, filters). The input is reshaped to
    (B·D, H, W, C_in), which CPUs convolve faster than a 3D convolution with a flat kernel.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if (
            self.kernel_size[0] != 1
            or self.strides != (1, 1, 1)
            or self.dilation_rate != (1, 1, 1)
            or self.groups != 1
            or self.data_format != "channels_last"
        ):
            raise ValueError(
                f"SliceConv3D needs kernel (1, kh, kw), stride 1, no dilation or groups and channels_last; got "
                f"kernel {self.kernel_size}, strides {self.strides}, dilation {self.dilation_rate}, groups {self.groups}, {self.data_format}."
            )

    def call(self, inputs):
        shape = ops.shape(inputs)
        slices = ops.reshape(inputs, (-1, shape[2], shape[3], shape[4]))
        outputs = ops.conv(slices, self.kernel[0], strides=1, padding=self.padding, data_format="channels_last")
        # Bias and activation on the 2D result, where TensorFlow can fuse them into the convolution.
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        return ops.reshape(outputs, (shape[0], shape[1], shape[2], shape[3], self.filters))


def conv_block(x, filters: int, *, block: str, dropout: float, l2: float, name: str, layout: str = "zxy"):
    """Four convolutions, each followed by ReLU and dropout: (B, *spatial, *) -> (B, *spatial, filters).

    `block="factorized"` uses the paper's kernels 3×3×1, 3×1×3, 1×3×3, 3×3×1 in (x, y, z); `"full"`
    uses four 3×3×3 kernels, to measure what the factorization saves. With `layout="zxy"` the
    spatial axes of `x` are (z, x, y), kernel sizes are stored in that order, and kernels flat in z
    run as SliceConv3D; with "xyz" they are (x, y, z) and every layer is a plain Conv3D.
    """
    kernels = FACTORIZED_KERNELS if block == "factorized" else FULL_KERNELS
    for plane, (kx, ky, kz) in kernels.items():
        kernel = (kz, kx, ky) if layout == "zxy" else (kx, ky, kz)
        conv = SliceConv3D if layout == "zxy" and kz == 1 else layers.Conv3D
        x = conv(
            filters,
            kernel,
            padding="same",
            activation="relu",
            kernel_regularizer=L2(l2) if l2 > 0 else None,
            name=f"{name}_conv_{plane}",
        )(x)
        if dropout > 0:
            # Keras's Dropout with a cheaper mask on TensorFlow (model/dropout.py).
            x = BitsDropout(dropout, name=f"{name}_drop_{plane}")(x)
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
    layout: str = "zxy",
    name: str = "unet",
) -> keras.Model:
    """Build the paper's U-Net.

    Args:
        in_channels: image channels (modalities).
        num_classes: output classes including the background.
        channels: filters of the first block; each level down doubles them.
        depth: number of 2×2×2 max-pool steps (input sizes must be multiples of 2**depth).
        keep_prob: dropout keep probability after every convolution and before the output layer.
        l2: L2 weight on every convolution kernel (weight · Σ w², as Keras's L2; model/regularizers.py).
        block: "factorized" (the paper's plane-wise block) or "full" (3×3×3 kernels).
        spatial_shape: fix the input size (X, Y, Z); None (default) accepts any size.
        layout: the axis order inside the network, "zxy" (default, faster) or "xyz" (plain Conv3D
            layers, the reference it is measured and tested against); the same network either way.

    Returns:
        An uncompiled `keras.Model` mapping (B, X, Y, Z, in_channels) to softmax
        probabilities (B, X, Y, Z, num_classes).
    """
    if block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {block!r}.")
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}.")
    if depth < 1 or channels < 1 or num_classes < 2 or in_channels < 1:
        raise ValueError(
            f"depth ({depth}), channels ({channels}), in_channels ({in_channels}) must be ≥ 1 and num_classes ({num_classes}) ≥ 2."
        )
    if not 0.0 < keep_prob <= 1.0:
        raise ValueError(f"keep_prob must be in (0, 1], got {keep_prob}.")
    dropout = 1.0 - keep_prob
    regularizer = L2(l2) if l2 > 0 else None

    inputs = keras.Input(shape=(*(spatial_shape or (None, None, None)), in_channels), name="image")
    x = layers.Permute(TO_ZXY, name="to_zxy")(inputs) if layout == "zxy" else inputs
    skips = []
    for level in range(depth):
        x = conv_block(x, channels * 2**level, block=block, dropout=dropout, l2=l2, name=f"enc{level + 1}", layout=layout)
        skips.append(x)
        x = layers.MaxPooling3D(pool_size=2, name=f"enc{level + 1}_pool")(x)
    x = conv_block(x, channels * 2**depth, block=block, dropout=dropout, l2=l2, name="bottom", layout=layout)
    for level in reversed(range(depth)):
        filters = channels * 2**level
        # The paper's upconvolution: a 1×1×1 kernel with stride 2.
        x = layers.Conv3DTranspose(
            filters, 1, strides=2, kernel_regularizer=regularizer, name=f"dec{level + 1}_up"
        )(x)
        x = layers.Concatenate(name=f"dec{level + 1}_concat")([x, skips[level]])
        x = conv_block(x, filters, block=block, dropout=dropout, l2=l2, name=f"dec{level + 1}", layout=layout)
    # The last block ends in dropout, which is the paper's "dropout right before the output
    # layer"; a second one there would drop twice.
    x = layers.Conv3D(num_classes, 1, kernel_regularizer=regularizer, name="out_conv")(x)
    if layout == "zxy":
        x = layers.Permute(TO_XYZ, name="to_xyz")(x)
    # Softmax in float32 so the IoU sums stay in float32 under mixed precision too.
    outputs = layers.Softmax(axis=-1, dtype="float32", name="out_softmax")(x)
    return keras.Model(inputs, outputs, name=name)
