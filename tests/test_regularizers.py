"""model.regularizers.L2: Keras's L2 penalty, bit for bit, in fewer TensorFlow operations."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from model.regularizers import L2

pytestmark = pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="L2 differs from Keras's on TensorFlow only")


@pytest.mark.parametrize("shape", [(3, 3, 1, 4), (1, 3, 3, 16, 16), (3, 3, 240, 240)])
def test_value_and_gradient_are_kerass_bit_for_bit(shape):
    import tensorflow as tf

    kernel = tf.Variable(np.random.default_rng(0).normal(scale=0.1, size=shape).astype(np.float32))
    results = []
    for regularizer in (L2(3.0e-4), keras.regularizers.L2(3.0e-4)):
        with tf.GradientTape() as tape:
            value = regularizer(kernel)
        results.append((value.numpy(), tape.gradient(value, kernel).numpy()))
    (ours, our_gradient), (theirs, their_gradient) = results
    assert ours.dtype == theirs.dtype == np.float32
    assert ours == theirs and ours > 0
    np.testing.assert_array_equal(our_gradient, their_gradient)


def test_its_trace_has_no_square_sum_or_tile():
    import tensorflow as tf

    kernel = tf.Variable(np.ones((3, 3, 4, 4), np.float32))

    @tf.function
    def penalty_and_gradient():
        with tf.GradientTape() as tape:
            value = L2(1e-3)(kernel)
        return value, tape.gradient(value, kernel)

    operations = {op.type for op in penalty_and_gradient.get_concrete_function().graph.get_operations()}
    assert "L2Loss" in operations
    assert not operations & {"Square", "Sum", "Tile"}


def test_it_serialises_as_hpsearchs_own():
    config = keras.regularizers.serialize(L2(2.5e-4))
    assert config["registered_name"] == "hpsearch>L2" and config["config"] == {"l2": 2.5e-4}
    restored = keras.regularizers.deserialize(config)
    assert type(restored) is L2 and restored.l2 == pytest.approx(2.5e-4)
