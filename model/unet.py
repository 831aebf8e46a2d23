"""The paper's U-Net: convolutional blocks of plane-wise 3×3 convolutions, as a Keras functional model.

Shape contract: input (B, X, Y, Z, C) with X, Y, Z any multiple of 2**depth (use
`model.inference.predict_volume` for other sizes, which pads and crops); output the same
spatial size with `num_classes` softmax channels, (B, X, Y, Z, num_classes).

Inside the network volumes are held as (B, Z, X, Y, C), and every plane convolution of the
factorized block runs as a 2D convolution over slices (`SliceConv3D`): the two xy-plane ones over
the B·Z slices, a reshape that moves no memory; the xz and yz ones over the B·Y and B·X slices,
after a transpose. This is faster on CPUs than TensorFlow's 3D convolution with flat kernels and
changes only the order of the arithmetic: the function is that of plain Conv3D layers in (x, y, z)
order, which tests/test_unet.py checks.
"""

from __future__ import annotations

import keras
from keras import layers, ops

from model.config import BLOCKS
from model.dropout import BitsDropout
from model.regularizers import L2

# (B, X, Y, Z, C) <-> (B, Z, X, Y, C), as keras.layers.Permute's 1-based dimension orders.
TO_ZXY = (3, 1, 2, 4)
TO_XYZ = (2, 3, 1, 4)

# The factorized block: four 2D convolutions, one per orthogonal plane, the first plane again last.
# Kernel sizes in (x, y, z): "xy" is 3×3 in x and y and 1 in z.
FACTORIZED_KERNELS = {"xy": (3, 3, 1), "xz": (3, 1, 3), "yz": (1, 3, 3), "xy2": (3, 3, 1)}
FULL_KERNELS = {"full1": (3, 3, 3), "full2": (3, 3, 3), "full3": (3, 3, 3), "full4": (3, 3, 3)}


# A kernel flat in spatial axis f (0, 1 or 2) convolves the other two axes independently for each
# index along f: that axis is moved next to the batch (a transpose, except for f = 0) and folded
# into it. These are the permutations of a (B, D1, D2, D3, C) tensor that do it, and their inverses.
TO_SLICES = {0: None, 1: (0, 2, 1, 3, 4), 2: (0, 3, 1, 2, 4)}
FROM_SLICES = {0: None, 1: (0, 2, 1, 3, 4), 2: (0, 2, 3, 1, 4)}


