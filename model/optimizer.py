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

It also builds the scalars that every variable's update shares once per step, and clips by global
norm with one L2Loss per gradient instead of a square and a sum. With model/regularizers.py's L2,
a quick-start trial's training function holds 2,889 graph operations instead of 3,964 and its
first step takes a quarter less time, with the same results bit for bit (benchmarks/README.md,
"A shorter trace").
"""

from __future__ import annotations

import keras


@keras.saving.register_keras_serializable(package="hpsearch")
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam, updating each variable with one ResourceApplyAdam on TensorFlow."""

    def _clip_gradients(self, grads):
        # Keras's global-norm clip squares and sums each gradient in two operations (plus a constant);
        # TensorFlow's L2Loss does it in one, and 2 · Σ (Σ g² / 2) is the same norm bit for bit.
        # The rest is keras.src.optimizers.base_optimizer.clip_by_global_norm's arithmetic.
        if keras.backend.backend() != "tensorflow" or self.clipnorm or not self.global_clipnorm:
            return super()._clip_gradients(grads)
        import tensorflow as tf
        from keras import ops

        halves = [tf.nn.l2_loss(g) for g in grads if g is not None]
        norm = ops.sqrt(2.0 * ops.sum(ops.stack(halves)))
        clip = self.global_clipnorm
        # A finite norm gives the scale min(1, clip / norm); an infinite or NaN one makes it NaN.
        scale = clip * ops.minimum(1.0 / norm, 1.0 / clip) + (norm - norm)
        return [g * scale if g is not None else g for g in grads]

    def _backend_update_step(self, grads, trainable_variables, learning_rate):
        # The scalars that every variable's update shares (β1^t, β2^t, ε, the learning rate) are
        # built once per step and dtype, not once per variable: with the U-Net's 64 variables that
        # is some 500 fewer operations to trace in each trial, for the same values.
        self._shared_scalars = {}
        try:
            return super()._backend_update_step(grads, trainable_variables, learning_rate)
        finally:
            self._shared_scalars = None

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
        scalars = self._scalars(dtype, learning_rate)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            grad=tf.cast(gradient, dtype),
            **scalars,
        )

    def _scalars(self, dtype, learning_rate) -> dict:
        """ResourceApplyAdam's scalar inputs in `dtype` at this step; built once per step when called within one."""
        import tensorflow as tf

        shared = getattr(self, "_shared_scalars", None)
        if shared is not None and dtype in shared:
            return shared[dtype]
        step = tf.cast(self.iterations + 1, dtype)
        beta1 = tf.cast(self.beta_1, dtype)
        beta2 = tf.cast(self.beta_2, dtype)
        scalars = {
            "beta1_power": tf.pow(beta1, step),
            "beta2_power": tf.pow(beta2, step),
            "lr": tf.cast(learning_rate, dtype),
            "beta1": beta1,
            "beta2": beta2,
            "epsilon": tf.cast(self.epsilon, dtype),
        }
        if shared is not None:
            shared[dtype] = scalars
        return scalars
