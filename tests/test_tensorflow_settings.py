"""The TensorFlow settings hpsearch chooses before TensorFlow loads (model/__init__.py), and the user's own winning."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

# A convolution in a fresh process, with oneDNN logging each primitive it runs to stdout.
CONVOLUTION = (
    "import model, tensorflow as tf; "
    "tf.nn.conv2d(tf.ones([1, 8, 8, 4]), tf.ones([3, 3, 4, 4]), 1, 'SAME')"
)


def onednn_convolutions(**settings: str) -> int:
    """How many oneDNN convolution primitives a 2D convolution ran in a child with these environment settings."""
    environment = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    environment.update(ONEDNN_VERBOSE="1", TF_CPP_MIN_LOG_LEVEL="2", KERAS_BACKEND="tensorflow", **settings)
    result = subprocess.run([sys.executable, "-c", CONVOLUTION], capture_output=True, text=True, timeout=120, env=environment)
    assert result.returncode == 0, result.stderr
    return sum(",exec,cpu,convolution," in line for line in result.stdout.splitlines())


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="TensorFlow's x86 wheel decides oneDNN by CPU")
def test_convolutions_run_on_onednn_unless_the_user_turned_it_off():
    # TensorFlow alone leaves oneDNN off on CPUs without AVX-512 VNNI, BF16 or AMX; hpsearch turns it on.
    assert onednn_convolutions() >= 1
    assert onednn_convolutions(TF_ENABLE_ONEDNN_OPTS="0") == 0
