"""Adam that updates each variable with one fused operation on TensorFlow.

`FusedAdam` is keras.optimizers.Adam (without amsgrad) written on Keras's public optimizer API:
`build` creates Adam's slots, a momentum and a velocity per variable, in Adam's order and with
Adam's names, so saved optimizer state is interchangeable; `update_step` runs TensorFlow's
ResourceApplyAdam kernel, which computes in one operation

    lr_t = learning_rate · √(1 − β2^t) / (1 − β1^t)
    m ← m + (1 − β1)(g − m);   v ← v + (1 − β2)(g² − v);   w ← w − lr_t · m / (√v + ε)

with t the step counted from 1, as Keras's Adam does: the same arithmetic in another order. On
other backends (JAX) the same formula runs as Keras's Adam writes it. One operation per variable
instead of a dozen makes the training function quicker to trace, which is much of a short trial's
start-up. Clipping, weight decay and the other keras.optimizers.Optimizer arguments are Keras's own.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="hpsearch")
class FusedAdam(keras.optimizers.Optimizer):
    """keras.optimizers.Adam's arguments and update; one ResourceApplyAdam per variable on TensorFlow."""

    def __init__(
        self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, name="adam", **kwargs
    ):
        if amsgrad:
            raise ValueError("FusedAdam has no amsgrad=True; use keras.optimizers.Adam(amsgrad=True) for it.")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.fused = keras.backend.backend() == "tensorflow"  # False: Keras's Adam arithmetic, on any backend
        self._step_scalars = None  # the current step's ResourceApplyAdam scalars, by dtype

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        momentums, velocities, index = [], [], {}
        for i, variable in enumerate(var_list):  # interleaved, as keras.optimizers.Adam creates them
            momentums.append(self.add_variable_from_reference(variable, "momentum"))
            velocities.append(self.add_variable_from_reference(variable, "velocity"))
            index[self._slot_key(variable)] = i
        self._momentums, self._velocities, self._slot_index = momentums, velocities, index

    def _slot_key(self, variable) -> int:
        # On TensorFlow, update_step receives the tf.Variable inside each keras.Variable; both have
        # the same resource handle. Elsewhere it receives the keras.Variable itself.
        return id(variable.handle) if keras.backend.backend() == "tensorflow" else id(variable)

    def _slots(self, variable):
        index = self._slot_index.get(self._slot_key(variable))
        if index is None:
            raise ValueError(
                f"FusedAdam was not built on variable {variable.name}; "
                "build it on the model's variables, or use keras.optimizers.Adam under tf.distribute strategies."
            )
        return self._momentums[index], self._velocities[index]

    def apply(self, grads, trainable_variables=None):
        # The scalars every variable's update shares are built once per step, not once per variable.
        self._step_scalars = {}
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._step_scalars = None

    def update_step(self, gradient, variable, learning_rate):
        momentum, velocity = self._slots(variable)
        if not self.fused:
            return self._update_step_with_ops(gradient, variable, learning_rate, momentum, velocity)
        import tensorflow as tf

        dtype = tf.as_dtype(variable.dtype)
        # ResourceApplyAdam takes dense gradients only; an IndexedSlices one becomes dense, as in Keras's Adam.
        gradient = tf.cast(tf.convert_to_tensor(gradient), dtype)
        scalars = self._scalars(dtype, learning_rate)
        tf.raw_ops.ResourceApplyAdam(var=variable.handle, m=momentum.handle, v=velocity.handle, grad=gradient, **scalars)

    def _scalars(self, dtype, learning_rate) -> dict:
        """ResourceApplyAdam's scalar inputs in `dtype` at this step, reused within one `apply`."""
        import tensorflow as tf

        shared = self._step_scalars
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

    def _update_step_with_ops(self, gradient, variable, learning_rate, m, v):
        # keras.optimizers.Adam.update_step without amsgrad, operation for operation.
        lr = ops.cast(learning_rate, variable.dtype)
        gradient = ops.cast(gradient, variable.dtype)
        local_step = ops.cast(self.iterations + 1, variable.dtype)
        beta_1_power = ops.power(ops.cast(self.beta_1, variable.dtype), local_step)
        beta_2_power = ops.power(ops.cast(self.beta_2, variable.dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - self.beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - self.beta_2))
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)))

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon, "amsgrad": False})
        return config
