"""hpsearch: the paper's hyperparameter search as an Optuna service (sampler, study, workers, export)."""

import model  # noqa: F401  (first, so that its TensorFlow allocator setting precedes any TensorFlow import)
from hpsearch._sampler import NeighborhoodSampler

__all__ = ["NeighborhoodSampler"]
