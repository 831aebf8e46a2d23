"""FusedAdam: Keras's Adam, updating each variable with TensorFlow's one fused Adam operation."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model.losses import get_loss
from model.optimizer import FusedAdam
from model.unet import build_unet

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="FusedAdam fuses on TensorFlow only")

PATCH = (16, 16, 16)


def unfused(**kwargs) -> FusedAdam:
    """A FusedAdam that runs Keras's Adam arithmetic, as it does on backends other than TensorFlow."""
    optimizer = FusedAdam(**kwargs)
    optimizer.fused = False
    return optimizer


def trained_weights(optimizer_class, steps: int = 4) -> list[np.ndarray]:
    """Weights of a tiny U-Net after `steps` Adam steps on a fixed batch, from a fixed initialisation."""
    keras.utils.set_random_seed(3)
    model = build_unet(channels=4, depth=2, keep_prob=1.0)
    optimizer = optimizer_class(learning_rate=1e-2, beta_1=0.7, beta_2=0.95, global_clipnorm=0.5)
    model.compile(optimizer=optimizer, loss=get_loss("joint"), jit_compile=False)
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, *PATCH, 1)).astype(np.float32)
    labels = np.eye(2, dtype=np.float32)[rng.integers(0, 2, size=(2, *PATCH))]
    for _ in range(steps):
        model.train_on_batch(images, labels)
    return model.get_weights()


def test_fused_adam_trains_as_kerass_adam_does():
    fused = trained_weights(FusedAdam)
    plain = trained_weights(keras.optimizers.Adam)
    keras.utils.set_random_seed(3)
    initial = build_unet(channels=4, depth=2, keep_prob=1.0).get_weights()
    assert max(float(np.max(np.abs(a - b))) for a, b in zip(plain, initial)) > 1e-2  # the steps moved it
    for a, b in zip(fused, plain):
        # The same arithmetic in another order: float32 rounding only (a step moves weights by ~1e-2).
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-6)


def test_unfused_update_is_kerass_adam_bit_for_bit():
    for a, b in zip(trained_weights(unfused), trained_weights(keras.optimizers.Adam), strict=True):
        np.testing.assert_array_equal(a, b)


def test_each_variable_is_updated_by_one_fused_operation():
    import tensorflow as tf

    variables = [keras.Variable(np.ones((3, 3), np.float32)), keras.Variable(np.zeros(4, np.float32))]
    optimizer = FusedAdam(learning_rate=0.1)
    optimizer.build(variables)

    @tf.function
    def apply(gradients):
        optimizer.apply(gradients, variables)

    gradients = [tf.ones((3, 3)), tf.ones(4)]
    graph = apply.get_concrete_function(gradients).graph
    # The update is traced into the body of Keras's per-variable update functions.
    operations = [op.type for op in graph.get_operations()]
    for function in graph._functions.values():
        operations += [node.op for node in function.cached_definition.node_def]
    assert operations.count("ResourceApplyAdam") == len(variables)
    assert operations.count("Pow") == 2  # β1^t and β2^t, built once for all the variables
    apply(gradients)
    # After one step Adam moves every weight by the learning rate times sign(g) (m / √v = 1 at t = 1).
    np.testing.assert_allclose(variables[0].numpy(), np.full((3, 3), 0.9), rtol=1e-5)
    np.testing.assert_allclose(variables[1].numpy(), np.full(4, -0.1), rtol=1e-5)


def momentums_after_one_step(gradients, **kwargs) -> list[np.ndarray]:
    """FusedAdam's momentum slots, (1 − β1) · the gradient it used, after one step from zero weights."""
    variables = [keras.Variable(np.zeros(g.shape, np.float32)) for g in gradients]
    optimizer = FusedAdam(learning_rate=0.1, **kwargs)
    optimizer.apply(gradients, variables)
    return [v.numpy() for v in optimizer.variables if v.name.endswith("_momentum")]


