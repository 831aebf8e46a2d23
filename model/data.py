"""Datasets in the Medical Segmentation Decathlon layout: reading, checking, normalising, splitting.

Two forms of `dataset.json` are read:

- MSD v1: ``{"labels": {"0": "background", "1": ...}, "modality": {"0": "MRI"}, "training":
  [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}, ...]}``; a multi-modal
  image is one 4D file with the channels last.
- nnU-Net v2: ``{"channel_names": {"0": "T2"}, "labels": {"background": 0, ...},
  "file_ending": ".nii.gz"}``; case ``CASE`` is ``imagesTr/CASE_0000.nii.gz`` (one file per
  channel) and ``labelsTr/CASE.nii.gz``.

Arrays follow the NIfTI voxel order: images are float32 ``(X, Y, Z, C)``, labels uint8
``(X, Y, Z)``. Every problem with the data is an `InputError` that names the file.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np

from model.errors import InputError
from model.orientation import to_canonical

NIFTI_ENDINGS = (".nii.gz", ".nii")


@dataclasses.dataclass
class Case:
    """One volume: normalised image (X, Y, Z, C) float32 and label (X, Y, Z) uint8 or None, both in the closest
    canonical orientation; the affine and header are those of its image file."""

    name: str
    image: np.ndarray
    label: np.ndarray | None
    affine: np.ndarray
    header: nib.Nifti1Header


@dataclasses.dataclass(frozen=True)
class CaseFiles:
    """Where one case lives: one image file per channel (or one 4D file), and its label file."""

    name: str
    images: tuple[Path, ...]
    label: Path | None


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset's description: classes, channels and case files (volumes are read by `load_cases`)."""

    root: Path
    name: str
    class_names: tuple[str, ...]  # index = label value; 0 is the background
    channel_names: tuple[str, ...]
    cases: tuple[CaseFiles, ...]

    @property
    def num_classes(self) -> int:
        """Number of classes including the background."""
        return len(self.class_names)

    @property
    def case_names(self) -> list[str]:
        return [case.name for case in self.cases]

    def load_cases(self, names: list[str] | None = None) -> list[Case]:
        """Read and check the named cases (all by default), in the order given."""
        by_name = {case.name: case for case in self.cases}
        chosen = self.case_names if names is None else names
        missing = [name for name in chosen if name not in by_name]
        if missing:
            raise InputError(f"case {missing[0]!r} is not in the dataset at {self.root}; check the case names.")
        return [self._load(by_name[name]) for name in chosen]

    def _load(self, files: CaseFiles) -> Case:
        image, reference = read_image(files.images, channels=len(self.channel_names))
        label = None
        if files.label is not None:
            label = read_label(files.label, self.num_classes, shape=image.shape[:3])
        return Case(files.name, normalise(image, self.channel_names), label, reference.affine, reference.header)


CT_WINDOW = (-1000.0, 1000.0)  # Hounsfield units kept for a CT channel: air to dense bone


def is_ct(channel_name: str) -> bool:
    """Whether a dataset.json channel (modality) name says CT."""
    return channel_name.strip().upper() in ("CT", "COMPUTED TOMOGRAPHY")


def normalise(image: np.ndarray, channel_names: tuple[str, ...] | None = None) -> np.ndarray:
    """Normalise an (X, Y, Z, C) image per channel, as its modality asks; the same at training and inference.

    CT channels hold absolute Hounsfield units: they are clipped to CT_WINDOW and scaled into
    [-1, 1], the same for every volume. Every other channel (MR's arbitrary scanner units) gets
    a per-volume z-score. Without `channel_names`, every channel is z-scored.
    """
    image = image.astype(np.float32, copy=True)
    names = channel_names or ("image",) * image.shape[-1]
    for c, name in enumerate(names):
        channel = image[..., c]
        if is_ct(name):
            low, high = CT_WINDOW
            image[..., c] = (np.clip(channel, low, high) - (low + high) / 2) / ((high - low) / 2)
            continue
        mean, std = channel.mean(dtype=np.float64), channel.std(dtype=np.float64)
        # A constant channel has std 0: centre it and leave its scale alone.
        image[..., c] = (channel - mean) / (std if std > 0 else 1.0)
    return image


