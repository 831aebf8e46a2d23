"""The training core: data, synthetic data, U-Net, loss, training and inference (Keras)."""

import os

# TensorFlow's default CPU allocator hands every freed tensor back to the C library, which
# returns large blocks to the kernel, so each training step faults its activations in afresh:
# on a 2-core VM that was 10 million page faults and a third of the CPU time in the kernel for
# three 64×64×16 steps. TensorFlow's own pooling (BFC) allocator keeps the memory, making the
# step 1.5× faster there (benchmarks/README.md). It must be chosen before TensorFlow makes its
# first tensor, hence here, where every part of hpsearch that trains or segments passes first;
# set TF_CPU_ALLOCATOR_USE_BFC=false to go back.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")
