"""Segmenting NIfTI files with a trained run: masks keep the input's affine and header geometry."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Callable

import nibabel as nib
import numpy as np

from model.data import NIFTI_ENDINGS, normalise, read_image
from model.errors import InputError
from model.inference import inference_model, predict_labels
from model.orientation import from_canonical
from model.run import Run

# nnU-Net names channel k of case CASE as CASE_000k.nii.gz.
_CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _stem(path: Path) -> str:
    for ending in NIFTI_ENDINGS:
        if path.name.endswith(ending):
            return path.name[: -len(ending)]
    return path.stem


def find_inputs(folder: Path, channels: int) -> dict[str, tuple[Path, ...]]:
    """Case name -> its image files in a folder (one file per case, or nnU-Net `_000k` channel files)."""
    files = sorted(p for p in folder.iterdir() if p.name.endswith(NIFTI_ENDINGS))
    if not files:
        raise InputError(f"{folder} holds no .nii or .nii.gz files; give a NIfTI file or a folder of them.")
    groups: dict[str, list[Path]] = {}
    for path in files:
        match = _CHANNEL_SUFFIX.match(_stem(path))
        if channels > 1 or (match and match["channel"] == "0000"):
            if not match:
                raise InputError(f"{path} lacks the _0000 channel suffix the {channels}-channel model needs.")
            groups.setdefault(match["case"], []).append(path)
        else:
            groups[_stem(path)] = [path]
    return {name: tuple(paths) for name, paths in groups.items()}


def write_mask(labels: np.ndarray, reference: nib.Nifti1Image, out: Path) -> None:
    """Save a uint8 mask, predicted in the canonical orientation, in the reference image's orientation with its
    affine and header; atomically (temp file, rename)."""
    header = reference.header.copy()
    header.set_data_dtype(np.uint8)
    labels = from_canonical(labels, reference.affine)
    mask = type(reference)(labels.astype(np.uint8), reference.affine, header)
    mask.header.set_slope_inter(1.0, 0.0)  # an image's intensity scaling must not rescale labels
    tmp = out.with_name(f".{out.name}.tmp{''.join(out.suffixes)}")
    try:
        nib.save(mask, tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)


def segment(
    run: Run,
    source: str | os.PathLike,
    target: str | os.PathLike,
    *,
    precision: str = "float32",
    progress: Callable[[int, int, str], None] | None = None,
) -> list[Path]:
    """Segment a NIfTI file (or every case in a folder) into `target` (a file or a folder); return the masks written.

    `precision` is inference_model's: "float32" (default) or "bfloat16".
    """
    source, target = Path(source), Path(target)
    channels = len(run.channel_names)
    if source.is_dir():
        jobs = [(files, target / f"{name}.nii.gz") for name, files in find_inputs(source, channels).items()]
        target.mkdir(parents=True, exist_ok=True)
    elif source.is_file():
        if target.is_dir():
            target = target / source.name
        if not target.name.endswith(NIFTI_ENDINGS):
            raise InputError(f"output {target} must end in .nii.gz or .nii.")
        jobs = [((source,), target)]
    else:
        raise InputError(f"{source} does not exist; give a NIfTI file or a folder of them.")
    taken = [out for _, out in jobs if out.exists()]
    if taken:
        raise InputError(f"{taken[0]} already exists; choose another output or delete it.")
    model = inference_model(run.model, precision)
    written = []
    for index, (files, out) in enumerate(jobs):
        image, reference = read_image(files, channels=channels)
        labels = predict_labels(model, normalise(image, run.channel_names), depth=run.config.depth)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_mask(labels, reference, out)
        written.append(out)
        if progress is not None:
            progress(index + 1, len(jobs), out.name)
    return written
