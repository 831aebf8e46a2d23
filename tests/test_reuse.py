"""A worker's NetworkCache: one traced training step per network shape, and a reused network that
trains exactly as a new one (model/reuse.py)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import model.training
from model.config import TrainConfig
from model.data import load_dataset, load_train_data, split_cases
from model.params import Hyperparameters
from model.reuse import NetworkCache, network_shape
from model.training import train

CONFIG = TrainConfig(steps=6, eval_every=3, patch_shape=(16, 16, 8), depth=2, seed=4, deterministic=True)
FIRST = Hyperparameters(channels=4, learning_rate=3e-3, beta1=0.9, beta2=0.999, clip_norm=1.0, l2=1e-5, keep_prob=0.85)
# Every run-time value differs from FIRST's; the network shape does not.
SECOND = dataclasses.replace(FIRST, learning_rate=2e-2, beta1=0.7, beta2=0.95, clip_norm=0.05, l2=3e-3, keep_prob=0.6)


@pytest.fixture(scope="module")
def tiny_data(synth_dataset):
    dataset = load_dataset(synth_dataset)
    split = split_cases(dataset.case_names, seed=0, val_fraction=0.25, test_fraction=0.0)
    return load_train_data(dataset, split)


@pytest.fixture
def traces(monkeypatch) -> list[int]:
    """Appends to the list each time a training step is traced: the loss's Python code runs only then."""
    traced: list[int] = []
    get_loss = model.training.get_loss

    def counting_loss(name):
        loss = get_loss(name)

        def counted(y_true, y_pred):
            traced.append(1)
            return loss(y_true, y_pred)

        return counted

    monkeypatch.setattr(model.training, "get_loss", counting_loss)
    return traced


def weights(result) -> list[np.ndarray]:
    return [np.array(v) for v in result.model.get_weights()]


def test_a_reused_network_trains_exactly_as_a_new_one(tiny_data):
    networks = NetworkCache()
    train(FIRST, tiny_data, CONFIG, networks=networks)
    reused = train(SECOND, tiny_data, CONFIG, networks=networks)
    reused_weights, reused_history = weights(reused), [(e.step, e.loss, e.iou) for e in reused.history]
    assert (networks.built, networks.reused) == (1, 1)
    new = train(SECOND, tiny_data, CONFIG)
    assert new.model is not reused.model
    assert [(e.step, e.loss, e.iou) for e in new.history] == reused_history
    for a, b in zip(weights(new), reused_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    # The values did reach the run: FIRST's values give other weights.
    first = weights(train(FIRST, tiny_data, CONFIG))
    assert any(not np.array_equal(a, b) for a, b in zip(first, reused_weights))


@pytest.mark.backends
def test_the_step_is_traced_once_per_network_shape(tiny_data, traces):
    networks = NetworkCache()
    train(FIRST, tiny_data, CONFIG, networks=networks)
    once = len(traces)
    assert once >= 1
    train(SECOND, tiny_data, CONFIG, networks=networks)
    train(FIRST, tiny_data, CONFIG, networks=networks)
    assert len(traces) == once  # same shape: no new trace
    wider = dataclasses.replace(FIRST, channels=6)
    train(wider, tiny_data, CONFIG, networks=networks)
    assert len(traces) == 2 * once  # a new channel count builds and traces anew
    assert (networks.built, networks.reused) == (2, 2)
    # Without a cache every run traces its own step.
    train(FIRST, tiny_data, CONFIG)
    assert len(traces) == 3 * once


def test_network_shape_ignores_the_run_time_values_only():
    shape = network_shape(FIRST, CONFIG, in_channels=1, num_classes=2)
    assert network_shape(SECOND, CONFIG, in_channels=1, num_classes=2) == shape
    for params, config, sizes in [
        (dataclasses.replace(FIRST, channels=8), CONFIG, (1, 2)),
        (dataclasses.replace(FIRST, keep_prob=1.0), CONFIG, (1, 2)),  # no dropout layers
        (dataclasses.replace(FIRST, l2=0.0), CONFIG, (1, 2)),  # no penalty term
        (FIRST, dataclasses.replace(CONFIG, patch_shape=(16, 16, 16)), (1, 2)),
        (FIRST, dataclasses.replace(CONFIG, loss="joint"), (1, 2)),
        (FIRST, dataclasses.replace(CONFIG, batch_size=3), (1, 2)),
        (FIRST, CONFIG, (2, 2)),
        (FIRST, CONFIG, (1, 3)),
    ]:
        assert network_shape(params, config, in_channels=sizes[0], num_classes=sizes[1]) != shape


def test_the_cache_keeps_the_most_recently_used_networks():
    networks = NetworkCache(size=2)
    for shape in ("a", "b"):
        networks.keep(shape, object())
    assert networks.take("a") is not None  # "b" is now the least recently used
    networks.keep("c", object())
    assert networks.take("b") is None and networks.take("a") is not None and networks.take("c") is not None
    with pytest.raises(ValueError, match="at least one network, not 0"):
        NetworkCache(size=0)
