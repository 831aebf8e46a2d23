"""The network's blocks and shapes, the IoU losses against hand-computed values, IoU metrics, inference."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from keras import ops

from model.errors import InputError
from model.inference import cpu_has_bfloat16_units, inference_model, predict_labels, predict_probabilities
from model.losses import joint_iou_loss, per_class_iou_loss
from model.metrics import iou_counts, iou_from_counts, mean_foreground_iou
from model.unet import SliceConv3D, build_unet
from reference_unet import build_reference_unet


def conv_kernels(model, prefix):
    """{layer name: kernel size in (x, y, z)}; the network holds volumes as (z, x, y) inside."""
    return {
        layer.name: (layer.kernel_size[1], layer.kernel_size[2], layer.kernel_size[0])
        for layer in model.layers if layer.name.startswith(prefix) and "_conv_" in layer.name
    }


@pytest.mark.parametrize("block", ["factorized", "full"])
def test_the_zxy_network_equals_plain_conv3d_layers_in_xyz_order(block):
    """The internal (z, x, y) order and the slice-wise 2D convolutions change the arithmetic's order only."""
    model = build_unet(in_channels=2, num_classes=3, channels=3, depth=2, keep_prob=1.0, block=block)
    reference = build_reference_unet(in_channels=2, num_classes=3, channels=3, depth=2, keep_prob=1.0, block=block)
    assert not any(isinstance(layer, SliceConv3D) for layer in reference.layers)
    # Every plane of the factorized block runs sliced (the speed-up); 3×3×3 kernels stay Conv3D.
    sliced = [isinstance(layer, SliceConv3D) for layer in model.layers if "_conv_" in layer.name]
    assert sliced == [block == "factorized"] * 20
    assert conv_kernels(model, "") == {layer.name: tuple(layer.kernel_size) for layer in reference.layers if "_conv_" in layer.name}
    for layer in model.layers:
        if layer.weights:
            weights = layer.get_weights()
            if "_conv_" in layer.name:  # (z, x, y, in, out) -> (x, y, z, in, out)
                weights[0] = weights[0].transpose(1, 2, 0, 3, 4)
            reference.get_layer(layer.name).set_weights(weights)  # 1×1×1 kernels read the same in any order
    x = np.random.default_rng(0).normal(size=(2, 12, 8, 16, 2)).astype(np.float32)
    np.testing.assert_allclose(
        ops.convert_to_numpy(model(x, training=False)), ops.convert_to_numpy(reference(x, training=False)), atol=1e-5
    )


def test_slice_conv_refuses_a_kernel_that_is_not_flat_in_any_axis():
    with pytest.raises(ValueError, match="kernel of size 1 along one axis.*got kernel \\(3, 3, 3\\)"):
        SliceConv3D(4, (3, 3, 3))


@pytest.mark.parametrize("kernel", [(1, 3, 3), (3, 1, 3), (3, 3, 1), (1, 1, 3)])
def test_slice_conv_computes_what_conv3d_does_forward_and_backward(kernel):
    """Each flat axis (the first one where two are flat) gives Conv3D's output and gradients, odd sizes included."""
    import tensorflow as tf

    x = tf.constant(np.random.default_rng(1).normal(size=(2, 5, 6, 7, 3)).astype(np.float32))
    sliced = SliceConv3D(4, kernel, padding="same", activation="relu")
    plain = keras.layers.Conv3D(4, kernel, padding="same", activation="relu")
    sliced.build(x.shape)
    plain.build(x.shape)
    sliced.set_weights([w + 0.1 for w in plain.get_weights()])  # a non-zero bias too
    plain.set_weights(sliced.get_weights())
    results = []
    for layer in (sliced, plain):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * y)
        results.append([y, *tape.gradient(loss, [x, layer.kernel, layer.bias])])
    assert sliced.flat_axis == kernel.index(1)
    for got, expected in zip(*results):
        np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-5, atol=1e-5)


