"""per_class_ce: the per-class soft IoU loss plus categorical cross-entropy, checked against numpy."""

import numpy as np
import pytest

from model.losses import get_loss, per_class_iou_loss


def test_per_class_ce_adds_the_mean_voxel_cross_entropy():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, (2, 4, 4, 2))
    y_true = np.eye(3, dtype=np.float32)[labels]
    logits = rng.normal(size=(2, 4, 4, 2, 3))
    y_pred = (np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)).astype(np.float32)
    cross_entropy = -np.mean(np.sum(y_true * np.log(y_pred), axis=-1))
    expected = float(per_class_iou_loss(y_true, y_pred)) + cross_entropy
    assert float(get_loss("per_class_ce")(y_true, y_pred)) == pytest.approx(expected, rel=1e-5)
    # A certain, correct prediction costs (almost) nothing.
    assert float(get_loss("per_class_ce")(y_true, y_true)) == pytest.approx(0.0, abs=1e-4)
