"""Tests for model.synth: synthetic short-axis cardiac MR stacks in the MSD layout."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest

from model import synth
from model.errors import InputError

SMALL = (32, 32, 10)


def _case(seed: int, shape=SMALL, myocardium: bool = False):
    return synth.make_case(shape, np.random.default_rng(seed), myocardium=myocardium)


def _load(root, entry):
    img = nib.load(root / entry["image"])
    lab = nib.load(root / entry["label"])
    return img, lab


# --------------------------------------------------------------------------- make_case


def test_make_case_types_shapes_and_spacing():
    image, label, spacing = _case(0)
    assert image.shape == SMALL and label.shape == SMALL
    assert image.dtype == np.float32
    assert label.dtype == np.uint8
    assert np.isfinite(image).all()
    assert image.min() >= 0.0 and image.max() < 5000.0  # MR-like magnitudes
    assert 300.0 < image[label == 1].mean() < 1500.0  # bright blood pool
    assert len(spacing) == 3 and all(isinstance(s, float) for s in spacing)
    sx, sy, sz = spacing
    assert sx == sy and 1.2 <= sx <= 1.6
    assert 8.0 <= sz <= 10.0 and sz > sx  # anisotropic: thick slices


def test_make_case_is_deterministic_for_a_seed():
    a_img, a_lab, a_sp = _case(7, myocardium=True)
    b_img, b_lab, b_sp = _case(7, myocardium=True)
    assert a_img.tobytes() == b_img.tobytes()
    assert a_lab.tobytes() == b_lab.tobytes()
    assert a_sp == b_sp
    c_img, c_lab, _ = _case(8, myocardium=True)
    assert not np.array_equal(a_img, c_img)
    assert not np.array_equal(a_lab, c_lab)


def test_myocardium_flag_changes_labels_only():
    img0, lab0, sp0 = _case(3)
    img1, lab1, sp1 = _case(3, myocardium=True)
    assert np.array_equal(img0, img1) and sp0 == sp1
    # the blood pool is the same; the ring becomes class 2
    assert np.array_equal(lab0 == 1, lab1 == 1)
    assert np.array_equal(lab1 == 2, (lab1 > 0) & (lab0 == 0))


@pytest.mark.parametrize("seed", range(6))
def test_labels_are_binary_without_myocardium(seed):
    _, label, _ = _case(seed)
    assert set(np.unique(label).tolist()) == {0, 1}


@pytest.mark.parametrize("seed", range(6))
def test_labels_have_three_classes_with_myocardium(seed):
    _, label, _ = _case(seed, myocardium=True)
    assert set(np.unique(label).tolist()) == {0, 1, 2}


@pytest.mark.parametrize("seed", range(8))
def test_left_ventricle_present_and_brighter(seed):
    image, label, _ = _case(seed, myocardium=True)
    nz = label.shape[2]
    slices_with_lv = sum(bool((label[:, :, z] == 1).any()) for z in range(nz))
    assert slices_with_lv >= 0.7 * nz
    # the LV shrinks from base to apex
    area = (label == 1).sum(axis=(0, 1))
    assert area[0] > area[-1]
    lv = image[label == 1].mean()
    assert lv > 1.5 * image[label == 2].mean()
    assert lv > 1.5 * image[label == 0].mean()


def test_not_a_pure_threshold_task():
    # Some background (RV blood, aorta, fat, organ blobs) is as bright as the blood pool.
    image, label, _ = synth.make_case((96, 96, 10), np.random.default_rng(1))
    lv_median = np.median(image[label == 1])
    bright_background = ((image > lv_median) & (label == 0)).sum()
    assert bright_background > 0.5 * (label == 1).sum()


@pytest.mark.parametrize(
    "shape", [(7, 32, 10), (32, 32, 4), (2000, 32, 10), (32, 32), (32, 32, 10, 1), (32.0, 32, 10)]
)
def test_make_case_refuses_bad_shapes(shape):
    with pytest.raises(InputError, match="shape"):
        synth.make_case(shape, np.random.default_rng(0))


# --------------------------------------------------------------------------- write_dataset


def test_write_dataset_layout_and_nifti_headers(tmp_path):
    out = tmp_path / "ds"
    root = synth.write_dataset(out, cases=3, shape=SMALL, seed=4, myocardium=True)
    assert root == out.absolute()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]  # no temporary left
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["name"] == "SyntheticCardiac"
    assert meta["tensorImageSize"] == "3D"
    assert meta["modality"] == {"0": "MRI"}
    assert meta["labels"] == {"0": "background", "1": "left ventricle", "2": "myocardium"}
    assert meta["numTraining"] == 3 and meta["numTest"] == 0 and meta["test"] == []
    assert meta["training"] == [
        {"image": f"./imagesTr/case_{i:03d}.nii.gz", "label": f"./labelsTr/case_{i:03d}.nii.gz"}
        for i in range(3)
    ]
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == [
        f"case_{i:03d}.nii.gz" for i in range(3)
    ]
    for i, entry in enumerate(meta["training"]):
        img, lab = _load(root, entry)
        assert img.shape == lab.shape == SMALL
        assert img.get_data_dtype() == np.float32
        assert lab.get_data_dtype() == np.uint8
        np.testing.assert_array_equal(img.affine, lab.affine)
        zooms = img.header.get_zooms()
        assert zooms == lab.header.get_zooms()
        assert zooms[0] == zooms[1] and zooms[2] > zooms[0]
        np.testing.assert_allclose(np.diag(img.affine)[:3], zooms, rtol=1e-6)
        assert int(img.header["qform_code"]) > 0 and int(img.header["sform_code"]) > 0
        np.testing.assert_allclose(img.get_qform(), img.affine, atol=1e-5)
        # the files hold exactly what make_case draws for (seed, i)
        image, label, spacing = synth.make_case(
            SMALL, synth._case_rng(4, i), myocardium=True
        )
        np.testing.assert_allclose(zooms, spacing, rtol=1e-6)
        assert np.asarray(img.dataobj).tobytes() == image.tobytes()
        assert np.asarray(lab.dataobj).tobytes() == label.tobytes()


def test_write_dataset_labels_without_myocardium(tmp_path):
    root = synth.write_dataset(tmp_path / "ds", cases=2, shape=SMALL, seed=0)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["labels"] == {"0": "background", "1": "left ventricle"}
    for entry in meta["training"]:
        _, lab = _load(root, entry)
        assert set(np.unique(np.asarray(lab.dataobj)).tolist()) == {0, 1}


def _arrays(root):
    meta = json.loads((root / "dataset.json").read_text())
    out = []
    for entry in meta["training"]:
        img, lab = _load(root, entry)
        out.append((np.asarray(img.dataobj), np.asarray(lab.dataobj), img.header.get_zooms()))
    return out


def test_write_dataset_is_deterministic(tmp_path):
    a = _arrays(synth.write_dataset(tmp_path / "a", cases=2, shape=SMALL, seed=11))
    b = _arrays(synth.write_dataset(tmp_path / "b", cases=2, shape=SMALL, seed=11))
    c = _arrays(synth.write_dataset(tmp_path / "c", cases=2, shape=SMALL, seed=12))
    for (ai, al, az), (bi, bl, bz) in zip(a, b, strict=True):
        assert ai.tobytes() == bi.tobytes() and al.tobytes() == bl.tobytes() and az == bz
    assert not np.array_equal(a[0][0], c[0][0])
    assert not np.array_equal(a[0][0], a[1][0])  # cases differ from each other


def test_case_does_not_depend_on_number_of_cases(tmp_path):
    one = _arrays(synth.write_dataset(tmp_path / "one", cases=1, shape=SMALL, seed=5))
    three = _arrays(synth.write_dataset(tmp_path / "three", cases=3, shape=SMALL, seed=5))
    assert one[0][0].tobytes() == three[0][0].tobytes()
    assert one[0][1].tobytes() == three[0][1].tobytes()
    assert one[0][2] == three[0][2]
    # and with shape=None the drawn shape of case 0 is the same too
    n1 = synth.write_dataset(tmp_path / "n1", cases=1, shape=None, seed=5)
    n2 = synth.write_dataset(tmp_path / "n2", cases=2, shape=None, seed=5)
    a = nib.load(n1 / "imagesTr" / "case_000.nii.gz")
    b = nib.load(n2 / "imagesTr" / "case_000.nii.gz")
    assert a.shape == b.shape
    assert np.asarray(a.dataobj).tobytes() == np.asarray(b.dataobj).tobytes()


def test_shape_none_draws_paper_like_shapes(tmp_path):
    # the shapes alone, from the same per-case generators write_dataset uses
    seen = set()
    for i in range(40):
        rng = synth._case_rng(0, i)
        seen.add((int(rng.choice(synth.IN_PLANE_SIZES)), int(rng.integers(10, 16))))
    assert {s for s, _ in seen} == {128, 192, 256}
    assert min(z for _, z in seen) == 10 and max(z for _, z in seen) == 15
    # and the written files follow that rule
    root = synth.write_dataset(tmp_path / "ds", cases=3, shape=None, seed=0)
    meta = json.loads((root / "dataset.json").read_text())
    for i, entry in enumerate(meta["training"]):
        img, lab = _load(root, entry)
        x, y, z = img.shape
        assert x == y and x in (128, 192, 256)
        assert 10 <= z <= 15
        assert lab.shape == img.shape
        rng = synth._case_rng(0, i)
        assert (x, z) == (int(rng.choice(synth.IN_PLANE_SIZES)), int(rng.integers(10, 16)))


def test_progress_is_called_after_each_case(tmp_path):
    calls = []

    def progress(done, total):
        calls.append((done, total))
        assert (tmp_path / "ds").exists() is False  # still in the temporary folder

    synth.write_dataset(tmp_path / "ds", cases=3, shape=SMALL, progress=progress)
    assert calls == [(1, 3), (2, 3), (3, 3)]


def test_default_shape_is_192_192_12(tmp_path, monkeypatch):
    seen = []
    real = synth.make_case

    def spy(shape, rng, **options):
        seen.append(tuple(shape))
        return real(SMALL, rng, **options)  # keep the test fast

    monkeypatch.setattr(synth, "make_case", spy)
    synth.write_dataset(tmp_path / "ds", cases=2)
    assert seen == [(192, 192, 12), (192, 192, 12)]


@pytest.mark.parametrize(
    "kwargs, word",
    [
        ({"cases": 0}, "cases"),
        ({"cases": -3}, "cases"),
        ({"cases": 2.5}, "cases"),
        ({"shape": (32, 32, 7)}, "shape"),
        ({"shape": (4, 32, 10)}, "shape"),
        ({"shape": (32, 2048, 10)}, "shape"),
        ({"shape": (32, 32)}, "shape"),
        ({"seed": -1}, "seed"),
        ({"myocardium": 1}, "myocardium"),
        ({"rv": "yes"}, "rv"),
        ({"channels": 3}, "channels"),
        ({"channels": 0}, "channels"),
        ({"channels": True}, "channels"),
    ],
)
def test_bad_arguments_raise_and_leave_nothing(tmp_path, kwargs, word):
    args = {"cases": 2, "shape": SMALL, **kwargs}
    with pytest.raises(InputError, match=word):
        synth.write_dataset(tmp_path / "new" / "ds", **args)
    assert list(tmp_path.iterdir()) == []


def test_non_empty_output_folder_is_refused(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(InputError, match="already exists and is not empty"):
        synth.write_dataset(out, cases=1, shape=SMALL)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert (out / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_output_that_is_a_file_is_refused(tmp_path):
    out = tmp_path / "ds"
    out.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        synth.write_dataset(out, cases=1, shape=SMALL)
    assert out.read_text() == "x"


def test_empty_existing_folder_is_used(tmp_path):
    out = tmp_path / "ds"
    out.mkdir()
    root = synth.write_dataset(out, cases=1, shape=SMALL)
    assert (root / "dataset.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds"]


def test_failure_midway_leaves_nothing_behind(tmp_path):
    def boom(done, total):
        if done == 2:
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        synth.write_dataset(tmp_path / "a" / "b" / "ds", cases=3, shape=SMALL, progress=boom)
    assert list(tmp_path.iterdir()) == []  # no ds, no .ds.tmp-*, no created parents


def test_missing_parents_are_created(tmp_path):
    root = synth.write_dataset(tmp_path / "a" / "b" / "ds", cases=1, shape=SMALL)
    assert root == (tmp_path / "a" / "b" / "ds").absolute()
    assert sorted(p.name for p in root.parent.iterdir()) == ["ds"]


# --------------------------------------------------------------------------- right ventricle and two channels


def _sizes(label: np.ndarray, classes: int) -> list[int]:
    return [int((label == value).sum()) for value in range(1, classes)]


@pytest.mark.parametrize("myocardium, rv_value", [(False, 2), (True, 3)])
def test_rv_is_the_next_class_and_leaves_the_left_ventricle_alone(myocardium, rv_value):
    _, plain, _ = _case(5, myocardium=myocardium)
    image, label, _ = synth.make_case(SMALL, np.random.default_rng(5), myocardium=myocardium, rv=True)
    assert set(np.unique(label).tolist()) == set(range(rv_value + 1))
    assert synth.class_names(myocardium=myocardium, rv=True)[rv_value] == "right ventricle"
    # the LV blood pool and myocardium are the same voxels with or without the RV class
    for value in range(1, rv_value):
        assert np.array_equal(label == value, plain == value)
    assert not (plain == rv_value).any()


@pytest.mark.parametrize("seed", range(6))
def test_rv_is_the_smallest_class_a_bright_crescent_beside_the_lv(seed):
    image, label, _ = synth.make_case((64, 64, 12), np.random.default_rng(seed), myocardium=True, rv=True)
    lv, myo, rv = _sizes(label, 4)
    assert 0 < rv < 0.8 * lv and rv < 0.8 * myo  # a class of its own, clearly smaller
    # blood-bright, like the LV blood pool, unlike the myocardium
    assert image[label == 3].mean() > 1.5 * image[label == 2].mean()
    # beside the LV: every basal RV slice touches the myocardium (one voxel's shift)
    ring = label == 2
    grown = ring | np.roll(ring, 1, 0) | np.roll(ring, -1, 0) | np.roll(ring, 1, 1) | np.roll(ring, -1, 1)
    assert ((label == 3) & grown).any(axis=(0, 1))[0]
    # shorter than the LV: it ends before the apex
    rv_slices = (label == 3).any(axis=(0, 1))
    lv_slices = (label == 1).any(axis=(0, 1))
    assert rv_slices[0] and rv_slices.sum() < lv_slices.sum()


def test_class_sizes_are_ordered_rv_lv_myocardium_over_a_dataset():
    totals = np.zeros(3)
    for seed in range(8):
        _, label, _ = synth.make_case((48, 48, 12), synth._case_rng(0, seed), myocardium=True, rv=True)
        totals += _sizes(label, 4)
    lv, myo, rv = totals
    assert rv < 0.6 * lv < 0.6 * myo  # very different sizes: RV well under the LV, the LV under the myocardium


def test_two_channels_keep_channel_0_and_add_a_second_contrast():
    one, label1, sp1 = synth.make_case(SMALL, np.random.default_rng(2), myocardium=True, rv=True)
    two, label2, sp2 = synth.make_case(SMALL, np.random.default_rng(2), myocardium=True, rv=True, channels=2)
    assert two.shape == (*SMALL, 2) and two.dtype == np.float32
    assert np.array_equal(two[..., 0], one) and np.array_equal(label1, label2) and sp1 == sp2
    second = two[..., 1]
    assert np.isfinite(second).all() and second.min() >= 0.0
    # another contrast, not a copy: myocardium brighter than blood, where channel 0 has it darker
    assert second[label2 == 2].mean() > second[label2 == 1].mean()
    assert one[label2 == 2].mean() < one[label2 == 1].mean()


def test_two_channel_dataset_loads_through_model_data(tmp_path):
    from model.data import load_dataset, load_train_data, split_cases

    root = synth.write_dataset(tmp_path / "ds", cases=4, shape=SMALL, seed=1, myocardium=True, rv=True, channels=2)
    meta = json.loads((root / "dataset.json").read_text())
    assert meta["tensorImageSize"] == "4D"
    assert meta["modality"] == {"0": "MRI", "1": "T1"}
    assert meta["labels"] == {"0": "background", "1": "left ventricle", "2": "myocardium", "3": "right ventricle"}
    img, lab = _load(root, meta["training"][0])
    assert img.shape == (*SMALL, 2) and lab.shape == SMALL  # 4D, channels last, as MSD Prostate
    assert img.header.get_zooms()[:3] == lab.header.get_zooms()
    np.testing.assert_array_equal(img.affine, lab.affine)

    dataset = load_dataset(root)
    assert dataset.channel_names == ("MRI", "T1") and dataset.num_classes == 4
    data = load_train_data(dataset, split_cases(dataset.case_names, seed=0, val_fraction=0.25, test_fraction=0.0))
    assert data.in_channels == 2
    case = data.train[0]
    assert case.image.shape == (*SMALL, 2) and case.label.shape == SMALL
    assert set(np.unique(case.label).tolist()) == {0, 1, 2, 3}
    # each channel z-scored on its own
    np.testing.assert_allclose(case.image.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
    np.testing.assert_allclose(case.image.std(axis=(0, 1, 2)), 1.0, atol=1e-3)


def test_synth_and_train_on_three_classes_and_two_channels(tmp_path, capsys):
    from hpsearch.cli import main

    data = tmp_path / "data"
    assert main(["data", "synth", str(data), "--cases", "4", "--shape", "16x16x16",
                 "--myocardium", "--rv", "--channels", "2"]) == 0
    meta = json.loads((data / "dataset.json").read_text())
    assert list(meta["labels"].values()) == ["background", "left ventricle", "myocardium", "right ventricle"]
    assert len(meta["modality"]) == 2
    params = tmp_path / "params.yaml"
    params.write_text("hyperparameters:\n  channels in first conv layer: 2\n")
    out = tmp_path / "model"
    assert main(["train", "--data", str(data), "--params", str(params), "--out", str(out),
                 "--steps", "2", "--eval-every", "2", "--patch", "16x16x16", "--depth", "1",
                 "--val-fraction", "0.25", "--test-fraction", "0.25", "--seed", "0"]) == 0
    info = json.loads((out / "run.json").read_text())
    assert info["class_names"] == ["background", "left ventricle", "myocardium", "right ventricle"]
    assert info["channel_names"] == ["MRI", "T1"]
    assert set(info["per_class_iou"]) == set(info["class_names"])