def _load_nifti(path: Path) -> tuple[nib.Nifti1Image, np.ndarray]:
    if not path.is_file():
        raise InputError(f"{path} does not exist; check the dataset's file list.")
    try:
        nifti = nib.load(path)
        if not isinstance(nifti, (nib.Nifti1Image, nib.Nifti2Image)):
            raise InputError(f"{path} is not a NIfTI file; convert it to .nii.gz.")
        data = np.asanyarray(nifti.dataobj)
    except InputError:
        raise
    except Exception as error:  # nibabel, gzip and zlib raise many types for a broken file
        reason = " ".join(str(error).split()).rstrip(".") or type(error).__name__
        raise InputError(f"{path} is not a readable NIfTI file ({reason}); replace or re-export it.") from None
    if 0 in data.shape:
        raise InputError(f"{path} has shape {tuple(data.shape)}, an empty volume; replace or re-export it.")
    if np.iscomplexobj(data):
        raise InputError(f"{path} holds complex values; save the magnitude image as real numbers.")
    # The orientation (model.orientation) comes from the affine: it must give every axis a finite, non-zero size.
    axes = np.asarray(nifti.affine, dtype=np.float64)[:3, :3]
    with np.errstate(all="ignore"):
        sizes = np.linalg.norm(axes, axis=0) if np.isfinite(axes).all() else np.full(3, np.nan)
    if not (np.isfinite(sizes).all() and (sizes > 0).all() and abs(np.linalg.det(axes)) > 0):
        zooms = tuple(float(z) for z in nifti.header.get_zooms()[:3])
        raise InputError(
            f"{path} has voxel sizes {zooms} or an orientation (qform/sform) that is not finite and non-zero; "
            "fix its header."
        )
    return nifti, data


def read_image(paths: tuple[Path, ...], *, channels: int) -> tuple[np.ndarray, nib.Nifti1Image]:
    """Read one case's image as float32 (X, Y, Z, C) in the closest canonical orientation (model.orientation);
    returns it with the first file's NIfTI image (its own orientation and affine)."""
    volumes = []
    reference = None
    for path in paths:
        nifti, data = _load_nifti(path)
        reference = reference or nifti
        if data.ndim == 3:
            data = data[..., np.newaxis]
        if data.ndim != 4:
            raise InputError(f"{path} has {data.ndim} dimensions; an image must be 3D (or 4D with channels last).")
        volumes.append(np.asarray(to_canonical(data, nifti.affine), dtype=np.float32))
    shapes = {volume.shape[:3] for volume in volumes}
    if len(shapes) > 1:
        raise InputError(f"the channel files {', '.join(str(p) for p in paths)} differ in shape {sorted(shapes)}.")
    image = np.concatenate(volumes, axis=-1)
    if image.shape[-1] != channels:
        raise InputError(
            f"{paths[0]} has {image.shape[-1]} channel(s) but the dataset declares {channels}; "
            "fix the image or dataset.json."
        )
    if not np.isfinite(image).all():
        raise InputError(f"{paths[0]} holds NaN or infinite values; fix the image.")
    return image, reference


def read_label(path: Path, num_classes: int, *, shape: tuple[int, ...]) -> np.ndarray:
    """Read a label volume as uint8 (X, Y, Z) in the closest canonical orientation, checking its shape
    (`shape`: its image's, canonical) and values."""
    nifti, data = _load_nifti(path)
    if data.ndim == 4 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim == 3:
        data = to_canonical(data, nifti.affine)
    if data.shape != tuple(shape):
        raise InputError(
            f"{path} has shape {tuple(data.shape)} but its image has {tuple(shape)}; "
            "image and label must have the same voxel grid."
        )
    values = np.unique(data)
    bad = values[(values < 0) | (values >= num_classes) | (values != np.round(values))]
    if bad.size:
        raise InputError(
            f"{path} holds label value {bad[0]:g}, outside the declared classes 0..{num_classes - 1}; "
            "fix the label or the 'labels' of dataset.json."
        )
    return data.astype(np.uint8)


