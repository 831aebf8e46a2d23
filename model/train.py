"""Training one U-Net: Adam with gradient clipping on sampled blocks, whole-volume validation every K steps.

The seam to the search service is `train(params, data, config, on_eval=...)`: `on_eval(step,
iou)` is called after every evaluation and may raise (a pruner does) to stop the run.
"""

from __future__ import annotations

import dataclasses
import math
import time
from typing import Callable

import keras
import numpy as np

from model.data import Case, TrainData
from model.errors import InputError, TrainingDiverged
from model.inference import evaluate_cases
from model.losses import LOSSES, get_loss
from model.metrics import iou_from_counts, mean_foreground_iou
from model.params import Hyperparameters
from model.patches import PatchSampler
from model.unet import BLOCKS, build_unet

CLIP_MODES = ("global", "per_tensor")


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
        loss: "per_class" (mean of per-class soft IoU) or "joint" (the paper's, classes summed).
        clip: "global" clips the norm of all gradients together to `clip_norm`; "per_tensor"
            clips each variable's gradient on its own.
        foreground_share: share of training blocks that hold foreground.
        seed: seeds initialisation and block sampling; None draws a fresh one.
        deterministic: also make TensorFlow's ops deterministic (slower), for repeatable runs.
    """

    steps: int = 5000
    eval_every: int = 250
    patch_shape: tuple[int, int, int] = (64, 64, 16)
    batch_size: int = 2
    depth: int = 3
    block: str = "factorized"
    loss: str = "per_class"
    clip: str = "global"
    foreground_share: float = 1 / 3
    seed: int | None = 0
    deterministic: bool = False

    def __post_init__(self) -> None:
        if self.steps < 1 or self.eval_every < 1 or self.batch_size < 1 or self.depth < 1:
            raise InputError(
                f"steps ({self.steps}), eval_every ({self.eval_every}), batch_size ({self.batch_size}) "
                f"and depth ({self.depth}) must all be at least 1."
            )
        multiple = 2**self.depth
        if len(self.patch_shape) != 3 or any(s < 1 or s % multiple for s in self.patch_shape):
            raise InputError(
                f"patch shape {tuple(self.patch_shape)} must be three sizes, each a multiple of {multiple} "
                f"(2**depth with depth {self.depth})."
            )
        for field, value, allowed in (("block", self.block, BLOCKS), ("loss", self.loss, LOSSES), ("clip", self.clip, CLIP_MODES)):
            if value not in allowed:
                raise InputError(f"{field} must be one of {', '.join(allowed)}, got {value!r}.")


@dataclasses.dataclass
class Evaluation:
    """Validation IoU at one step: mean over foreground classes, per class (incl. background), per case."""

    step: int
    loss: float
    iou: float
    per_class: list[float]
    per_case: dict[str, float]


@dataclasses.dataclass
class TrainResult:
    """The trained model (best validation weights restored) and what the run measured."""

    model: keras.Model
    best: Evaluation
    final: Evaluation
    history: list[Evaluation]
    seconds: float
    steps: int


def evaluate(model, cases: list[Case], *, depth: int, num_classes: int, step: int = 0, loss: float = math.nan) -> Evaluation:
    """Hard-argmax IoU over all voxels of `cases`, per class and per case."""
    counts = evaluate_cases(model, cases, depth=depth, num_classes=num_classes)
    pooled = sum(counts.values())
    return Evaluation(
        step=step,
        loss=loss,
        iou=mean_foreground_iou(pooled),
        per_class=[float(v) for v in iou_from_counts(pooled)],
        per_case={name: mean_foreground_iou(c) for name, c in counts.items()},
    )


def make_optimizer(params: Hyperparameters, clip: str) -> keras.optimizers.Optimizer:
    """Adam with the paper's learning rate and betas, clipping gradients by norm."""
    clipping = {"global_clipnorm": params.clip_norm} if clip == "global" else {"clipnorm": params.clip_norm}
    return keras.optimizers.Adam(
        learning_rate=params.learning_rate, beta_1=params.beta1, beta_2=params.beta2, **clipping
    )


def train(
    params: Hyperparameters,
    data: TrainData,
    config: TrainConfig,
    *,
    on_eval: Callable[[int, float], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
) -> TrainResult:
    """Train a U-Net for `config.steps` steps; return it with its best validation weights.

    Args:
        params: Table 1 hyperparameters.
        data: training and validation cases.
        config: steps, evaluation interval, block size and the other training choices.
        on_eval: called as on_eval(step, validation IoU) after each evaluation; may raise to stop.
        on_step: called as on_step(step, loss) after each step (progress display).

    Raises:
        TrainingDiverged: the loss became NaN or infinite.
    """
    if not data.val:
        raise InputError("there are no validation cases; the split needs at least one to measure IoU.")
    if config.seed is not None:
        keras.utils.set_random_seed(config.seed)
    if config.deterministic:
        _enable_op_determinism()
    model = build_unet(
        in_channels=data.in_channels,
        num_classes=data.num_classes,
        channels=params.channels,
        depth=config.depth,
        keep_prob=params.keep_prob,
        l2=params.l2,
        block=config.block,
    )
    # jit_compile="auto" leaves XLA off on CPU-only machines, where it is several times slower here.
    model.compile(optimizer=make_optimizer(params, config.clip), loss=get_loss(config.loss), jit_compile="auto")
    sampler = PatchSampler(
        data.train,
        patch_shape=config.patch_shape,
        batch_size=config.batch_size,
        num_classes=data.num_classes,
        foreground_share=config.foreground_share,
        seed=config.seed,
    )
    started = time.perf_counter()
    history: list[Evaluation] = []
    best: Evaluation | None = None
    best_weights = None
    recent_losses: list[float] = []
    for step in range(1, config.steps + 1):
        images, labels = sampler.next_batch()
        loss = float(model.train_on_batch(images, labels, return_dict=True)["loss"])
        if not math.isfinite(loss):
            raise TrainingDiverged(f"the training loss became {loss} at step {step}; try a lower learning rate.")
        recent_losses.append(loss)
        if on_step is not None:
            on_step(step, loss)
        if step % config.eval_every == 0 or step == config.steps:
            evaluation = evaluate(
                model, data.val, depth=config.depth, num_classes=data.num_classes,
                step=step, loss=float(np.mean(recent_losses)),
            )
            recent_losses.clear()
            history.append(evaluation)
            if best is None or evaluation.iou > best.iou:
                best, best_weights = evaluation, model.get_weights()
            if on_eval is not None:
                on_eval(step, evaluation.iou)
    final = history[-1]
    model.set_weights(best_weights)
    return TrainResult(model, best, final, history, time.perf_counter() - started, config.steps)


def _enable_op_determinism() -> None:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
