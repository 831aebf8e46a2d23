"""Dropout with a cheaper random mask on TensorFlow: 16 random bits per value, not a float32 uniform.

Keras's Dropout on TensorFlow draws one float32 uniform per value, then compares, casts and
multiplies twice. `BitsDropout` draws 32-bit words and reads each as two 16-bit numbers, so the
generator runs half as often, and keeps or drops with one select. A value is dropped when its 16
bits are below round(rate · 2¹⁶), so the drop probability is that threshold ÷ 2¹⁶: the requested
rate to within 2⁻¹⁷ (keep probability 0.85 becomes 0.850006). Kept values are scaled by 1 ÷ the
exact keep probability, so the expected output equals the input, as with Keras's.

Where TensorFlow has a GPU, and on other backends (JAX), Keras's own dropout runs, since the
cheaper mask pays off on CPUs. The weights and configuration are those of keras.layers.Dropout.

With `runtime=True` the rate is a non-trainable weight of the layer, not a constant of the traced
step, so `set_rate` changes it between trials without tracing the step again (model/reuse.py).
"""

from __future__ import annotations

import functools

import keras
from keras import layers, ops

LEVELS = 2**16  # the values 16 random bits can take


def drop_threshold(rate: float) -> int:
    """16-bit values below this are dropped: round(rate · 2¹⁶)."""
    return round(rate * LEVELS)


@keras.saving.register_keras_serializable(package="hpsearch")
class BitsDropout(layers.Dropout):
    """keras.layers.Dropout, drawing its mask from 16 random bits per value on TensorFlow.

    Input and output (B, ..., C), any float dtype; identity outside training.
    """

    def __init__(self, rate, runtime=False, **kwargs):
        super().__init__(rate, **kwargs)
        self.runtime = runtime
        self.rate_value = None  # runtime=True: the scalar weight holding the rate, made in build

    def build(self, input_shape):
        if self.runtime:
            self.rate_value = self.add_weight(
                shape=(), initializer=keras.initializers.Constant(self.rate), trainable=False, name="rate"
            )
        super().build(input_shape)

    def set_rate(self, rate: float) -> None:
        """Drop with probability `rate` from now on (runtime=True layers only; 0 < rate < 1)."""
        if self.rate_value is None:
            raise ValueError(f"{self.name} holds its rate as a constant; build it with runtime=True to change it.")
        self.rate = rate
        self.rate_value.assign(rate)

    def call(self, inputs, training=False):
        rate = self.rate if self.rate_value is None else self.rate_value
        if not training or self.rate <= 0:
            return inputs
        if self.noise_shape is None and inputs.shape[-1] is not None and _tensorflow_on_cpu():
            return _bits_dropout(inputs, rate, self.seed_generator.next())
        if self.rate_value is None or self.noise_shape is not None:
            return keras.random.dropout(inputs, rate, noise_shape=self.noise_shape, seed=self.seed_generator)
        # keras.random.dropout needs a Python rate on JAX (it tests `rate == 1.0`); a mask of the same law, with ops.
        keep = ops.cast(1.0 - rate, inputs.dtype)
        kept = keras.random.uniform(ops.shape(inputs), seed=self.seed_generator) >= ops.cast(rate, "float32")
        return ops.where(kept, inputs / keep, ops.zeros((), inputs.dtype))

    def get_config(self):
        config = super().get_config()
        if self.runtime:  # otherwise the configuration is keras.layers.Dropout's
            config["runtime"] = True
        return config


@functools.cache
def _tensorflow_on_cpu() -> bool:
    """Keras runs on TensorFlow, and TensorFlow has no GPU to place the layer on."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return not tf.config.list_physical_devices("GPU")


def _bits_dropout(inputs, rate, seed):
    """`rate`: a float, or a scalar variable (runtime=True) read when the step runs."""
    import tensorflow as tf

    if isinstance(rate, (int, float)):
        threshold = drop_threshold(rate)
        if threshold >= LEVELS:
            return tf.zeros_like(inputs)
        threshold, scale = tf.constant(threshold, tf.uint16), tf.constant(LEVELS / (LEVELS - threshold), inputs.dtype)
    else:  # the same figures, computed in the step (float64, as Python's); half to even, as round()
        levels = tf.round(tf.cast(tf.convert_to_tensor(rate), tf.float64) * LEVELS)
        levels = tf.minimum(levels, LEVELS - 1)  # rates within 2⁻¹⁷ of 1 drop all but 1 in 2¹⁶
        threshold, scale = tf.cast(levels, tf.uint16), tf.cast(LEVELS / (LEVELS - levels), inputs.dtype)
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
    keep = bits >= threshold
    return tf.where(keep, inputs * scale, tf.zeros((), inputs.dtype))


def _with_last(shape, size: int):
    """`shape` (a list, or a shape tensor when the sizes are known only at run time) with its last size replaced."""
    if isinstance(shape, list):
        return shape[:-1] + [size]
    import tensorflow as tf

    return tf.concat([shape[:-1], [size]], axis=0)
