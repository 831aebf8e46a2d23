"""Training blocks (patches) cut from whole volumes, with a guaranteed share that holds foreground."""

from __future__ import annotations

import numpy as np

from model.augment import augment_block
from model.data import Case
from model.errors import InputError


def pad_to(array: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Pad the first three axes of `array` with zeros (centred) to at least `shape`."""
    pads = []
    for size, target in zip(array.shape[:3], shape):
        extra = max(target - size, 0)
        pads.append((extra // 2, extra - extra // 2))
    pads += [(0, 0)] * (array.ndim - 3)
    return np.pad(array, pads) if any(p != (0, 0) for p in pads) else array


class PatchSampler:
    """Draws batches of (image, one-hot label) blocks from labelled cases.

    Over any run of patches, at least `foreground_share` of them (rounded down, counted
    from the first) contain a foreground voxel: each holds a random voxel of one foreground
    class, drawn uniformly among the classes present, so a small class is seen as often as a
    large one; the rest are placed uniformly. Volumes smaller than the patch are zero-padded
    (after normalisation, 0 is the volume's mean; the padding is labelled background).

    Args:
        cases: labelled cases (image (X, Y, Z, C), label (X, Y, Z)).
        patch_shape: block size (px, py, pz) in voxels.
        batch_size: blocks per batch.
        num_classes: classes including the background (depth of the one-hot labels).
        foreground_share: share of blocks forced to hold foreground, in [0, 1].
        augment: give each block a random augmentation (model.augment.augment_block).
        seed: seeds the placement, so a run is repeatable.
    """

    def __init__(
        self,
        cases: list[Case],
        *,
        patch_shape: tuple[int, int, int],
        batch_size: int,
        num_classes: int,
        foreground_share: float = 1 / 3,
        augment: bool = False,
        seed: int | None = None,
    ) -> None:
        if not cases:
            raise InputError("there are no training cases to sample patches from; add cases or change the split.")
        if not 0.0 <= foreground_share <= 1.0:
            raise InputError(f"the foreground share must be in [0, 1], got {foreground_share}.")
        if batch_size < 1 or any(s < 1 for s in patch_shape):
            raise InputError(f"batch size {batch_size} and patch shape {patch_shape} must be positive.")
        self.patch_shape = tuple(int(s) for s in patch_shape)
        self.batch_size = batch_size
        self.num_classes = num_classes
        self.foreground_share = foreground_share
        self.augment = augment
        self._rng = np.random.default_rng(seed)
        self._images = [pad_to(case.image, self.patch_shape) for case in cases]
        self._labels = [pad_to(case.label, self.patch_shape) for case in cases]
        # Each foreground class's voxel coordinates per case, found once (int32 keeps them small).
        self._coords: dict[int, dict[int, np.ndarray]] = {}
        for index, label in enumerate(self._labels):
            for value in np.unique(label[label > 0]):
                self._coords.setdefault(int(value), {})[index] = np.argwhere(label == value).astype(np.int32)
        self._classes = sorted(self._coords)
        self._with_foreground = sorted({i for cases in self._coords.values() for i in cases})
        self._drawn = 0

    def state(self) -> dict:
        """The sampler's position (JSON-safe): `set_state` on a sampler of the same cases goes on from it."""
        return {"rng": self._rng.bit_generator.state, "drawn": self._drawn}

    def set_state(self, state: dict) -> None:
        self._rng.bit_generator.state = state["rng"]
        self._drawn = int(state["drawn"])

    def next_batch(self) -> tuple[np.ndarray, np.ndarray]:
        """One batch: images float32 (B, px, py, pz, C), one-hot labels float32 (B, px, py, pz, K)."""
        images, labels = [], []
        for _ in range(self.batch_size):
            # Patch n is forced to foreground when floor((n+1)·share) steps up: exact share over any prefix.
            force = int((self._drawn + 1) * self.foreground_share) > int(self._drawn * self.foreground_share)
            self._drawn += 1
            image, label = self._patch(force and bool(self._with_foreground))
            if self.augment:
                image, label = augment_block(image, label, self._rng)
            images.append(image)
            labels.append(label)
        label_batch = np.stack(labels)
        one_hot = np.eye(self.num_classes, dtype=np.float32)[label_batch]
        return np.stack(images), one_hot

    def _patch(self, foreground: bool) -> tuple[np.ndarray, np.ndarray]:
        if foreground:
            # One class alone needs no draw, so single-class data samples as it always did.
            single = len(self._classes) == 1
            value = self._classes[0] if single else self._classes[self._rng.integers(len(self._classes))]
            cases = list(self._coords[value])
            index = cases[self._rng.integers(len(cases))]
            coords = self._coords[value][index]
            centre = coords[self._rng.integers(len(coords))]
        else:
            index = int(self._rng.integers(len(self._images)))
        shape = self._labels[index].shape
        corner = []
        for axis, (size, patch) in enumerate(zip(shape, self.patch_shape)):
            if foreground:
                # Any corner that keeps the chosen voxel inside the block, clipped into the volume.
                low = max(int(centre[axis]) - patch + 1, 0)
                high = min(int(centre[axis]), size - patch)
            else:
                low, high = 0, size - patch
            corner.append(int(self._rng.integers(low, high + 1)))
        window = tuple(slice(c, c + p) for c, p in zip(corner, self.patch_shape))
        return self._images[index][window], self._labels[index][window]