def load_dataset(root: str | os.PathLike) -> Dataset:
    """Read `root/dataset.json` (MSD v1 or nnU-Net v2 form) and find the case files."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"dataset folder {root} does not exist; create one with 'hpsearch data synth {root}'.")
    json_path = root / "dataset.json"
    try:
        description = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{json_path} is missing; a dataset needs a dataset.json (MSD layout).") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise InputError(f"{json_path} is not valid JSON ({error}); fix the file.") from None
    if not isinstance(description, dict):
        raise InputError(f"{json_path} must hold a JSON object.")
    if "channel_names" in description or "file_ending" in description:
        dataset = _read_nnunet_v2(root, json_path, description)
    elif "training" in description:
        dataset = _read_msd_v1(root, json_path, description)
    else:
        raise InputError(
            f"{json_path} is missing the field 'training' (MSD v1) or 'channel_names' (nnU-Net v2); "
            "add the one of its form."
        )
    if not dataset.cases:
        raise InputError(f"the dataset at {root} has no cases; add images to imagesTr/ and labels to labelsTr/.")
    return dataset


def _require(json_path: Path, description: dict, field: str, kind: type) -> object:
    if field not in description:
        raise InputError(f"{json_path} is missing the field {field!r}; add it.")
    value = description[field]
    if not isinstance(value, kind):
        raise InputError(f"{json_path}: field {field!r} must be a JSON {kind.__name__.replace('dict', 'object')}.")
    return value


def _class_names(json_path: Path, by_value: dict[int, str]) -> tuple[str, ...]:
    values = sorted(by_value)
    if values != list(range(len(values))) or len(values) < 2:
        raise InputError(
            f"{json_path}: 'labels' must number the classes 0, 1, ... with 0 the background and at least "
            f"one foreground class, got values {values}."
        )
    return tuple(by_value[v] for v in values)


def _numbered_names(json_path: Path, field: str, mapping: dict, example: str) -> dict[int, str]:
    """{"0": "MRI", ...} -> {0: "MRI", ...}; InputError unless every key is a number and every value text."""
    try:
        numbered = {int(key): value for key, value in mapping.items()}
    except ValueError:
        raise InputError(f"{json_path}: {field!r} keys must be numbers like {example}.") from None
    for value in numbered.values():
        if not isinstance(value, str):
            raise InputError(f"{json_path}: {field!r} must map numbers to names like {example}, got {value!r}.")
    return numbered


def _entry_path(json_path: Path, root: Path, index: int, entry: dict, field: str) -> Path:
    value = entry[field]
    if not isinstance(value, str) or not value.strip() or "\x00" in value:
        raise InputError(f"{json_path}: training entry {index} has {field} {value!r}; give the path of a NIfTI file.")
    return (root / value).resolve()


def _read_msd_v1(root: Path, json_path: Path, description: dict) -> Dataset:
    labels = _require(json_path, description, "labels", dict)
    by_value = _numbered_names(json_path, "labels", labels, '{"0": "background", "1": "heart"}')
    modality = description.get("modality", {"0": "image"})
    if not isinstance(modality, dict) or not modality:
        raise InputError(f"{json_path}: field 'modality' must be an object like {{\"0\": \"MRI\"}}.")
    channels = _numbered_names(json_path, "modality", modality, '{"0": "MRI"}')
    if sorted(channels) != list(range(len(channels))):
        raise InputError(f"{json_path}: 'modality' must number the channels 0, 1, ..., got {sorted(channels)}.")
    channel_names = tuple(channels[c] for c in sorted(channels))
    training = _require(json_path, description, "training", list)
    cases = []
    for index, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            raise InputError(f"{json_path}: training entry {index} needs 'image' and 'label' paths.")
        image = _entry_path(json_path, root, index, entry, "image")
        label = _entry_path(json_path, root, index, entry, "label")
        cases.append(CaseFiles(_strip_ending(image.name), (image,), label))
    return Dataset(root, str(description.get("name", root.name)), _class_names(json_path, by_value), channel_names, tuple(cases))


def _read_nnunet_v2(root: Path, json_path: Path, description: dict) -> Dataset:
    channels = _require(json_path, description, "channel_names", dict)
    labels = _require(json_path, description, "labels", dict)
    ending = _require(json_path, description, "file_ending", str)
    by_value = {}
    for name, value in labels.items():
        if isinstance(value, bool) or not isinstance(value, int):
            raise InputError(
                f"{json_path}: label {name!r} must map to one class number (region-based labels are not supported)."
            )
        by_value[value] = str(name)
    if ending not in NIFTI_ENDINGS:
        raise InputError(f"{json_path}: 'file_ending' is {ending!r}; hpsearch reads NIfTI: use \".nii.gz\" or \".nii\".")
    numbered = _numbered_names(json_path, "channel_names", channels, '{"0": "T2"}')
    if not numbered or sorted(numbered) != list(range(len(numbered))):
        raise InputError(f"{json_path}: 'channel_names' must number the channels 0, 1, ..., got {sorted(numbered)}.")
    channel_names = tuple(numbered[c] for c in sorted(numbered))
    label_dir = root / "labelsTr"
    if not label_dir.is_dir():
        raise InputError(f"{label_dir} is missing; an nnU-Net dataset keeps its labels there.")
    cases = []
    for label in sorted(label_dir.glob(f"*{ending}")):
        name = label.name[: -len(ending)]
        images = tuple(root / "imagesTr" / f"{name}_{c:04d}{ending}" for c in range(len(channel_names)))
        for image in images:
            if not image.is_file():
                raise InputError(f"{image} is missing for label {label}; add it or remove the label.")
        cases.append(CaseFiles(name, images, label))
    return Dataset(root, str(description.get("name", root.name)), _class_names(json_path, by_value), channel_names, tuple(cases))


def _strip_ending(filename: str) -> str:
    for ending in NIFTI_ENDINGS:
        if filename.endswith(ending):
            return filename[: -len(ending)]
    return filename


@dataclasses.dataclass(frozen=True)
class Split:
    """Case names of each part of a train/validation/test split."""

    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]


def split_cases(
    names: list[str],
    *,
    seed: int = 0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    val: list[str] | None = None,
    test: list[str] | None = None,
) -> Split:
    """A deterministic split by case: the same names, seed and fractions give the same split.

    Explicit `val`/`test` lists take precedence over the fractions for their part. Every part
    that has a non-zero fraction gets at least one case; the training part is never empty.
    """
    for label, fraction in (("validation", val_fraction), ("test", test_fraction)):
        if not 0.0 <= fraction < 1.0:
            raise InputError(f"the {label} fraction must be in [0, 1), got {fraction}.")
    ordered = sorted(set(names))
    for label, chosen in (("validation", val), ("test", test)):
        unknown = [n for n in chosen or [] if n not in ordered]
        if unknown:
            raise InputError(f"{label} case {unknown[0]!r} is not in the dataset; check the case list.")
    fixed = set(val or []) | set(test or [])
    rest = [n for n in ordered if n not in fixed]
    order = [rest[i] for i in np.random.default_rng(seed).permutation(len(rest))]
    count = len(ordered)

    def take(fraction: float) -> list[str]:
        wanted = max(1, round(count * fraction)) if fraction > 0 else 0
        taken, order[:] = order[:wanted], order[wanted:]
        return taken

    val_names = list(val) if val is not None else take(val_fraction)
    test_names = list(test) if test is not None else take(test_fraction)
    if not order:
        raise InputError(
            f"{count} case(s) leave none for training after the validation and test parts; "
            "add cases or lower the fractions."
        )
    return Split(tuple(sorted(order)), tuple(sorted(val_names)), tuple(sorted(test_names)))


@dataclasses.dataclass
class TrainData:
    """Normalised, labelled cases for training and validation, the class names (0 = background) and channel names."""

    train: list[Case]
    val: list[Case]
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...] = ("image",)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def in_channels(self) -> int:
        return self.train[0].image.shape[-1]


def load_train_data(dataset: Dataset, split: Split) -> TrainData:
    """Read the training and validation cases of `split` from `dataset`."""
    return TrainData(
        dataset.load_cases(list(split.train)),
        dataset.load_cases(list(split.val)),
        dataset.class_names,
        dataset.channel_names,
    )
