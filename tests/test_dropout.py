"""BitsDropout: Keras's Dropout with a mask drawn from 16 random bits per value."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf

from model.dropout import LEVELS, BitsDropout, _tensorflow_on_cpu, drop_threshold

# Elsewhere (a GPU, JAX) the layer is Keras's Dropout, whose scale these tests would tell apart.
pytestmark = pytest.mark.skipif(not _tensorflow_on_cpu(), reason="BitsDropout draws its own mask on TensorFlow CPUs only")


def dropped_and_gradient(layer, x):
    """The layer's training output for x and the gradient of its sum with respect to x."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        total = tf.reduce_sum(y)
    return y.numpy(), tape.gradient(total, x).numpy()


@pytest.mark.parametrize("channels", [30, 5])  # an even and an odd channel count
def test_drops_at_the_rate_and_scales_what_it_keeps(channels):
    rate = 0.15
    x = np.random.default_rng(0).uniform(0.5, 1.5, size=(2, 16, 32, 32, channels)).astype(np.float32)
    y, gradient = dropped_and_gradient(BitsDropout(rate, seed=1), x)
    dropped = y == 0
    # The drop probability is threshold / 2^16, within 2^-17 of the rate; allow 5 binomial sigmas.
    probability = drop_threshold(rate) / LEVELS
    assert abs(probability - rate) <= 2**-17
    sigma = np.sqrt(probability * (1 - probability) / x.size)
    assert abs(dropped.mean() - probability) < 5 * sigma
    scale = 1 / (1 - probability)
    np.testing.assert_allclose(y[~dropped], x[~dropped] * scale, rtol=1e-6)
    # The gradient is the mask: scale where kept, 0 where dropped.
    np.testing.assert_allclose(gradient, np.where(dropped, 0.0, scale), rtol=1e-6)


@pytest.mark.parametrize("channels", [30, 5])
def test_sizes_known_only_when_it_runs_give_the_same_masks(channels):
    # A traced function whose input sizes are unknown takes the run-time shape path; the same seed
    # and input must drop the same values as the path for sizes known when tracing.
    x = np.random.default_rng(1).uniform(0.5, 1.5, size=(2, 8, 16, 16, channels)).astype(np.float32)
    known, unknown = BitsDropout(0.3, seed=5), BitsDropout(0.3, seed=5)
    traced = tf.function(
        lambda v: unknown(v, training=True), input_signature=[tf.TensorSpec((None, None, None, None, channels))]
    )
    np.testing.assert_array_equal(traced(tf.constant(x)).numpy(), known(x, training=True).numpy())


def test_the_two_values_drawn_from_one_random_word_are_independent():
    rate = 0.5
    y, _ = dropped_and_gradient(BitsDropout(rate, seed=3), np.ones((4, 16, 32, 32, 2), np.float32))
    first, second = y[..., 0] == 0, y[..., 1] == 0  # the two halves of the same 32-bit word
    both = (first & second).mean()
    sigma = np.sqrt(0.25 * 0.75 / first.size)
    assert abs(both - first.mean() * second.mean()) < 5 * sigma


def test_identity_outside_training_and_a_fresh_mask_per_call():
    layer = BitsDropout(0.3, seed=2)
    x = np.ones((1, 8, 8, 8, 4), np.float32)
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(layer(x, training=False)), x)
    first, _ = dropped_and_gradient(layer, x)
    second, _ = dropped_and_gradient(layer, x)
    assert not np.array_equal(first, second)


def test_the_same_global_seed_draws_the_same_masks():
    def masks():
        keras.utils.set_random_seed(7)
        layer = BitsDropout(0.2)
        x = np.ones((1, 8, 8, 8, 6), np.float32)
        return [dropped_and_gradient(layer, x)[0] for _ in range(2)]

    np.testing.assert_array_equal(masks(), masks())


def test_rate_one_drops_everything():
    y = BitsDropout(1.0)(np.ones((1, 4, 4, 4, 3), np.float32), training=True)
    assert not keras.ops.convert_to_numpy(y).any()


@pytest.mark.parametrize("rate", [0.15, 0.4])
def test_a_run_time_rate_draws_the_masks_of_a_constant_one(rate):
    """runtime=True reads the rate from a weight when the step runs: the same masks and scale, and
    set_rate changes the rate of a traced step without tracing it again."""
    x = np.random.default_rng(2).uniform(0.5, 1.5, size=(2, 8, 8, 8, 6)).astype(np.float32)
    constant = dropped_and_gradient(BitsDropout(rate, seed=3), x)
    runtime = BitsDropout(0.9, runtime=True, seed=3)
    runtime.build(x.shape)
    runtime.set_rate(rate)
    for a, b in zip(constant, dropped_and_gradient(runtime, x), strict=True):
        np.testing.assert_array_equal(a, b)

    layer = BitsDropout(0.1, runtime=True, seed=5)
    layer.build(x.shape)
    step = tf.function(lambda v: layer(v, training=True))
    low = (step(x).numpy() == 0).mean()
    layer.set_rate(0.6)
    high = (step(x).numpy() == 0).mean()
    assert step.experimental_get_tracing_count() == 1
    assert low < 0.2 < 0.5 < high
    assert layer.get_config()["rate"] == 0.6 and layer.get_config()["runtime"] is True
    with pytest.raises(ValueError, match="build it with runtime=True"):
        BitsDropout(0.1).set_rate(0.2)
