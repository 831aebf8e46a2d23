"""Random augmentation of training blocks, on the fly (numpy): the same geometry for image and label.

Geometric: a flip of each in-plane axis with probability 1/2, and an in-plane rotation (up to
±15°) with a scaling (0.85-1.15) about the block's centre, both applied alike to every slice
(the slice axis is left alone: stacks of few, thick slices). The image is resampled linearly,
the label by nearest neighbour, from the same source coordinates, so they stay aligned; voxels
that come from outside the block are 0 (the volume's mean after normalisation) and background.
Intensity, per channel of the image only: a scale (0.9-1.1), a shift (±0.1), and a gamma
(0.7-1.5) applied to the channel rescaled to [0, 1].
"""

from __future__ import annotations

import numpy as np

MAX_ROTATION_DEGREES = 15.0
SCALE_RANGE = (0.85, 1.15)
INTENSITY_SCALE_RANGE = (0.9, 1.1)
INTENSITY_SHIFT = 0.1
GAMMA_RANGE = (0.7, 1.5)


def in_plane_coordinates(shape: tuple[int, int], angle: float, scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Source (x, y) coordinates, each (X, Y) float, of a rotation by `angle` (radians) and zoom by `scale`."""
    centre_x, centre_y = (shape[0] - 1) / 2, (shape[1] - 1) / 2
    x, y = np.meshgrid(np.arange(shape[0]) - centre_x, np.arange(shape[1]) - centre_y, indexing="ij")
    cos, sin = np.cos(angle) / scale, np.sin(angle) / scale
    return cos * x + sin * y + centre_x, -sin * x + cos * y + centre_y


def warp(array: np.ndarray, source: tuple[np.ndarray, np.ndarray], *, nearest: bool) -> np.ndarray:
    """`array` (X, Y, ...) sampled at in-plane `source` coordinates; outside the array is 0."""
    sx, sy = source
    size_x, size_y = array.shape[:2]
    if nearest:
        ix, iy = np.rint(sx).astype(np.int64), np.rint(sy).astype(np.int64)
        inside = (ix >= 0) & (ix < size_x) & (iy >= 0) & (iy < size_y)
        out = array[np.clip(ix, 0, size_x - 1), np.clip(iy, 0, size_y - 1)]
        out[~inside] = 0
        return out
    x0, y0 = np.floor(sx).astype(np.int64), np.floor(sy).astype(np.int64)
    fx, fy = sx - x0, sy - y0
    out = np.zeros(sx.shape + array.shape[2:], dtype=np.float32)
    for dx, dy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        ix, iy = x0 + dx, y0 + dy
        inside = (ix >= 0) & (ix < size_x) & (iy >= 0) & (iy < size_y)
        values = array[np.clip(ix, 0, size_x - 1), np.clip(iy, 0, size_y - 1)]
        w = (weight * inside).reshape(weight.shape + (1,) * (array.ndim - 2))
        out += (w * values).astype(np.float32)
    return out


def augment_block(image: np.ndarray, label: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """One augmented copy of a training block: image (X, Y, Z, C) float32, label (X, Y, Z) int."""
    for axis in (0, 1):
        if rng.random() < 0.5:
            image, label = np.flip(image, axis), np.flip(label, axis)
    angle = np.deg2rad(rng.uniform(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES))
    source = in_plane_coordinates(label.shape[:2], angle, rng.uniform(*SCALE_RANGE))
    image = warp(np.ascontiguousarray(image), source, nearest=False)
    label = warp(np.ascontiguousarray(label), source, nearest=True)
    channels = []
    for c in range(image.shape[-1]):
        channel = image[..., c] * rng.uniform(*INTENSITY_SCALE_RANGE) + rng.uniform(-INTENSITY_SHIFT, INTENSITY_SHIFT)
        low, high = channel.min(), channel.max()
        if high > low:  # gamma on [0, 1], then back to the channel's range
            unit = (channel - low) / (high - low)
            channel = unit ** rng.uniform(*GAMMA_RANGE) * (high - low) + low
        channels.append(channel)
    return np.stack(channels, axis=-1).astype(np.float32), label
