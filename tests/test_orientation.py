"""Volumes are read in the closest canonical orientation and masks written back in the input's own."""

from __future__ import annotations

import itertools

import nibabel as nib
import numpy as np
import pytest

from hpsearch.cli import main
from model.data import read_image, read_label
from model.orientation import from_canonical, to_canonical
from test_cli import tiny_run  # noqa: F401  (the module's trained tiny model, as a fixture)

# Every axis order and flip: the 48 orientations a voxel grid can be stored in.
ORIENTATIONS = [
    np.array([[axis, flip] for axis, flip in zip(order, flips)], dtype=float)
    for order in itertools.permutations(range(3)) for flips in itertools.product((1, -1), repeat=3)
]


@pytest.mark.parametrize("ornt", ORIENTATIONS, ids=[str(o[:, 0] * o[:, 1]) for o in ORIENTATIONS])
def test_a_volume_stored_in_any_orientation_reads_the_same(tmp_path, ornt):
    rng = np.random.default_rng(0)
    image = nib.Nifti1Image(rng.normal(size=(6, 5, 4)).astype(np.float32), np.diag([1.5, 1.5, 8.0, 1.0]))
    label = nib.Nifti1Image((rng.random((6, 5, 4)) > 0.5).astype(np.uint8), image.affine)
    stored_image, stored_label = image.as_reoriented(ornt), label.as_reoriented(ornt)
    nib.save(stored_image, tmp_path / "image.nii.gz")
    nib.save(stored_label, tmp_path / "label.nii.gz")
    read, _ = read_image((tmp_path / "image.nii.gz",), channels=1)
    np.testing.assert_array_equal(read[..., 0], image.get_fdata(dtype=np.float32))
    np.testing.assert_array_equal(read_label(tmp_path / "label.nii.gz", 2, shape=read.shape[:3]), label.get_fdata())
    # and back: the stored voxel order again
    np.testing.assert_array_equal(from_canonical(read[..., 0], stored_image.affine), stored_image.get_fdata())
    assert to_canonical(np.asarray(stored_label.dataobj), stored_label.affine).shape == label.shape


def test_a_mask_comes_back_in_the_inputs_orientation_and_affine(tiny_run, synth_dataset, tmp_path):  # noqa: F811
    source = synth_dataset / "imagesTr" / "case_000.nii.gz"
    original = nib.load(source)
    turned = original.as_reoriented(np.array([[1, -1], [2, 1], [0, -1]], dtype=float))  # another scanner's order
    nib.save(turned, tmp_path / "turned.nii.gz")
    assert main(["segment", "--model", str(tiny_run), str(source), str(tmp_path / "a.nii.gz")]) == 0
    assert main(["segment", "--model", str(tiny_run), str(tmp_path / "turned.nii.gz"), str(tmp_path / "b.nii.gz")]) == 0
    mask_a, mask_b = nib.load(tmp_path / "a.nii.gz"), nib.load(tmp_path / "b.nii.gz")
    stored = nib.load(tmp_path / "turned.nii.gz")
    np.testing.assert_array_equal(mask_b.affine, stored.affine)  # the mask's affine is its image's
    assert mask_b.shape == stored.shape
    # The same voxels segmented the same way, wherever they are stored.
    np.testing.assert_array_equal(np.asarray(nib.as_closest_canonical(mask_b).dataobj), np.asarray(mask_a.dataobj))
