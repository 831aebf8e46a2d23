"""Real labelled MRI from an installable package, as an MSD dataset of axial slabs.

nilearn's wheel ships the MNI ICBM152 2009c template: a T1-weighted volume averaged from 152 adults'
scans, with grey- and white-matter probability maps (1 mm, 197×233×189). This script takes those
three files from the wheel (downloaded with pip, not installed: nilearn's own dependencies are not
needed), labels each voxel by its most probable tissue (background 0, grey matter 1, white matter 2:
two foreground classes of similar size), halves the in-plane resolution (2 mm, 99×117) and cuts
`--slabs` axial slabs of `--slices` slices from the middle of the brain, each a case of the Medical
Segmentation Decathlon layout with its own affine. The slabs come from one template, so they are
real MR intensities and anatomy, not independent subjects.

    python benchmarks/brain_slabs.py data/brain                      # 9 slabs of 12 slices
    python benchmarks/loss_choice.py --data data/brain --steps 1000 --seeds 3
"""

from __future__ import annotations

import argparse
import gzip
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np

NILEARN = "nilearn==0.14.1"
MEMBERS = {
    "t1": "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "nilearn/datasets/data/mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "nilearn/datasets/data/mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}


def template(cache: Path) -> dict[str, nib.Nifti1Image]:
    """The three NIfTI volumes of nilearn's wheel (fetched into `cache` once)."""
    wheels = sorted(cache.glob("nilearn-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", NILEARN, "-d", str(cache)],
                       check=True)
        wheels = sorted(cache.glob("nilearn-*.whl"))
    with zipfile.ZipFile(wheels[-1]) as wheel:
        return {name: nib.Nifti1Image.from_bytes(gzip.decompress(wheel.read(member))) for name, member in MEMBERS.items()}


def halve_in_plane(volume: np.ndarray) -> np.ndarray:
    """Mean of 2×2 in-plane blocks: (X, Y, Z) -> (X // 2, Y // 2, Z)."""
    x, y = volume.shape[0] // 2 * 2, volume.shape[1] // 2 * 2
    v = volume[:x, :y].astype(np.float64)
    return (v[0::2, 0::2] + v[1::2, 0::2] + v[0::2, 1::2] + v[1::2, 1::2]) / 4


def write(out: Path, slabs: int, slices: int, cache: Path) -> Path:
    volumes = template(cache)
    t1 = halve_in_plane(np.asarray(volumes["t1"].dataobj))
    gm = halve_in_plane(np.asarray(volumes["gm"].dataobj))
    wm = halve_in_plane(np.asarray(volumes["wm"].dataobj))
    background = np.clip(1.0 - gm - wm, 0.0, 1.0)
    label = np.argmax(np.stack([background, gm, wm]), axis=0).astype(np.uint8)
    affine = volumes["t1"].affine @ np.diag([2.0, 2.0, 1.0, 1.0])
    brain = np.flatnonzero(label.any(axis=(0, 1)))
    first = (brain[0] + brain[-1]) // 2 - slabs * slices // 2
    if first < 0 or first + slabs * slices > label.shape[2]:
        raise SystemExit(f"{slabs} slabs of {slices} slices do not fit in the template's {label.shape[2]} slices.")
    out.mkdir(parents=True, exist_ok=False)
    training = []
    for i in range(slabs):
        z = first + i * slices
        shift = np.eye(4)
        shift[2, 3] = z  # the slab's first slice, in the template's voxels
        name = f"brain_{i + 1:03d}.nii.gz"
        for folder, data in (("imagesTr", t1[..., z:z + slices].astype(np.float32)), ("labelsTr", label[..., z:z + slices])):
            (out / folder).mkdir(exist_ok=True)
            nib.save(nib.Nifti1Image(data, affine @ shift), out / folder / name)
        training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
    description = {
        "name": "ICBM152 slabs",
        "description": "MNI ICBM152 2009c T1 template (nilearn), labelled by tissue probability; benchmarks/brain_slabs.py",
        "modality": {"0": "MRI"},
        "labels": {"0": "background", "1": "grey matter", "2": "white matter"},
        "numTraining": slabs,
        "training": training,
        "test": [],
    }
    (out / "dataset.json").write_text(json.dumps(description, indent=2) + "\n")
    sizes = np.bincount(label[..., first:first + slabs * slices].ravel(), minlength=3)
    print(f"wrote {slabs} slabs of {t1.shape[0]}×{t1.shape[1]}×{slices} to {out}; voxels: background {sizes[0]}, "
          f"grey matter {sizes[1]}, white matter {sizes[2]}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out", type=Path, help="a new folder")
    parser.add_argument("--slabs", type=int, default=9)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "hpsearch-nilearn",
                        help="where the nilearn wheel is kept")
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    write(args.out, args.slabs, args.slices, args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
