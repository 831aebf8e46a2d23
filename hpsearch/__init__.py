"""hpsearch: the paper's hyperparameter search as an Optuna service (sampler, study, workers, export)."""

from hpsearch._sampler import NeighborhoodSampler

__all__ = ["NeighborhoodSampler"]
