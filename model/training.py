"""Training one U-Net: Adam with gradient clipping on sampled blocks, whole-volume validation every K steps.

The seam to the search service is `train(params, data, config, on_eval=...)`: `on_eval(step,
iou)` is called after every evaluation and may raise (a pruner does) to stop the run.
"""

from __future__ import annotations

import dataclasses
import math
import random
import time
from typing import Callable

import keras
import numpy as np

from model.checkpoint import Checkpoint
from model.config import TrainConfig
from model.data import Case, TrainData
from model.dropout import BitsDropout
from model.errors import InputError, TrainingDiverged
from model.inference import evaluate_cases
from model.losses import get_loss
from model.metrics import dice_from_counts, iou_from_counts, mean_foreground_iou
from model.optimizer import FusedAdam
from model.params import Hyperparameters
from model.patches import PatchSampler
from model.reuse import NetworkCache, network_shape
from model.unet import build_unet


@dataclasses.dataclass
class Evaluation:
    """Hard IoU (and Dice) at one step: mean over foreground classes, per class (incl. background), per case.

    `iou`, `per_class` and `per_class_dice` pool the voxels of all cases; `per_case` is each case's
    mean foreground IoU; `case_counts` holds each case's (num_classes, 2) intersection/union counts,
    from which any per-case, per-class figure follows (model.metrics).
    """

    step: int
    loss: float
    iou: float
    per_class: list[float]
    per_case: dict[str, float]
    per_class_dice: list[float] = dataclasses.field(default_factory=list)
    case_counts: dict[str, np.ndarray] = dataclasses.field(default_factory=dict, repr=False)


@dataclasses.dataclass
class TrainResult:
    """The trained model (best validation weights restored) and what the run measured."""

    model: keras.Model
    best: Evaluation
    final: Evaluation
    history: list[Evaluation]
    seconds: float  # the step loop with its evaluations, after the model is built (s)
    steps: int
    collapsed: list[int] = dataclasses.field(default_factory=list)  # collapsed_classes of the final evaluation


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
        per_class_dice=[float(v) for v in dice_from_counts(pooled)],
        case_counts=counts,
    )


def collapsed_classes(evaluation: Evaluation, steps: int) -> list[int]:
    """Foreground classes with IoU 0 in `evaluation`, once past the first quarter of `steps` (earlier is warm-up)."""
    if evaluation.step <= steps / 4:
        return []
    return [c for c, iou in enumerate(evaluation.per_class) if c > 0 and iou == 0.0]


def make_optimizer(params: Hyperparameters, clip: str) -> keras.optimizers.Optimizer:
    """Adam (model/optimizer.py) with the paper's learning rate and betas, clipping by global or
    per-gradient norm, and the L2 penalty on every kernel; all of them run-time values."""
    return FusedAdam(
        learning_rate=params.learning_rate, beta_1=params.beta1, beta_2=params.beta2, runtime=True,
        clip_norm=params.clip_norm, clip="global" if clip == "global" else "each", l2=params.l2,
    )


def compiled_unet(
    params: Hyperparameters,
    config: TrainConfig,
    *,
    in_channels: int,
    num_classes: int,
    spatial_shape: tuple[int, int, int] | None = None,
) -> keras.Model:
    """The U-Net of `params` and `config`, compiled with Adam and the loss, ready for train_on_batch.

    The L2 penalty is the optimizer's (a gradient term, so the training loss does not include
    it), and the dropout rate a weight of the network, so that `reuse_network` can give the
    compiled network another trial's values (model/reuse.py). `spatial_shape` fixes the input
    size (X, Y, Z); None accepts any size.
    """
    model = _build(params, config, in_channels=in_channels, num_classes=num_classes, spatial_shape=spatial_shape)
    # jit_compile="auto" leaves XLA off on CPU-only machines, where it is slower for this network.
    model.compile(optimizer=make_optimizer(params, config.clip), loss=get_loss(config.loss), jit_compile="auto")
    # Creating Adam's slots now spares train_on_batch a second trace of the training function,
    # which it would otherwise trace once just to create them.
    model.optimizer.build(model.trainable_variables)
    return model


