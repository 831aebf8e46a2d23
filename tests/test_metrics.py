"""Hard IoU and Dice from intersection/union counts."""

import numpy as np

from model.metrics import dice_from_counts, iou_counts, iou_from_counts


def test_dice_is_twice_the_overlap_over_the_two_sizes():
    label = np.array([0, 1, 1, 1, 2, 2, 0, 0])
    prediction = np.array([0, 1, 1, 0, 2, 0, 0, 2])
    counts = iou_counts(label, prediction, num_classes=3)
    # class 1: |A| = 3, |B| = 2, overlap 2 -> Dice 4/5; class 2: |A| = 2, |B| = 2, overlap 1 -> Dice 1/2
    np.testing.assert_allclose(dice_from_counts(counts)[1:], [0.8, 0.5])
    iou = iou_from_counts(counts)
    np.testing.assert_allclose(dice_from_counts(counts), 2 * iou / (1 + iou))
    # A class in neither label nor prediction scores 1, as IoU does.
    assert dice_from_counts(iou_counts(np.zeros(4, int), np.zeros(4, int), 2))[1] == 1.0
