"""Soft IoU losses on softmax outputs: the paper's joint one, a per-class variant, and the per-class one
plus cross-entropy.

All take one-hot targets and softmax probabilities of shape (B, X, Y, Z, K) and drop channel 0
(the background) as the paper does. Sums run in float32 whatever the compute dtype.
"""

from __future__ import annotations

from keras import ops

from model.config import LOSSES

# Keeps 0/0 finite when a batch has no foreground and predicts none (IoU -> 1, loss -> 0).
SMOOTH = 1e-6


def joint_iou_loss(y_true, y_pred):
    """The paper's loss: 1 − Σ y·ŷ / (Σ y + Σ ŷ − Σ y·ŷ), summed over voxels, batch and foreground classes together."""
    y_true = ops.cast(y_true[..., 1:], "float32")
    y_pred = ops.cast(y_pred[..., 1:], "float32")
    intersection = ops.sum(y_true * y_pred)
    union = ops.sum(y_true) + ops.sum(y_pred) - intersection
    return 1.0 - (intersection + SMOOTH) / (union + SMOOTH)


def per_class_iou_loss(y_true, y_pred):
    """1 − the mean soft IoU of the foreground classes present in the batch (sums over voxels and batch).

    A class absent from the batch's labels is left out of the mean: its IoU could only be
    raised by predicting none of it anywhere, which would pull every block that misses a small
    class towards never predicting it. A batch with no foreground at all averages every class,
    which pushes all foreground predictions down.
    """
    y_true = ops.cast(y_true[..., 1:], "float32")
    y_pred = ops.cast(y_pred[..., 1:], "float32")
    axes = tuple(range(len(y_true.shape) - 1))
    intersection = ops.sum(y_true * y_pred, axis=axes)
    truth = ops.sum(y_true, axis=axes)
    union = truth + ops.sum(y_pred, axis=axes) - intersection
    iou = (intersection + SMOOTH) / (union + SMOOTH)
    present = ops.cast(truth > 0, "float32")
    weights = ops.where(ops.sum(present) > 0, present, ops.ones_like(present))
    return 1.0 - ops.sum(iou * weights) / ops.sum(weights)


# Keeps log(0) finite for a probability that underflowed to zero.
EPSILON = 1e-7


def per_class_iou_ce_loss(y_true, y_pred):
    """per_class_iou_loss + categorical cross-entropy averaged over voxels (all classes, background too).

    The cross-entropy gives every voxel a gradient of its own, so a class that the soft IoU has
    nearly lost is still pulled back; nnU-Net pairs Dice with cross-entropy for this reason.
    """
    probabilities = ops.clip(ops.cast(y_pred, "float32"), EPSILON, 1.0)
    cross_entropy = -ops.mean(ops.sum(ops.cast(y_true, "float32") * ops.log(probabilities), axis=-1))
    return per_class_iou_loss(y_true, y_pred) + cross_entropy


def get_loss(name: str):
    """The loss function called `name` (one of model.config.LOSSES)."""
    if name == "joint":
        return joint_iou_loss
    if name == "per_class":
        return per_class_iou_loss
    if name == "per_class_ce":
        return per_class_iou_ce_loss
    raise ValueError(f"loss must be one of {LOSSES}, got {name!r}.")
