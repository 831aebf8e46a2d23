"""import_tensorflow: TensorFlow's start-up notices filtered from stderr, every other line kept."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# A child process, so that file descriptor 2 is its own and not pytest's capture.
CHILD = textwrap.dedent(
    """
    import os, sys
    from model.tensorflow_import import NOTICES, filtered_stderr

    print("before", file=sys.stderr, flush=True)
    with filtered_stderr(NOTICES):
        os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\\n")
        os.write(2, b"I0000 port.cc:153] oneDNN custom operations are on. You may see ...\\n")
        os.write(2, b"native line one\\nnative line ")
        os.write(2, b"two\\n")
        print("python line", file=sys.stderr, flush=True)
        os.write(2, b"no newline at the end")
    print("after", file=sys.stderr, flush=True)
    print("stdout untouched")
    """
)


def test_the_notices_are_dropped_and_every_other_line_is_kept_in_order():
    result = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "stdout untouched\n"
    assert result.stderr.splitlines() == [
        # The last native write had no newline, so "after" continues its line, as it would unfiltered.
        "before", "native line one", "native line two", "python line", "no newline at the endafter",
    ]


def test_tensorflow_imports_without_its_notices():
    code = "from model.tensorflow_import import import_tensorflow; tf = import_tensorflow(); print(tf.constant(2).numpy())"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "KERAS_BACKEND": "tensorflow"},
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
    assert "oneDNN custom operations" not in result.stderr and "absl::InitializeLog" not in result.stderr
