"""A training run's state at a step, as one file: enough to go on as if it had not stopped.

`arrays` holds lists of numpy arrays by name (the model's variables, the optimizer's, the best
weights so far); `state` holds the rest as JSON-safe values (the block sampler's random state,
the evaluations so far). The file is a numpy .npz archive: no pickled Python objects, so
loading one runs no code.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from model.errors import InputError

_STATE_KEY = "state.json"


@dataclasses.dataclass
class Checkpoint:
    """Training state after `step` steps."""

    step: int
    arrays: dict[str, list[np.ndarray]]
    state: dict

    def save(self, path: str | os.PathLike) -> Path:
        """Write the checkpoint to `path` (an .npz file) atomically; returns the path."""
        path = Path(path)
        stored = {f"{name}/{i:05d}": array for name, arrays in self.arrays.items() for i, array in enumerate(arrays)}
        stored[_STATE_KEY] = np.frombuffer(json.dumps({"step": self.step, **self.state}).encode(), dtype=np.uint8)
        temporary = path.with_name(f".{path.name}.tmp")
        with open(temporary, "wb") as file:
            np.savez(file, **stored)
        os.replace(temporary, path)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> Checkpoint:
        """Read a checkpoint written by `save`; InputError if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as stored:
                state = json.loads(bytes(stored[_STATE_KEY]).decode())
                arrays: dict[str, list[np.ndarray]] = {}
                for key in sorted(k for k in stored.files if k != _STATE_KEY):
                    name = key.rsplit("/", 1)[0]
                    arrays.setdefault(name, []).append(stored[key])
        except (OSError, ValueError, KeyError) as error:
            raise InputError(f"{path} is not a training checkpoint ({error}).") from None
        return cls(step=int(state.pop("step")), arrays=arrays, state=state)
