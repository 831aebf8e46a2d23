"""Import TensorFlow without the start-up notices its C++ core writes to stderr.

TensorFlow 2.21 logs "oneDNN custom operations are on …" from two of its libraries as it loads,
each after absl's "All log messages before absl::InitializeLog() is called …", and its CUDA build,
on a machine without a GPU driver, "Could not find cuda drivers" and a failed cuInit;
TF_CPP_MIN_LOG_LEVEL does not reach them, because absl logs them before TensorFlow's own logging is set up. The import
runs with file descriptor 2 on a pipe; a thread passes every line through at once, except those
notices, so an error or a crash during the import still shows what was written before it.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading

# Substrings of the lines dropped: the notices above, nothing else.
NOTICES = (
    b"All log messages before absl::InitializeLog() is called are written to STDERR",
    b"oneDNN custom operations are on.",
    # The CUDA build of TensorFlow on a machine without a GPU driver (hpsearch says so itself
    # where a GPU was asked for: hpsearch.devices).
    b"Could not find cuda drivers on your machine",
    b"failed call to cuInit",
)

# What TensorFlow logs, at error level, the first time oneDNN meets bfloat16 on a CPU without
# AVX-512 (the CLI says so in one line of its own and drops this one while inference runs).
BFLOAT16_FALLBACK_NOTICE = b"oneDNN supports DT_BFLOAT16 only on platforms with AVX-512"


def import_tensorflow():
    """Import TensorFlow (once per process) with its start-up notices filtered out; return the module.

    Returns None without importing anything where Keras runs on another backend. With
    TF_CPP_MIN_LOG_LEVEL=0 (asking for all of TensorFlow's messages) nothing is filtered.
    """
    if os.environ.get("KERAS_BACKEND", "tensorflow") != "tensorflow":
        return None
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
        import tensorflow

        return tensorflow
    with filtered_stderr(NOTICES):
        import tensorflow

        # Finding the devices loads the CUDA platform, which logs cuInit's failure where there is no
        # driver: here, inside the filter. (Only listing: threads and memory growth can still be set.)
        tensorflow.config.list_physical_devices()
    return tensorflow


@contextlib.contextmanager
def filtered_stderr(dropped: tuple[bytes, ...]):
    """While inside, lines written to file descriptor 2 (by Python or native code) that contain any of
    `dropped` are discarded; every other line reaches stderr as soon as it is complete."""
    sys.stderr.flush()
    real_stderr = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pass_through() -> None:
        with os.fdopen(read_end, "rb") as pipe:
            for line in pipe:
                if not any(notice in line for notice in dropped):
                    while line:  # os.write may take only part of a long line
                        line = line[os.write(real_stderr, line):]

    thread = threading.Thread(target=pass_through, name="stderr-filter", daemon=True)
    thread.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(real_stderr, 2)  # the pipe's last write end closes: the thread reads to its end
        thread.join(timeout=10)
        os.close(real_stderr)
