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

Run-time hyperparameters. Keras's Adam holds β1, β2 and the clip norm as Python numbers, which a
traced training step bakes in as constants, so every trial with other values traces anew. Given
`runtime=True`, FusedAdam holds them, and an L2 weight, as optimizer variables instead (built
with the slots, after them); `set_hyperparameters` then changes them between trials and `reset`
zeroes the slots and the step count, and one traced step serves every trial of one network
shape, on TensorFlow and on JAX (whose traced step takes the optimizer's variables as inputs).
The L2 penalty becomes the gradient term 2 · l2 · w on every variable named `l2_on` ("kernel"),
added before clipping: the gradient of l2 · Σ w² in the loss, without its value in the loss.
"""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="hpsearch")
class FusedAdam(keras.optimizers.Optimizer):
    """keras.optimizers.Adam's arguments and update; one ResourceApplyAdam per variable on TensorFlow."""

    def __init__(
        self, learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7, amsgrad=False, name="adam",
        runtime=False, clip_norm=None, clip="global", l2=0.0, l2_on="kernel", **kwargs
    ):
        if amsgrad:
            raise ValueError("FusedAdam has no amsgrad=True; use keras.optimizers.Adam(amsgrad=True) for it.")
        if clip not in ("global", "each"):
            raise ValueError(f"clip must be 'global' or 'each', not {clip!r}.")
        if not runtime and (clip_norm is not None or l2):
            raise ValueError("clip_norm and l2 are run-time values; pass runtime=True, or Keras's "
                             "global_clipnorm/clipnorm and a kernel regularizer.")
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.beta_1 = beta_1
        self.beta_2 = beta_2
        self.epsilon = epsilon
        self.runtime = runtime
        self.clip_norm = clip_norm  # None: no clipping
        self.clip = clip  # "global": by the global norm; "each": each gradient by its own norm
        self.l2 = l2
        self.l2_on = l2_on
        self.fused = keras.backend.backend() == "tensorflow"  # False: Keras's Adam arithmetic, on any backend
        self._step_scalars = None  # the current step's ResourceApplyAdam scalars, by dtype
        self._values = {}  # runtime=True: name -> the variable holding beta_1, beta_2, clip_norm, l2

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
        self._penalized = [variable.name == self.l2_on for variable in var_list]
        if self.runtime:
            for name in ("beta_1", "beta_2", "clip_norm", "l2"):
                value = getattr(self, name)
                self._values[name] = self.add_variable(
                    (), initializer=keras.initializers.Constant(0.0 if value is None else value), name=name
                )

    def set_hyperparameters(self, *, learning_rate, beta_1, beta_2, clip_norm, l2) -> None:
        """Give a built runtime=True optimizer another trial's values; no step is traced again."""
        if not self._values:
            raise ValueError("set_hyperparameters needs a FusedAdam built with runtime=True.")
        if (clip_norm is None) != (self.clip_norm is None) or (l2 > 0) != (self.l2 > 0):
            raise ValueError("clipping and the L2 penalty can change their values, not be turned on or off.")
        self.learning_rate = learning_rate
        self.beta_1, self.beta_2, self.clip_norm, self.l2 = beta_1, beta_2, clip_norm, l2
        for name, variable in self._values.items():
            value = getattr(self, name)
            variable.assign(0.0 if value is None else value)

    def reset(self) -> None:
        """Zero the step count and the slots: the state of a new optimizer, with its current values."""
        self.iterations.assign(0)
        for slot in self._momentums + self._velocities:
            slot.assign(keras.ops.zeros(slot.shape, slot.dtype))

    def _value(self, name: str):
        """beta_1, beta_2, ...: its variable where runtime=True, else the Python number."""
        return self._values.get(name, getattr(self, name))

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
        if self.runtime:
            grads = self._penalize_and_clip(list(grads), trainable_variables)
        # The scalars every variable's update shares are built once per step, not once per variable.
        self._step_scalars = {}
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._step_scalars = None

    def _penalize_and_clip(self, grads, trainable_variables):
        """The L2 term 2 · l2 · w on penalized variables, then clipping, with run-time values."""
        variables = self._trainable_variables if trainable_variables is None else list(trainable_variables)
        if not self.built:  # the run-time values are variables made with the slots
            self.build(variables)
        if self.l2 > 0:
            twice_l2 = 2.0 * self._values["l2"]
            grads = [
                g + ops.cast(twice_l2, g.dtype) * v if g is not None and penalized else g
                for g, v, penalized in zip(grads, variables, self._penalized)
            ]
        if self.clip_norm is None:
            return grads
        clip_norm = self._values["clip_norm"]
        if self.clip == "each":
            return [None if g is None else _clip_by_norm(g, clip_norm) for g in grads]
        return _clip_by_global_norm(grads, clip_norm)

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
        beta1 = tf.cast(self._value("beta_1"), dtype)
        beta2 = tf.cast(self._value("beta_2"), dtype)
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
        beta_1, beta_2 = self._value("beta_1"), self._value("beta_2")
        beta_1_power = ops.power(ops.cast(beta_1, variable.dtype), local_step)
        beta_2_power = ops.power(ops.cast(beta_2, variable.dtype), local_step)
        alpha = lr * ops.sqrt(1 - beta_2_power) / (1 - beta_1_power)
        self.assign_add(m, ops.multiply(ops.subtract(gradient, m), 1 - beta_1))
        self.assign_add(v, ops.multiply(ops.subtract(ops.square(gradient), v), 1 - beta_2))
        self.assign_sub(variable, ops.divide(ops.multiply(m, alpha), ops.add(ops.sqrt(v), self.epsilon)))

    def get_config(self):
        config = super().get_config()
        config.update({"beta_1": self.beta_1, "beta_2": self.beta_2, "epsilon": self.epsilon, "amsgrad": False})
        if self.runtime:  # otherwise the configuration is keras.optimizers.Adam's
            config.update({"runtime": True, "clip_norm": self.clip_norm, "clip": self.clip, "l2": self.l2, "l2_on": self.l2_on})
        return config


def _clip_by_norm(gradient, clip_norm):
    """`gradient` scaled to L2 norm at most `clip_norm` (Keras's clipnorm, with a run-time norm)."""
    squares = ops.sum(ops.square(gradient))
    positive = squares > 0
    norm = ops.where(positive, ops.sqrt(ops.where(positive, squares, ops.ones_like(squares))), squares)
    return gradient * clip_norm / ops.maximum(norm, clip_norm)


def _clip_by_global_norm(grads, clip_norm):
    """`grads` scaled together to global L2 norm at most `clip_norm` (Keras's global_clipnorm arithmetic);
    a non-finite norm makes every gradient NaN, as Keras's does."""
    norm = ops.sqrt(ops.sum(ops.stack([ops.sum(ops.square(g)) for g in grads if g is not None])))
    scale = clip_norm * ops.minimum(1.0 / norm, 1.0 / clip_norm) + (norm - norm)
    return [None if g is None else g * ops.cast(scale, g.dtype) for g in grads]