def _build(params, config, *, in_channels, num_classes, spatial_shape=None) -> keras.Model:
    return build_unet(
        in_channels=in_channels,
        num_classes=num_classes,
        channels=params.channels,
        depth=config.depth,
        keep_prob=params.keep_prob,
        l2=0.0,  # the optimizer's (make_optimizer)
        block=config.block,
        spatial_shape=spatial_shape,
        runtime_dropout=True,
    )


def reuse_network(model: keras.Model, params: Hyperparameters, config: TrainConfig, *, in_channels: int,
                  num_classes: int) -> None:
    """Make a compiled network of the same network_shape as a fresh `compiled_unet(params, config)`:
    its initial weights and dropout seeds (drawn now, as a new network would draw them), `params`'
    values, and an optimizer at step 0. The traced training step is kept."""
    fresh = _build(params, config, in_channels=in_channels, num_classes=num_classes)
    for variable, value in zip(model.variables, fresh.variables, strict=True):
        variable.assign(value)
    for layer in model.layers:
        if isinstance(layer, BitsDropout):
            layer.set_rate(1.0 - params.keep_prob)
    model.optimizer.reset()
    model.optimizer.set_hyperparameters(
        learning_rate=params.learning_rate, beta_1=params.beta1, beta_2=params.beta2,
        clip_norm=params.clip_norm, l2=params.l2,
    )
    model.reset_metrics()


def _network(params, config, data: TrainData, networks: NetworkCache | None) -> keras.Model:
    """A compiled network for this run: a kept one of the same shape, made new, or a new one."""
    sizes = {"in_channels": data.in_channels, "num_classes": data.num_classes}
    if networks is None:
        return compiled_unet(params, config, **sizes)
    shape = network_shape(params, config, **sizes)
    model = networks.take(shape)
    if model is None:
        model = compiled_unet(params, config, **sizes)
        networks.keep(shape, model)
    else:
        reuse_network(model, params, config, **sizes)
    return model


def train(
    params: Hyperparameters,
    data: TrainData,
    config: TrainConfig,
    *,
    on_eval: Callable[[int, float], None] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    on_collapse: Callable[[int, list[int]], None] | None = None,
    on_checkpoint: Callable[[Checkpoint], None] | None = None,
    resume: Checkpoint | None = None,
    networks: NetworkCache | None = None,
) -> TrainResult:
    """Train a U-Net for `config.steps` steps; return it with its best validation weights.

    Args:
        params: Table 1 hyperparameters.
        data: training and validation cases.
        config: steps, evaluation interval, block size and the other training choices.
        on_eval: called as on_eval(step, validation IoU) after each evaluation (every
            `config.eval_every` steps and after the last), once the evaluation is in the history.
            Whatever it raises stops training and propagates out of `train` (the search's
            objective raises optuna.TrialPruned there to prune a trial).
        on_step: called as on_step(step, training loss) after each step 1..`config.steps`,
            before that step's evaluation, if any; whatever it raises stops training likewise.
        on_collapse: called as on_collapse(step, class indices) at an evaluation where foreground
            classes that were not reported before have IoU 0 past the first quarter of training
            (another class swallowed them), before on_eval.
        on_checkpoint: called with a Checkpoint after every `config.checkpoint_every`-th
            evaluation before the last step (the caller stores it), after on_eval.
        resume: a Checkpoint of an earlier run of the same params, config and data: training
            goes on from its step with its weights, optimizer state, block sampler position,
            evaluations and best weights, as if it had not stopped.
        networks: a worker's NetworkCache: a network of the same shape that an earlier run
            compiled is reused, with this run's initial weights and values, and its traced
            training step with it (model/reuse.py). The result's model is then that network.

    Raises:
        TrainingDiverged: the loss became NaN or infinite (before on_step sees that step).
    """
    if not data.val:
        raise InputError("there are no validation cases; the split needs at least one to measure IoU.")
    if config.seed is not None:
        _set_seed(config.seed)
    if config.deterministic:
        _enable_op_determinism()
    model = _network(params, config, data, networks)
    sampler = PatchSampler(
        data.train,
        patch_shape=config.patch_shape,
        batch_size=config.batch_size,
        num_classes=data.num_classes,
        foreground_share=config.foreground_share,
        augment=config.augment,
        seed=config.seed,
    )
    started = time.perf_counter()
    history: list[Evaluation] = []
    best: Evaluation | None = None
    best_weights = None
    recent_losses: list[float] = []
    reported: set[int] = set()  # collapsed classes already passed to on_collapse
    first_step = 1
    if resume is not None:
        history, best, best_weights, reported = _restore(resume, model, sampler)
        first_step = resume.step + 1
    for step in range(first_step, config.steps + 1):
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
            newly = [c for c in collapsed_classes(evaluation, config.steps) if c not in reported]
            reported.update(newly)
            if newly and on_collapse is not None:
                on_collapse(step, newly)
            if on_eval is not None:
                on_eval(step, evaluation.iou)
            every = config.checkpoint_every
            if on_checkpoint is not None and every and len(history) % every == 0 and step < config.steps:
                on_checkpoint(_checkpoint(step, model, sampler, history, best, best_weights, reported))
    final = history[-1]
    model.set_weights(best_weights)
    return TrainResult(model, best, final, history, time.perf_counter() - started, config.steps,
                       collapsed=collapsed_classes(final, config.steps))