def test_factorized_block_uses_the_papers_plane_kernels():
    model = build_unet(channels=4, depth=2)
    assert conv_kernels(model, "enc1") == {
        "enc1_conv_xy": (3, 3, 1),
        "enc1_conv_xz": (3, 1, 3),
        "enc1_conv_yz": (1, 3, 3),
        "enc1_conv_xy2": (3, 3, 1),
    }
    filters = {layer.name: layer.filters for layer in model.layers if layer.name.endswith("_conv_xy")}
    assert filters == {"enc1_conv_xy": 4, "enc2_conv_xy": 8, "bottom_conv_xy": 16, "dec2_conv_xy": 8, "dec1_conv_xy": 4}
    up = model.get_layer("dec1_up")
    assert tuple(up.kernel_size) == (1, 1, 1) and tuple(up.strides) == (2, 2, 2)
    assert not any("batch_norm" in layer.name for layer in model.layers)


def test_full_block_and_its_parameter_count():
    factorized = build_unet(channels=4, depth=2)
    full = build_unet(channels=4, depth=2, block="full")
    assert set(conv_kernels(full, "enc1").values()) == {(3, 3, 3)}
    # Four 3-tap plane kernels have 4·9 weights per channel pair against 4·27 for 3×3×3.
    assert full.get_layer("enc2_conv_full2").kernel.shape == (3, 3, 3, 8, 8)
    assert factorized.count_params() < full.count_params()


def test_dropout_rate_and_l2_follow_the_arguments():
    model = build_unet(channels=2, depth=1, keep_prob=0.85, l2=3e-4)
    rates = [layer.rate for layer in model.layers if isinstance(layer, keras.layers.Dropout)]
    assert len(rates) == 4 * 3 and rates == pytest.approx([0.15] * 12)  # 3 blocks of 4 convolutions
    assert float(model.get_layer("enc1_conv_xy").kernel_regularizer.l2) == pytest.approx(3e-4)
    assert build_unet(channels=2, depth=1, keep_prob=1.0).count_params() == model.count_params()


@pytest.mark.parametrize("shape", [(16, 16, 16), (24, 8, 32)])
def test_network_output_shape_and_softmax(shape):
    model = build_unet(in_channels=2, num_classes=3, channels=3, depth=3)
    x = np.random.default_rng(0).normal(size=(2, *shape, 2)).astype(np.float32)
    y = ops.convert_to_numpy(model(x, training=False))
    assert y.shape == (2, *shape, 3)
    np.testing.assert_allclose(y.sum(axis=-1), 1.0, atol=1e-5)


@pytest.mark.parametrize("shape", [(17, 13, 11), (9, 31, 5), (8, 8, 8)])
def test_whole_volume_inference_of_any_size(shape):
    model = build_unet(num_classes=3, channels=2, depth=3)
    image = np.random.default_rng(1).normal(size=(*shape, 1)).astype(np.float32)
    probabilities = predict_probabilities(model, image, depth=3)
    assert probabilities.shape == (*shape, 3)
    labels = predict_labels(model, image, depth=3)
    assert labels.shape == shape and labels.dtype == np.uint8
    # Dropout is off: inference is deterministic.
    np.testing.assert_array_equal(probabilities, predict_probabilities(model, image, depth=3))


def test_bfloat16_inference_computes_in_bfloat16_from_the_same_weights():
    model = build_unet(num_classes=3, channels=4, depth=2)
    image = np.random.default_rng(2).normal(size=(24, 16, 8, 1)).astype(np.float32)
    fast = inference_model(model, "bfloat16")
    assert {layer.compute_dtype for layer in fast.layers if "_conv_" in layer.name} == {"bfloat16"}
    assert fast.get_layer("out_softmax").compute_dtype == "float32"
    for ours, theirs in zip(fast.weights, model.weights, strict=True):
        assert ours.dtype == "float32"
        np.testing.assert_array_equal(ops.convert_to_numpy(ours), ops.convert_to_numpy(theirs))
    exact = predict_probabilities(model, image, depth=2)
    rounded = predict_probabilities(fast, image, depth=2)
    assert rounded.dtype == np.float32 and rounded.shape == exact.shape
    # bfloat16 keeps 8 bits of mantissa: the probabilities move, by about its rounding and no more.
    difference = np.abs(rounded - exact).max()
    assert 0 < difference < 0.005
    # The original is left as it was: float32 throughout, the same output.
    assert {layer.compute_dtype for layer in model.layers} == {"float32"}
    np.testing.assert_array_equal(exact, predict_probabilities(model, image, depth=2))
    assert inference_model(model, "float32") is model


