"""On-the-fly augmentation keeps image and label aligned, changes what it should, and is a training option."""

from __future__ import annotations

import numpy as np
import pytest

from model.augment import augment_block, in_plane_coordinates, warp
from model.data import Case
from model.patches import PatchSampler


def block(rng, shape=(24, 20, 6)):
    label = np.zeros(shape, np.int64)
    label[4:12, 5:15, 1:5] = 1
    label[14:20, 3:9, 2:6] = 2
    image = np.stack([label * 10.0 + rng.normal(0, 0.01, shape), -label * 5.0], axis=-1).astype(np.float32)
    return image, label


def interior(mask: np.ndarray) -> np.ndarray:
    """Voxels of `mask` whose four in-plane neighbours are in it too (away from interpolated borders)."""
    inner = mask.copy()
    inner[1:, :] &= mask[:-1, :]
    inner[:-1, :] &= mask[1:, :]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[0, :] = inner[-1, :] = inner[:, 0] = inner[:, -1] = False
    return inner


@pytest.mark.parametrize("seed", range(20))
def test_an_augmented_block_keeps_image_and_label_aligned(seed):
    """Channel 0 is 0 / 10 / 20 by class; the intensity changes keep that order, so inside each class region of
    the augmented label, the augmented image must hold that class's level: any geometric mismatch breaks it."""
    image, label = block(np.random.default_rng(seed))
    augmented_image, augmented_label = augment_block(image, label, np.random.default_rng(1000 + seed))
    assert augmented_image.shape == image.shape and augmented_label.shape == label.shape
    assert set(np.unique(augmented_label)) <= {0, 1, 2}
    levels = [augmented_image[..., 0][interior(augmented_label == c)] for c in (0, 1, 2)]
    assert all(level.size for level in levels), "each class keeps an interior"
    assert levels[0].max() < levels[1].min() and levels[1].max() < levels[2].min()


def test_flips_and_rotation_move_voxels_the_same_way():
    label = np.zeros((9, 9, 1), np.int64)
    label[7, 4, 0] = 1
    quarter = in_plane_coordinates((9, 9), np.pi / 2, 1.0)
    turned = warp(label, quarter, nearest=True)
    image = warp(label.astype(np.float32)[..., None], quarter, nearest=False)[..., 0]
    assert turned.sum() == 1 and np.argwhere(turned)[0].tolist() == np.argwhere(image > 0.5)[0].tolist()
    assert np.argwhere(turned)[0].tolist() != [7, 4, 0]  # it moved


def test_augmentation_is_off_unless_asked_and_changes_blocks_when_on():
    rng = np.random.default_rng(0)
    image, label = block(rng, shape=(32, 32, 8))
    case = Case("c", image, label.astype(np.uint8), np.eye(4), None)
    def draw(augment):
        return PatchSampler([case], patch_shape=(16, 16, 8), batch_size=4, num_classes=3, augment=augment, seed=3).next_batch()
    plain, again = draw(False), draw(False)
    np.testing.assert_array_equal(plain[0], again[0])
    augmented = draw(True)
    assert not np.array_equal(plain[0], augmented[0])
    np.testing.assert_array_equal(augmented[1].sum(axis=-1), 1.0)  # still one-hot
