"""The L2 weight penalty with one TensorFlow operation per kernel, for a shorter trace.

Keras's L2 computes weight · Σ w² as a square, a sum and a multiply, and its gradient as a
reshape, a tile and two multiplies. TensorFlow's L2Loss (Σ w² / 2, whose gradient is one
multiply) gives the same value: Σ w² / 2 · 2 is exact in floating point, and so is the
gradient's 2 · weight · w in either order. Other backends (JAX) run Keras's own.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="hpsearch")
class L2(keras.regularizers.L2):
    """keras.regularizers.L2 (weight · Σ w²), as 2 · weight · L2Loss(w) on TensorFlow."""

    def __call__(self, x):
        if keras.backend.backend() != "tensorflow":
            return super().__call__(x)
        import tensorflow as tf

        # 2 · l2 is exact in float32, so this rounds once, as l2 · Σ w² does.
        return tf.cast(2.0 * self.l2, x.dtype) * tf.nn.l2_loss(x)
