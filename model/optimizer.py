"""Adam whose update on TensorFlow is one fused operation per variable.

Keras's Adam writes its update of each variable as about a dozen TensorFlow operations; with the
U-Net's 64 variables a quick-start trial traced 3,680 operations into its training function, and
2,400 with FusedAdam. The first step, which traces, took 3.1 s with Keras's Adam and 2.2 s with
FusedAdam on 2 CPU cores (benchmarks/README.md, "FusedAdam, and the reference product timed
between the steps").
`FusedAdam` runs TensorFlow's ResourceApplyAdam kernel instead, which does the same arithmetic in
one operation:

    lr_t = learning_rate · √(1 − β2^t) / (1 − β1^t)
    m ← m + (1 − β1)(g − m);   v ← v + (1 − β2)(g² − v);   w ← w − lr_t · m / (√v + ε)

with t the step counted from 1, as Keras's Adam does; the two differ only in the order of
floating-point operations. On other backends (JAX), with amsgrad and for sparse gradients, Keras's
own update runs. Configuration, slots and saved state are those of keras.optimizers.Adam.
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="hpsearch")
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam, updating each variable with one ResourceApplyAdam on TensorFlow."""

    def update_step(self, gradient, variable, learning_rate):
        # The slots are read through Keras's Adam's own attributes (Keras 3.0 to 3.15 at least); a
        # Keras without them gets its own update, and tests/test_optimizer.py fails to say so.
        internals = all(hasattr(self, name) for name in ("_momentums", "_velocities", "_get_variable_index"))
        if keras.backend.backend() != "tensorflow" or self.amsgrad or not internals:
            return super().update_step(gradient, variable, learning_rate)
        import tensorflow as tf

        if isinstance(gradient, tf.IndexedSlices):  # the fused kernel takes dense gradients only
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        index = self._get_variable_index(variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta1 = tf.cast(self.beta_1, dtype)
        beta2 = tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta1, step),
            beta2_power=tf.pow(beta2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta1,
            beta2=beta2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
