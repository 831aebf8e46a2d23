"""How to train, apart from Table 1: steps, blocks, loss and the other choices (no Keras import here).

Kept free of Keras so the search launcher can read and check a study without loading TensorFlow.
"""

from __future__ import annotations

import dataclasses

from model.errors import InputError

BLOCKS = ("factorized", "full")
LOSSES = ("joint", "per_class", "per_class_ce")
CLIP_MODES = ("global", "per_tensor")
PRECISIONS = ("float32", "bfloat16")  # of inference (model/inference.py)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """How to train, apart from the hyperparameters of Table 1.

    Args:
        steps: training steps (batches).
        eval_every: validate on the whole validation volumes every this many steps (and at the end).
        patch_shape: training block size (px, py, pz) in voxels; each a multiple of 2**depth.
        batch_size: blocks per step.
        depth: pooling steps of the U-Net.
        block: "factorized" (the paper's) or "full" (3×3×3).
        loss: "joint" (the paper's: classes summed)
            or "per_class" (mean of the per-class soft IoUs), or "per_class_ce" (per_class plus
            categorical cross-entropy, the pairing nnU-Net trains with; the default: on two foreground
            classes it lost no class where joint lost one, benchmarks/loss_choice.py).
        clip: "global" clips the norm of all gradients together to `clip_norm`; "per_tensor"
            clips each variable's gradient on its own.
        foreground_share: share of training blocks that hold foreground.
        augment: augment training blocks on the fly (model/augment.py): flips, in-plane rotation
            and scaling, intensity scale, shift and gamma.
        checkpoint_every: evaluations between two checkpoints of a run that asks for them
            (train's on_checkpoint; a search stores them with each trial); 0 for none.
        seed: seeds initialisation and block sampling; None draws a fresh one.
        deterministic: also make TensorFlow's ops deterministic (slower), for repeatable runs.
    """

    steps: int = 5000
    eval_every: int = 250
    patch_shape: tuple[int, int, int] = (64, 64, 16)
    batch_size: int = 2
    depth: int = 3
    block: str = "factorized"
    loss: str = "per_class_ce"
    clip: str = "global"
    foreground_share: float = 1 / 3
    augment: bool = False
    checkpoint_every: int = 2
    seed: int | None = 0
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1 or self.batch_size < 1 or self.depth < 1:
            raise InputError(
                f"steps ({self.steps}), eval_every ({self.eval_every}), batch_size ({self.batch_size}) "
                f"and depth ({self.depth}) must all be at least 1."
            )
        if self.checkpoint_every < 0:
            raise InputError(f"checkpoint_every ({self.checkpoint_every}) must be 0 (none) or more evaluations.")
        multiple = 2**self.depth
        if len(self.patch_shape) != 3 or any(s < 1 or s % multiple for s in self.patch_shape):
            raise InputError(
                f"patch shape {tuple(self.patch_shape)} must be three sizes, each a multiple of {multiple} "
                f"(2**depth with depth {self.depth})."
            )
        for field, value, allowed in (("block", self.block, BLOCKS), ("loss", self.loss, LOSSES), ("clip", self.clip, CLIP_MODES)):
            if value not in allowed:
                raise InputError(f"{field} must be one of {', '.join(allowed)}, got {value!r}.")