def test_global_norm_clipping_is_kerass_bit_for_bit():
    import tensorflow as tf
    from keras.src.optimizers.base_optimizer import clip_by_global_norm

    rng = np.random.default_rng(1)
    gradients = [tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in [(3, 3, 30, 30), (30,), (1, 1, 60, 2)]]
    unclipped = momentums_after_one_step(gradients)
    for clip in (0.5, 1e3):  # clipping, and a norm below the clip (scale 1)
        ours = momentums_after_one_step(gradients, global_clipnorm=clip)
        theirs = momentums_after_one_step(clip_by_global_norm(gradients, clip))
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)
        assert (clip < 1e3) == any(not np.array_equal(a, b) for a, b in zip(ours, unclipped))
    # A non-finite norm makes every gradient NaN, as Keras's does (the step then shows a NaN loss).
    ours = momentums_after_one_step([tf.constant([np.inf, 1.0])], global_clipnorm=1.0)
    assert np.isnan(ours[0]).all()


def test_slots_and_configuration_are_kerass_adams():
    variables = [keras.Variable(np.ones((3, 3), np.float32), name="kernel"), keras.Variable(np.zeros(4), name="bias")]
    fused, adam = FusedAdam(learning_rate=0.1), keras.optimizers.Adam(learning_rate=0.1)
    fused.build(variables)
    adam.build(variables)
    assert [(v.name, v.shape) for v in fused.variables] == [(v.name, v.shape) for v in adam.variables]
    config = keras.optimizers.Adam(learning_rate=0.01, beta_1=0.8, global_clipnorm=2.0).get_config()
    assert FusedAdam.from_config(config).get_config() == config
    with pytest.raises(ValueError, match="amsgrad=True.*keras.optimizers.Adam"):
        FusedAdam(amsgrad=True)


def test_run_time_clipping_and_l2_are_kerass_arithmetic():
    """runtime=True: global and per-gradient clipping as Keras's clipnorm/global_clipnorm, bit for bit,
    and the L2 term 2 · l2 · w on kernels only, which is the gradient of l2 · Σ w² in the loss."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    gradients = [tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in [(3, 3, 4, 4), (4,)]]
    for keras_clip, clip in (("global_clipnorm", "global"), ("clipnorm", "each")):
        theirs = momentums_after_one_step(gradients, **{keras_clip: 0.5})
        ours = momentums_after_one_step(gradients, runtime=True, clip_norm=0.5, clip=clip)
        for a, b in zip(ours, theirs, strict=True):
            np.testing.assert_array_equal(a, b)

    values = [rng.normal(size=(3, 3, 4, 4)).astype(np.float32), rng.normal(size=4).astype(np.float32)]
    variables = [keras.Variable(values[0], name="kernel"), keras.Variable(values[1], name="bias")]
    optimizer = FusedAdam(learning_rate=0.1, runtime=True, l2=0.25)
    optimizer.apply([tf.zeros((3, 3, 4, 4)), tf.zeros(4)], variables)
    momentum = [v.numpy() for v in optimizer.variables if v.name.endswith("_momentum")]
    np.testing.assert_allclose(momentum[0], (1 - 0.9) * 2 * 0.25 * values[0], rtol=1e-6)
    assert not momentum[1].any()  # biases carry no penalty


def test_run_time_values_change_without_a_new_trace():
    import tensorflow as tf

    variables = [keras.Variable(np.ones((2, 2), np.float32), name="kernel")]
    optimizer = FusedAdam(learning_rate=0.1, beta_1=0.9, runtime=True, clip_norm=1.0, l2=0.01)
    optimizer.build(variables)
    step = tf.function(lambda g: optimizer.apply([g], variables))
    step(tf.ones((2, 2)))
    optimizer.set_hyperparameters(learning_rate=0.5, beta_1=0.5, beta_2=0.9, clip_norm=2.0, l2=0.02)
    optimizer.reset()
    variables[0].assign(np.ones((2, 2), np.float32))
    step(tf.ones((2, 2)))
    assert step.experimental_get_tracing_count() == 1
    # The second step used the new values: at t = 1 Adam moves each weight by the learning rate.
    np.testing.assert_allclose(variables[0].numpy(), np.full((2, 2), 0.5), rtol=1e-5)
    assert int(optimizer.iterations.numpy()) == 1
    with pytest.raises(ValueError, match="not be turned on or off"):
        optimizer.set_hyperparameters(learning_rate=0.5, beta_1=0.5, beta_2=0.9, clip_norm=None, l2=0.02)
    with pytest.raises(ValueError, match="pass runtime=True"):
        FusedAdam(clip_norm=1.0)
