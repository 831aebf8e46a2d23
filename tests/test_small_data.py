"""Real-data shapes: a small foreground class is sampled as often as a large one, and volumes with fewer
slices or a smaller plane than the training block train and segment (padded, then cropped back)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np

from conftest import blob_case, write_nifti
from hpsearch.cli import main
from model.data import Case
from model.patches import PatchSampler


def test_each_foreground_class_is_drawn_about_equally_however_small():
    large = np.zeros((40, 40, 8), np.uint8)
    large[5:35, 5:35, 1:7] = 1  # 5,400 voxels of class 1
    small = np.zeros((40, 40, 8), np.uint8)
    small[30, 3, 4] = 2  # one voxel of class 2, in another case
    cases = [Case(f"c{i}", label[..., None].astype(np.float32), label, np.eye(4), None)
             for i, label in enumerate((large, small))]
    sampler = PatchSampler(cases, patch_shape=(8, 8, 8), batch_size=10, num_classes=3, foreground_share=1.0, seed=0)
    holding_small = 0
    for _ in range(40):
        _, labels = sampler.next_batch()
        holding_small += int((labels[..., 2].reshape(10, -1).max(axis=1) > 0).sum())
    # Half of the 400 forced blocks go to class 2 (binomial: 200 ± 10); by voxel count it would be 1 in 5,401.
    assert 160 <= holding_small <= 240, holding_small


def test_volumes_smaller_than_the_block_train_and_segment(tmp_path, capsys):
    """7 slices of 20×18 against a 32×32×16 block and a depth-3 network (which needs multiples of 8)."""
    rng = np.random.default_rng(2)
    root = tmp_path / "small"
    training = []
    for i in range(5):
        image, label = blob_case(rng, shape=(20, 18, 7))
        write_nifti(root / "imagesTr" / f"case_{i}.nii.gz", image)
        write_nifti(root / "labelsTr" / f"case_{i}.nii.gz", label)
        training.append({"image": f"./imagesTr/case_{i}.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "Small", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "blob"}, "training": training,
    }))
    params = tmp_path / "params.yaml"
    params.write_text("hyperparameters:\n  channels in first conv layer: 2\n")
    model = tmp_path / "model"
    assert main(["train", "--data", str(root), "--params", str(params), "--out", str(model), "--steps", "4",
                 "--eval-every", "2", "--patch", "32x32x16", "--depth", "3", "--seed", "0"]) == 0
    assert main(["segment", "--model", str(model), str(root / "imagesTr"), str(tmp_path / "masks")]) == 0
    for i in range(5):
        mask = nib.load(tmp_path / "masks" / f"case_{i}.nii.gz")
        assert mask.shape == (20, 18, 7)  # cropped back to the input's grid
        np.testing.assert_array_equal(mask.affine, nib.load(root / "imagesTr" / f"case_{i}.nii.gz").affine)
