"""Reading MSD v1 and nnU-Net v2 datasets, the checks on bad data, normalisation, the split, patches."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from model.data import Case, load_dataset, normalise, split_cases
from model.errors import InputError
from model.patches import PatchSampler

from conftest import blob_case, write_nifti


def test_reads_msd_v1(msd_v1):
    dataset = load_dataset(msd_v1)
    assert dataset.case_names == [f"case_{i}" for i in range(5)]
    assert dataset.class_names == ("background", "blob")
    assert dataset.channel_names == ("MRI",)
    case = dataset.load_cases(["case_2"])[0]
    assert case.image.shape == (20, 18, 10, 1) and case.image.dtype == np.float32
    assert case.label.shape == (20, 18, 10) and case.label.dtype == np.uint8
    assert set(np.unique(case.label)) == {0, 1}
    np.testing.assert_allclose(case.affine, np.diag([1.5, 1.5, 8.0, 1.0]))


def test_reads_nnunet_v2_with_two_channels_and_three_classes(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "Dataset001_Heart"
    for name in ("heart_a", "heart_b"):
        image, label = blob_case(rng, classes=3)
        write_nifti(root / "imagesTr" / f"{name}_0000.nii.gz", image)
        write_nifti(root / "imagesTr" / f"{name}_0001.nii.gz", image * 2)
        write_nifti(root / "labelsTr" / f"{name}.nii.gz", label)
    (root / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "cine", "1": "late"},
        "labels": {"background": 0, "LV": 1, "myocardium": 2},
        "numTraining": 2,
        "file_ending": ".nii.gz",
    }))
    dataset = load_dataset(root)
    assert dataset.case_names == ["heart_a", "heart_b"]
    assert dataset.class_names == ("background", "LV", "myocardium")
    assert dataset.num_classes == 3
    case = dataset.load_cases(["heart_b"])[0]
    assert case.image.shape == (20, 18, 10, 2)
    assert set(np.unique(case.label)) == {0, 1, 2}


def test_normalise_is_a_per_channel_z_score():
    rng = np.random.default_rng(0)
    image = np.stack([rng.normal(500, 80, (8, 8, 4)), rng.normal(-3, 0.5, (8, 8, 4))], axis=-1)
    normalised = normalise(image)
    np.testing.assert_allclose(normalised.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    np.testing.assert_allclose(normalised.std(axis=(0, 1, 2)), 1.0, atol=1e-5)
    assert np.isfinite(normalise(np.full((4, 4, 4, 1), 7.0))).all()


# ---- bad data: one sentence naming the file and the problem


def _set_training(root, entries):
    description = json.loads((root / "dataset.json").read_text())
    description["training"] = entries
    (root / "dataset.json").write_text(json.dumps(description))


def test_corrupted_gzip_names_the_file(msd_v1):
    path = msd_v1 / "imagesTr" / "case_1.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti at all" * 10)[:40])
    with pytest.raises(InputError, match=r"case_1\.nii\.gz is not a readable NIfTI file"):
        load_dataset(msd_v1).load_cases()


def test_non_nifti_file_names_the_file(msd_v1):
    path = msd_v1 / "labelsTr" / "case_0.nii.gz"
    path.write_text("hello")
    with pytest.raises(InputError, match=r"labelsTr/case_0\.nii\.gz is not a readable NIfTI file"):
        load_dataset(msd_v1).load_cases(["case_0"])


def test_shape_mismatch_names_the_label(msd_v1):
    write_nifti(msd_v1 / "labelsTr" / "case_3.nii.gz", np.zeros((20, 18, 9), np.uint8))
    with pytest.raises(InputError, match=r"case_3\.nii\.gz has shape \(20, 18, 9\) but its image has \(20, 18, 10\)"):
        load_dataset(msd_v1).load_cases(["case_3"])


def test_label_outside_classes_names_the_value(msd_v1):
    label = np.zeros((20, 18, 10), np.uint8)
    label[2, 2, 2] = 4
    write_nifti(msd_v1 / "labelsTr" / "case_4.nii.gz", label)
    with pytest.raises(InputError, match=r"case_4\.nii\.gz holds label value 4, outside the declared classes 0\.\.1"):
        load_dataset(msd_v1).load_cases(["case_4"])


def test_dataset_with_no_cases(msd_v1):
    _set_training(msd_v1, [])
    with pytest.raises(InputError, match="has no cases"):
        load_dataset(msd_v1)


@pytest.mark.parametrize("field", ["labels", "training"])
def test_missing_dataset_json_field(msd_v1, field):
    description = json.loads((msd_v1 / "dataset.json").read_text())
    del description[field]
    (msd_v1 / "dataset.json").write_text(json.dumps(description))
    with pytest.raises(InputError, match=f"missing the field '{field}'"):
        load_dataset(msd_v1)


def test_missing_nnunet_field(tmp_path):
    (tmp_path / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"}, "labels": {"background": 0, "a": 1}}))
    with pytest.raises(InputError, match="missing the field 'file_ending'"):
        load_dataset(tmp_path)


def test_missing_dataset_json_and_folder(tmp_path):
    with pytest.raises(InputError, match="dataset.json is missing"):
        load_dataset(tmp_path)
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(tmp_path / "nowhere")


def test_missing_image_file(msd_v1):
    (msd_v1 / "imagesTr" / "case_2.nii.gz").unlink()
    with pytest.raises(InputError, match=r"case_2\.nii\.gz does not exist"):
        load_dataset(msd_v1).load_cases()


# ---- split


def test_split_is_deterministic_and_disjoint():
    names = [f"c{i:02d}" for i in range(20)]
    first = split_cases(names, seed=7, val_fraction=0.2, test_fraction=0.1)
    again = split_cases(list(reversed(names)), seed=7, val_fraction=0.2, test_fraction=0.1)
    other = split_cases(names, seed=8, val_fraction=0.2, test_fraction=0.1)
    assert first == again
    assert first != other
    assert (len(first.train), len(first.val), len(first.test)) == (14, 4, 2)
    parts = set(first.train) | set(first.val) | set(first.test)
    assert parts == set(names) and len(first.train) + len(first.val) + len(first.test) == 20


def test_split_with_explicit_lists():
    names = [f"c{i}" for i in range(6)]
    split = split_cases(names, val=["c0"], test=["c5", "c4"])
    assert split.val == ("c0",) and split.test == ("c4", "c5")
    assert split.train == ("c1", "c2", "c3")


def test_split_refuses_too_few_cases():
    with pytest.raises(InputError, match="leave none for training"):
        split_cases(["a", "b"], val_fraction=0.2, test_fraction=0.2)


# ---- patches


def _case(label: np.ndarray) -> Case:
    return Case("c", label[..., None].astype(np.float32), label, np.eye(4), None)


def test_patches_guarantee_the_foreground_share_and_pad_small_volumes():
    label = np.zeros((30, 30, 6), np.uint8)
    label[3, 4, 2] = 1  # a single foreground voxel: random blocks would rarely hit it
    sampler = PatchSampler([_case(label)], patch_shape=(8, 8, 8), batch_size=3, num_classes=2, seed=0)
    with_foreground = 0
    for _ in range(20):
        images, labels = sampler.next_batch()
        assert images.shape == (3, 8, 8, 8, 1) and labels.shape == (3, 8, 8, 8, 2)
        np.testing.assert_array_equal(labels.sum(axis=-1), 1.0)  # one-hot
        with_foreground += int((labels[..., 1].reshape(3, -1).max(axis=1) > 0).sum())
    assert with_foreground >= 20  # exactly one in three of 60 blocks is forced


def test_patches_are_repeatable_for_a_seed():
    rng = np.random.default_rng(0)
    _, label = blob_case(rng)
    batches = [
        PatchSampler([_case(label)], patch_shape=(8, 8, 8), batch_size=2, num_classes=2, seed=5).next_batch()[1]
        for _ in range(2)
    ]
    np.testing.assert_array_equal(*batches)