def _checkpoint(step, model, sampler, history, best, best_weights, reported) -> Checkpoint:
    """The run's state right after the evaluation at `step` (no training losses pending)."""
    return Checkpoint(
        step=step,
        arrays={
            "model": [np.asarray(v) for v in model.variables],
            "optimizer": [np.asarray(v) for v in model.optimizer.variables],
            "best_weights": list(best_weights),
        },
        state={
            "sampler": sampler.state(),
            "history": [_evaluation_state(e) for e in history],
            "best": next(i for i, e in enumerate(history) if e is best),
            "reported": sorted(reported),
        },
    )


def _restore(checkpoint: Checkpoint, model, sampler):
    """Load `checkpoint` into a freshly built `model` and `sampler`; (history, best, best weights, reported)."""
    for name, variables in (("model", model.variables), ("optimizer", model.optimizer.variables)):
        arrays = checkpoint.arrays.get(name, [])
        if len(arrays) != len(variables) or any(a.shape != tuple(v.shape) for a, v in zip(arrays, variables)):
            raise InputError(f"the checkpoint at step {checkpoint.step} was written by a different network or "
                             "optimizer; it cannot resume this run.")
        for variable, array in zip(variables, arrays):
            variable.assign(array)
    sampler.set_state(checkpoint.state["sampler"])
    history = [_evaluation_from_state(e) for e in checkpoint.state["history"]]
    return history, history[checkpoint.state["best"]], checkpoint.arrays["best_weights"], set(checkpoint.state["reported"])


def _evaluation_state(evaluation: Evaluation) -> dict:
    state = dataclasses.asdict(evaluation)
    state["case_counts"] = {name: np.asarray(c).tolist() for name, c in evaluation.case_counts.items()}
    return state


def _evaluation_from_state(state: dict) -> Evaluation:
    counts = {name: np.asarray(c, dtype=np.int64) for name, c in state.pop("case_counts").items()}
    return Evaluation(**state, case_counts=counts)


_seeded_once = False  # keras.utils.set_random_seed has run in this process


def _set_seed(seed: int) -> None:
    """Seed a run: keras.utils.set_random_seed the first time in a process, then Python's and NumPy's
    generators only.

    What a run draws comes from those two: the initial weights' and the dropout layers' seeds
    (Keras draws them from Python's `random` as it builds a layer), and the blocks (NumPy, seeded
    by PatchSampler). keras.utils.set_random_seed also sets TensorFlow's global seed, which clears
    TensorFlow's kernel caches: the next training step then takes 0.8 s instead of 0.1 s at
    quick-start scale on a CPU, in every trial of a worker that reuses its network (benchmarks/reuse.py).
    """
    global _seeded_once
    if not _seeded_once:
        keras.utils.set_random_seed(seed)
        _seeded_once = True
        return
    random.seed(seed)
    np.random.seed(seed)


def _enable_op_determinism() -> None:
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_op_determinism()
