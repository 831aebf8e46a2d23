"""A worker's compiled U-Nets, kept between trials so that one traced training step serves many.

Tracing (TensorFlow) or compiling (JAX, XLA) the training step is a large share of a short
trial, and a worker runs one trial after another. The traced step depends only on the network's
shape: what `network_shape` lists. The hyperparameters a search changes within one shape (the
learning rate, β1, β2, the clip norm, the L2 weight and the dropout rate) are held as variables
(model/optimizer.py, model/dropout.py), so a kept network is given a new trial's values and
initial weights, and its step runs without being traced again.

    networks = NetworkCache()
    for params in trials:
        train(params, data, config, networks=networks)   # traces once per network shape
"""

from __future__ import annotations

import collections

from model.config import TrainConfig
from model.params import Hyperparameters


def network_shape(params: Hyperparameters, config: TrainConfig, *, in_channels: int, num_classes: int) -> tuple:
    """What a traced training step depends on: two trials with equal shapes can share it.

    Dropout and the L2 penalty count by whether they are there at all (a layer, a gradient term),
    not by their values.
    """
    return (
        in_channels, num_classes, params.channels, config.depth, config.block, config.loss, config.clip,
        tuple(config.patch_shape), config.batch_size, params.keep_prob < 1.0, params.l2 > 0,
    )


class NetworkCache:
    """Up to `size` compiled U-Nets, by network_shape; the least recently used one is dropped first.

    A network taken from the cache is the one the previous trial of its shape trained: `train`
    gives it the new trial's initial weights and values before its first step, and the caller must
    not keep the previous trial's `TrainResult.model` beyond that (save it first).
    """

    def __init__(self, size: int = 4) -> None:
        if size < 1:
            raise ValueError(f"a NetworkCache holds at least one network, not {size}.")
        self.size = size
        self.built = 0  # networks compiled anew
        self.reused = 0  # trials that took a kept network
        self._networks: collections.OrderedDict[tuple, object] = collections.OrderedDict()

    def take(self, shape: tuple):
        """The kept network of `shape` (now the most recently used), or None."""
        network = self._networks.get(shape)
        if network is not None:
            self._networks.move_to_end(shape)
            self.reused += 1
        return network

    def keep(self, shape: tuple, network) -> None:
        """Keep a network compiled for `shape`, dropping the least recently used beyond `size`."""
        self.built += 1
        self._networks[shape] = network
        self._networks.move_to_end(shape)
        while len(self._networks) > self.size:
            self._networks.popitem(last=False)
