"""Dropout with a cheaper random mask on TensorFlow: 16 random bits per value, not a float32 uniform.

Keras's Dropout on TensorFlow draws one float32 uniform per value, then compares, casts and
multiplies twice. `BitsDropout` draws 32-bit words and reads each as two 16-bit numbers, so the
generator runs half as often, and keeps or drops with one select. A value is dropped when its 16
bits are below round(rate · 2¹⁶), so the drop probability is that threshold ÷ 2¹⁶: the requested
rate to within 2⁻¹⁷ (keep probability 0.85 becomes 0.850006). Kept values are scaled by 1 ÷ the
exact keep probability, so the expected output equals the input, as with Keras's.

Where TensorFlow has a GPU, and on other backends (JAX), Keras's own dropout runs, since the
cheaper mask pays off on CPUs. The weights and configuration are those of keras.layers.Dropout.
"""

from __future__ import annotations

import functools

import keras
from keras import layers

LEVELS = 2**16  # the values 16 random bits can take


def drop_threshold(rate: float) -> int:
    """16-bit values below this are dropped: round(rate · 2¹⁶)."""
    return round(rate * LEVELS)


@keras.saving.register_keras_serializable(package="hpsearch")
class BitsDropout(layers.Dropout):
    """keras.layers.Dropout, drawing its mask from 16 random bits per value on TensorFlow.

    Input and output (B, ..., C), any float dtype; identity outside training.
    """

    def call(self, inputs, training=False):
        if (
            not training
            or self.rate <= 0
            or self.noise_shape is not None
            or inputs.shape[-1] is None
            or not _tensorflow_on_cpu()
        ):
            return super().call(inputs, training=training)
        return _bits_dropout(inputs, self.rate, self.seed_generator.next())


@functools.cache
def _tensorflow_on_cpu() -> bool:
    """Keras runs on TensorFlow, and TensorFlow has no GPU to place the layer on."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def _bits_dropout(inputs, rate: float, seed):
    import tensorflow as tf

    threshold = drop_threshold(rate)
    if threshold >= LEVELS:
        return tf.zeros_like(inputs)
    channels = inputs.shape[-1]
    # A training step's shapes are known when it is traced: then they are constants, and the trace
    # has fewer operations to build and optimise (28 dropout layers per U-Net).
    shape = inputs.shape.as_list() if inputs.shape.is_fully_defined() else tf.shape(inputs)
    # One 32-bit word per two values of the last axis: bitcast to uint16 adds an axis of 2, which
    # a reshape folds back without copying; only an odd channel count leaves a value to cut off.
    words_shape = _with_last(shape, (channels + 1) // 2)
    # Stateless ops want an int32 seed; Keras keeps its seed state in int64 (as its own dropout does).
    seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
    words = tf.random.stateless_uniform(words_shape, seed=seed, minval=None, maxval=None, dtype=tf.uint32)
    bits = tf.bitcast(words, tf.uint16)  # (..., ceil(C / 2), 2)
    if channels % 2:
        bits = tf.reshape(bits, _with_last(shape, channels + 1))[..., :channels]
    else:
        bits = tf.reshape(bits, shape)
    keep = bits >= tf.constant(threshold, tf.uint16)
    scale = tf.constant(LEVELS / (LEVELS - threshold), inputs.dtype)
    return tf.where(keep, inputs * scale, tf.zeros((), inputs.dtype))


def _with_last(shape, size: int):
    """`shape` (a list, or a shape tensor when the sizes are known only at run time) with its last size replaced."""
    if isinstance(shape, list):
        return shape[:-1] + [size]
    import tensorflow as tf

    return tf.concat([shape[:-1], [size]], axis=0)