def test_an_unknown_precision_is_one_sentence():
    with pytest.raises(InputError, match="precision 'float16' is not one of float32, bfloat16"):
        inference_model(build_unet(channels=2, depth=1), "float16")


def test_bfloat16_units_are_read_from_the_cpu_flags(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16\n")
    assert cpu_has_bfloat16_units(cpuinfo) is True
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_vnni\n")
    assert cpu_has_bfloat16_units(cpuinfo) is False
    assert cpu_has_bfloat16_units(tmp_path / "absent") is None


def test_build_unet_refuses_bad_arguments():
    with pytest.raises(ValueError, match="block"):
        build_unet(block="diagonal")
    with pytest.raises(ValueError, match="keep_prob"):
        build_unet(keep_prob=0.0)


# ---- losses, by hand

Y = np.zeros((1, 2, 1, 1, 3), np.float32)  # two voxels, classes background/A/B
Y[0, 0, 0, 0, 1] = 1  # voxel 0 is class A
Y[0, 1, 0, 0, 2] = 1  # voxel 1 is class B
P = np.array([[0.2, 0.7, 0.1], [0.1, 0.3, 0.6]], np.float32).reshape(1, 2, 1, 1, 3)


def test_joint_loss_against_a_hand_computed_value():
    # Foreground only: I = 0.7 + 0.6 = 1.3; Σy = 2; Σŷ = 0.7+0.1+0.3+0.6 = 1.7; U = 2 + 1.7 − 1.3 = 2.4.
    expected = 1 - 1.3 / 2.4
    assert float(joint_iou_loss(Y, P)) == pytest.approx(expected, abs=1e-6)


def test_per_class_loss_against_a_hand_computed_value():
    # A: I = 0.7, U = 1 + 1.0 − 0.7 = 1.3.  B: I = 0.6, U = 1 + 0.7 − 0.6 = 1.1.
    expected = 1 - (0.7 / 1.3 + 0.6 / 1.1) / 2
    assert float(per_class_iou_loss(Y, P)) == pytest.approx(expected, abs=1e-6)


def test_per_class_loss_leaves_out_classes_absent_from_the_batch():
    only_a = Y.copy()
    only_a[0, 1, 0, 0] = [1, 0, 0]  # voxel 1 becomes background: class B is absent
    # Class A alone: I = 0.7, U = 1 + 1.0 − 0.7 = 1.3; B's predictions (0.1, 0.6) are not averaged in.
    assert float(per_class_iou_loss(only_a, P)) == pytest.approx(1 - 0.7 / 1.3, abs=1e-6)


def test_losses_are_zero_for_a_perfect_prediction_and_finite_when_empty():
    assert float(joint_iou_loss(Y, Y)) == pytest.approx(0.0, abs=1e-6)
    assert float(per_class_iou_loss(Y, Y)) == pytest.approx(0.0, abs=1e-6)
    background = np.zeros_like(Y)
    background[..., 0] = 1
    assert float(joint_iou_loss(background, background)) == pytest.approx(0.0, abs=1e-6)
    assert np.isfinite(float(per_class_iou_loss(background, P)))


# ---- hard IoU


def test_iou_counts_per_class_and_empty_classes():
    label = np.array([0, 0, 1, 1, 1, 0])
    prediction = np.array([0, 1, 1, 1, 0, 0])
    counts = iou_counts(label, prediction, num_classes=3)
    # class 1: I = 2, U = 4; class 2 absent from both: 1.0 by convention; background: I = 2, U = 4.
    np.testing.assert_array_equal(counts, [[2, 4], [2, 4], [0, 0]])
    np.testing.assert_allclose(iou_from_counts(counts), [0.5, 0.5, 1.0])
    assert mean_foreground_iou(counts) == pytest.approx(0.75)
    # A class predicted but absent from the label scores 0.
    assert iou_from_counts(iou_counts(np.zeros(4, int), np.array([0, 2, 2, 0]), 3))[2] == 0.0
