"""A trained model's folder: `model.keras`, the Table-1 `params.yaml`, and `run.json` (classes, training choices, IoU).

A folder is written under a temporary name and renamed at the end, so a failed write never
leaves half a model behind. Keras loads only in `load_run`, so `hpsearch train` checks its
input (params, output folder, dataset) before TensorFlow starts.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from model.data import split_cases
from model.errors import InputError
from model.params import Hyperparameters, dump_params, load_params
from model.config import TrainConfig

if TYPE_CHECKING:
    import keras

    from model.training import TrainResult

MODEL_FILE = "model.keras"
PARAMS_FILE = "params.yaml"
INFO_FILE = "run.json"


@dataclasses.dataclass
class Run:
    """A loaded model with what is needed to apply it: depth, class and channel names."""

    model: keras.Model
    params: Hyperparameters
    config: TrainConfig
    class_names: tuple[str, ...]
    channel_names: tuple[str, ...]
    info: dict

    def case_names(self, names: list[str], part: str) -> list[str]:
        """The dataset's case `names` in one part ("test", "val", or "all") of the split this model
        was trained with (its recorded seed and fractions)."""
        if part == "all":
            return list(names)
        recorded = self.info.get("split", {})
        split = split_cases(
            names,
            seed=recorded.get("seed", 0),
            val_fraction=recorded.get("val_fraction", 0.2),
            test_fraction=recorded.get("test_fraction", 0.2),
        )
        return list(split.test if part == "test" else split.val)


def check_new_folder(out: str | os.PathLike) -> Path:
    """Refuse an output folder that already holds files (nothing is overwritten)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise InputError(f"{out} already exists and is not empty; choose a new --out folder or delete it.")
    # The folder is made at the end; refuse now, not after the training, a place where it cannot be.
    existing = next((folder for folder in (out, *out.parents) if folder.exists()), Path.cwd())
    if not existing.is_dir():
        raise InputError(f"{existing} is a file, so the folder {out} cannot be made; choose another --out folder.")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise InputError(
            f"{out} cannot be written ({existing}: {error.strerror or error}); choose another --out folder."
        ) from None
    return out


def save_run(
    out: str | os.PathLike,
    result: TrainResult,
    params: Hyperparameters,
    config: TrainConfig,
    *,
    class_names: tuple[str, ...],
    channel_names: tuple[str, ...],
    extra: dict | None = None,
) -> Path:
    """Write the model, its hyperparameters and its metrics to the new folder `out`."""
    out = check_new_folder(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        result.model.save(staging / MODEL_FILE)
        dump_params(params, staging / PARAMS_FILE, header={"validation IoU": round(result.best.iou, 6)})
        info = {
            "class_names": list(class_names),
            "channel_names": list(channel_names),
            "config": dataclasses.asdict(config),
            "validation_iou": result.best.iou,
            "best_step": result.best.step,
            "final_validation_iou": result.final.iou,
            "per_class_iou": dict(zip(class_names, result.best.per_class)),
            "per_case_iou": result.best.per_case,
            "history": [{"step": e.step, "loss": e.loss, "iou": e.iou} for e in result.history],
            "train_seconds": result.seconds,
            **(extra or {}),
        }
        (staging / INFO_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        if out.exists():
            out.rmdir()  # empty, checked above
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def load_run(path: str | os.PathLike) -> Run:
    """Load a model folder written by `save_run` (Keras safe mode: no arbitrary code runs)."""
    path = Path(path)
    for name in (MODEL_FILE, PARAMS_FILE, INFO_FILE):
        if not (path / name).is_file():
            raise InputError(f"{path} is not a model folder (no {name}); give the --out folder of 'hpsearch train'.")
    import keras

    from model.dropout import BitsDropout
    from model.optimizer import FusedAdam
    from model.regularizers import L2
    from model.unet import SliceConv3D

    try:
        info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
        config = TrainConfig(**{**info["config"], "patch_shape": tuple(info["config"]["patch_shape"])})
        # SliceConv3D, BitsDropout, FusedAdam and L2 are hpsearch's own classes, named so that safe
        # mode loads them; safe mode still refuses any stored Python code (a Lambda layer). L2 goes
        # by its registered name: "L2" alone is Keras's own, which earlier models hold.
        model = keras.models.load_model(
            path / MODEL_FILE, compile=False, safe_mode=True,
            custom_objects={"SliceConv3D": SliceConv3D, "BitsDropout": BitsDropout, "FusedAdam": FusedAdam, "hpsearch>L2": L2},
        )
    except (ValueError, KeyError, TypeError, OSError) as error:
        if "safe_mode" in str(error):  # Keras refused a layer that would run stored Python code
            raise InputError(
                f"{path / MODEL_FILE} holds Python code (a Lambda layer), which hpsearch never runs: models load in "
                "Keras's safe mode; use a model folder written by 'hpsearch train'."
            ) from None
        detail = " ".join(str(error).split()) or type(error).__name__
        raise InputError(f"{path} holds a damaged model ({detail}); train it again.") from None
    return Run(
        model=model,
        params=load_params(path / PARAMS_FILE),
        config=config,
        class_names=tuple(info["class_names"]),
        channel_names=tuple(info["channel_names"]),
        info=info,
    )
