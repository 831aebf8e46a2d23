"""Voxel arrays in one orientation: nibabel's closest canonical (RAS+), and back to a file's own.

Training and inference see every volume with its axes ordered and flipped as close to RAS+ as
the voxel grid allows (no resampling: only axis permutations and flips), so a network does not
have to learn each scanner's storage order. Masks are turned back to the input's orientation
and written with the input's affine.
"""

from __future__ import annotations

import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

_RAS = axcodes2ornt(("R", "A", "S"))


def to_canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """`data` (X, Y, Z[, C]) stored with `affine`, permuted and flipped to the closest canonical orientation."""
    return apply_orientation(data, ornt_transform(io_orientation(affine), _RAS))


def from_canonical(data: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The inverse of to_canonical: a canonical `data` back in the voxel order of a file with `affine`."""
    return apply_orientation(data, ornt_transform(_RAS, io_orientation(affine)))