@keras.saving.register_keras_serializable(package="hpsearch")
class SliceConv3D(layers.Conv3D):
    """A Conv3D whose kernel is 1 along one spatial axis, run as a 2D convolution on each slice across that axis.

    Weights, configuration and output are those of the Conv3D it subclasses: input (B, D1, D2, D3, C_in),
    output (B, D1, D2, D3, filters), kernel (k1, k2, k3, C_in, filters) with one of k1, k2, k3 equal to 1.
    A kernel (1, k2, k3) reshapes the input to (B·D1, D2, D3, C_in) without moving memory; (k1, 1, k3)
    and (k1, k2, 1) first transpose the flat axis next to the batch.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if (
            1 not in self.kernel_size
            or self.strides != (1, 1, 1)
            or self.dilation_rate != (1, 1, 1)
            or self.groups != 1
            or self.data_format != "channels_last"
        ):
            raise ValueError(
                f"SliceConv3D needs a kernel of size 1 along one axis, stride 1, no dilation or groups and channels_last; got "
                f"kernel {self.kernel_size}, strides {self.strides}, dilation {self.dilation_rate}, groups {self.groups}, {self.data_format}."
            )
        self.flat_axis = self.kernel_size.index(1)  # the first spatial axis the kernel does not span

    def call(self, inputs):
        if TO_SLICES[self.flat_axis] is not None:
            inputs = ops.transpose(inputs, TO_SLICES[self.flat_axis])
        shape = ops.shape(inputs)
        slices = ops.reshape(inputs, (-1, shape[2], shape[3], shape[4]))
        kernel = ops.squeeze(self.kernel, axis=self.flat_axis)  # (ka, kb, C_in, filters) over the other two axes
        outputs = ops.conv(slices, kernel, strides=1, padding=self.padding, data_format="channels_last")
        # Bias and activation on the 2D result, where TensorFlow can fuse them into the convolution.
        if self.use_bias:
            outputs = ops.add(outputs, self.bias)
        if self.activation is not None:
            outputs = self.activation(outputs)
        outputs = ops.reshape(outputs, (shape[0], shape[1], shape[2], shape[3], self.filters))
        if FROM_SLICES[self.flat_axis] is not None:
            outputs = ops.transpose(outputs, FROM_SLICES[self.flat_axis])
        return outputs


def conv_block(x, filters: int, *, block: str, dropout: float, l2: float, name: str, runtime: bool = False):
    """Four convolutions, each followed by ReLU and dropout: (B, Z, X, Y, *) -> (B, Z, X, Y, filters).

    `block="factorized"` uses the paper's kernels 3×3×1, 3×1×3, 1×3×3, 3×3×1 in (x, y, z), run as
    SliceConv3D; `"full"` uses four 3×3×3 Conv3D kernels, the unfactorized alternative. Kernel sizes
    are stored in the network's (z, x, y) order.
    """
    kernels = FACTORIZED_KERNELS if block == "factorized" else FULL_KERNELS
    for plane, (kx, ky, kz) in kernels.items():
        kernel = (kz, kx, ky)
        conv = SliceConv3D if 1 in kernel else layers.Conv3D
        x = conv(
            filters,
            kernel,
            padding="same",
            activation="relu",
            kernel_regularizer=L2(l2) if l2 > 0 else None,
            name=f"{name}_conv_{plane}",
        )(x)
        if dropout > 0:
            x = BitsDropout(dropout, runtime=runtime, name=f"{name}_drop_{plane}")(x)
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
    runtime_dropout: bool = False,
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
        runtime_dropout: hold the dropout rate as a weight of each dropout layer (BitsDropout.set_rate
            changes it without tracing the training step again), not as a constant.

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
    regularizer = L2(l2) if l2 > 0 else None

    inputs = keras.Input(shape=(*(spatial_shape or (None, None, None)), in_channels), name="image")
    x = layers.Permute(TO_ZXY, name="to_zxy")(inputs)
    skips = []
    for level in range(depth):
        x = conv_block(x, channels * 2**level, block=block, dropout=dropout, l2=l2, name=f"enc{level + 1}", runtime=runtime_dropout)
        skips.append(x)
        x = layers.MaxPooling3D(pool_size=2, name=f"enc{level + 1}_pool")(x)
    x = conv_block(x, channels * 2**depth, block=block, dropout=dropout, l2=l2, name="bottom", runtime=runtime_dropout)
    for level in reversed(range(depth)):
        filters = channels * 2**level
        # The paper's upconvolution: a 1×1×1 kernel with stride 2.
        x = layers.Conv3DTranspose(
            filters, 1, strides=2, kernel_regularizer=regularizer, name=f"dec{level + 1}_up"
        )(x)
        x = layers.Concatenate(name=f"dec{level + 1}_concat")([x, skips[level]])
        x = conv_block(x, filters, block=block, dropout=dropout, l2=l2, name=f"dec{level + 1}", runtime=runtime_dropout)
    # The last block ends in dropout, which is the paper's "dropout right before the output
    # layer"; a second one there would drop twice.
    x = layers.Conv3D(num_classes, 1, kernel_regularizer=regularizer, name="out_conv")(x)
    x = layers.Permute(TO_XYZ, name="to_xyz")(x)
    # Softmax in float32 so the IoU sums stay in float32 under mixed precision too.
    outputs = layers.Softmax(axis=-1, dtype="float32", name="out_softmax")(x)
    return keras.Model(inputs, outputs, name=name)
