"""The training core: data, synthetic data, U-Net, loss, training and inference (Keras)."""

import os

# TensorFlow's default CPU allocator hands every freed tensor back to the C library, which
# returns large blocks to the kernel, so each training step faults its activations in afresh:
# on a 2-core VM, 1.6 million page faults per 64×64×16 step of the full-block network and a third
# of the CPU time in the kernel. TensorFlow's own pooling (BFC) allocator keeps the memory, which
# made steps 1.3–1.7× faster there (benchmarks/README.md). It must be chosen before TensorFlow makes its
# first tensor, hence here, where every part of hpsearch that trains or segments passes first;
# set TF_CPU_ALLOCATOR_USE_BFC=false to go back.
os.environ.setdefault("TF_CPU_ALLOCATOR_USE_BFC", "true")

# TensorFlow's CPU wheel runs its oneDNN convolutions only on CPUs with AVX-512 VNNI, BF16 or AMX;
# elsewhere (AVX2 CPUs such as AMD's Zen 1-3) a convolution is Eigen's, thousands of small matrix
# products per step. oneDNN's own AVX2 kernels made a paper-scale training step 1.35-1.45x faster
# and a quick-start one 1.75x on such a CPU (benchmarks/README.md, "oneDNN on AVX2 CPUs").
# TensorFlow reads this once, as it loads; set TF_ENABLE_ONEDNN_OPTS=0 to go back.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
