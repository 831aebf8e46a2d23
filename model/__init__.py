"""The training core (Keras 3): data, synthetic data, the U-Net, loss, training and inference.

This module is the model's face: `hpsearch/` imports the model only through the names in
`__all__`. They load lazily, so importing `model` costs nothing and does not load TensorFlow;
`model.train` (for example) imports Keras on first use.

    import model
    params = model.Hyperparameters()                      # Table 1
    dataset = model.load_dataset("data/synthetic")
    split = model.split_cases(dataset.case_names, seed=0)
    result = model.train(params, model.load_train_data(dataset, split), model.TrainConfig(steps=100))
"""

import importlib
import os

# TensorFlow's pooling (BFC) allocator keeps freed memory instead of returning it to the kernel
# on every step; it must be chosen before TensorFlow makes its first tensor, hence here, where
# every part of hpsearch that trains or segments passes first. TF_CPU_ALLOCATOR_USE_BFC=false undoes it.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
# TensorFlow's CPU wheel runs oneDNN convolutions only on some CPUs (AVX-512 VNNI, BF16, AMX) unless
# asked; it is faster on AVX2 CPUs too. Read once, as TensorFlow loads; TF_ENABLE_ONEDNN_OPTS=0 undoes it.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# name -> the submodule that defines it
_FACE = {
    # training and evaluation
    "train": "model.training",
    "evaluate": "model.training",
    "iou_from_counts": "model.metrics",
    "dice_from_counts": "model.metrics",
    "TrainConfig": "model.config",
    "PRECISIONS": "model.config",
    "LOSSES": "model.config",
    "BLOCKS": "model.config",
    "Checkpoint": "model.checkpoint",
    "NetworkCache": "model.reuse",
    # inference
    "segment": "model.segmentation",
    "predict_labels": "model.inference",
    "predict_probabilities": "model.inference",
    "inference_model": "model.inference",
    "bfloat16_is_native": "model.inference",
    "BFLOAT16_CPU_FLAGS": "model.inference",
    # datasets and synthesis
    "load_dataset": "model.data",
    "split_cases": "model.data",
    "load_train_data": "model.data",
    "write_dataset": "model.synth",
    # hyperparameters and the Table-1 YAML
    "Hyperparameters": "model.params",
    "load_params": "model.params",
    "load_params_file": "model.params",
    "format_number": "model.params",
    "refused_yaml_tag": "model.params",
    "FIELDS_BY_NAME": "model.params",
    "TABLE1_NAMES": "model.params",
    # the run folder
    "Run": "model.run",
    "save_run": "model.run",
    "load_run": "model.run",
    "check_new_folder": "model.run",
    # errors
    "InputError": "model.errors",
    "TrainingDiverged": "model.errors",
    # TensorFlow loading and its start-up notices
    "import_tensorflow": "model.tensorflow_import",
    "filtered_stderr": "model.tensorflow_import",
    "BFLOAT16_FALLBACK_NOTICE": "model.tensorflow_import",
}

__all__ = sorted(_FACE)


def __getattr__(name: str):
    try:
        module = _FACE[name]
    except KeyError:
        raise AttributeError(f"module 'model' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
