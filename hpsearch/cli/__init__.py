"""The `hpsearch` command line: thin command functions over importable logic.

Commands come in three groups, one module each: the model's (data synth, train, segment,
evaluate), the search's (init, launch, worker) and the results' (status, dashboard, export,
report). Every user mistake is one sentence on stderr and exit code 2; a failure (training
diverged, the study storage gone for longer than its retries) is exit code 1; no traceback is
shown for either (HPSEARCH_DEBUG=1 shows one).
"""

from __future__ import annotations

import argparse
import errno
import os
import sys

from hpsearch.cli import model_commands, results_commands, search_commands
from hpsearch.cli.results_commands import print_best
from hpsearch.errors import HpsearchError

__all__ = ["build_parser", "main", "print_best"]

# TensorFlow's C++ start-up chatter (oneDNN notices, CPU feature lists) is not for users; the
# notices this does not reach are filtered by model.import_tensorflow.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ENVIRONMENT_HELP = """\
environment variables:
  HPSEARCH_STORAGE             storage URL or journal file used when --storage is absent
  HPSEARCH_DEBUG=1             show the traceback behind an error message
  HPSEARCH_HEARTBEAT_INTERVAL  seconds between a PostgreSQL worker's heartbeats (default 60)
  HPSEARCH_HEARTBEAT_GRACE     seconds without a heartbeat before a trial counts as dead (default 3 x interval)
  HPSEARCH_STALL_TIMEOUT       seconds a launched worker may report nothing before it is killed (default 1800)
  KERAS_BACKEND                tensorflow (default) or jax
  CUDA_VISIBLE_DEVICES         the GPUs hpsearch may use

Run 'hpsearch COMMAND --help' for a command's options."""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("hpsearch")
    except PackageNotFoundError:  # imported from a checkout that was never installed
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hpsearch",
        description="Hyperparameter search for volumetric medical-image segmentation "
        "(Avetisian's factorized 3D U-Net, tuned by an Optuna study).",
        epilog=ENVIRONMENT_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"hpsearch {_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    model_commands.register(commands)
    search_commands.register(commands)
    results_commands.register(commands)
    return parser


def _quiet_libraries() -> None:
    # Optuna logs every study and trial event at INFO; our own output says what matters.
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _storage_errors() -> tuple[type[BaseException], ...]:
    import optuna
    import sqlalchemy.exc

    return (optuna.exceptions.StorageInternalError, sqlalchemy.exc.SQLAlchemyError)


def main(argv: list[str] | None = None) -> int:
    """Run one command; return its exit code. Without a command, print the help."""
    from model import InputError, TrainingDiverged

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _quiet_libraries()
    try:
        return args.handler(args)
    except (InputError, HpsearchError) as error:
        if os.environ.get("HPSEARCH_DEBUG"):
            raise
        print(f"hpsearch: error: {error}", file=sys.stderr)
        return getattr(error, "exit_code", 2)
    except TrainingDiverged as error:
        print(f"hpsearch: training failed: {error}", file=sys.stderr)
        return 1
    except _storage_errors() as error:
        if os.environ.get("HPSEARCH_DEBUG"):
            raise
        # The database went away for longer than the storage's reconnect retries.
        cause = error.__cause__ or error
        detail = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        print(f"hpsearch: the study storage failed ({detail}); check that the database is up, "
              "then run the command again.", file=sys.stderr)
        return 1
    except OSError as error:
        if os.environ.get("HPSEARCH_DEBUG"):
            raise
        # A path the system refuses (too long, a file where a folder must be, no permission, a full disk)
        # can surface wherever a path is touched; each is one sentence here, naming the path.
        print(f"hpsearch: error: {os_error_sentence(error)}", file=sys.stderr)
        return 2 if error.errno in _INPUT_ERRNOS else 1
    except MemoryError:
        if os.environ.get("HPSEARCH_DEBUG"):
            raise
        print("hpsearch: error: out of memory; use smaller volumes, a smaller --patch or --batch, "
              "or a machine with more memory.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("hpsearch: interrupted", file=sys.stderr)
        return 130


# A path the user gave is wrong (exit 2); any other OSError (ENOSPC, EIO, ...) is a failure (exit 1).
_INPUT_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.ENAMETOOLONG, errno.EACCES,
                           errno.EPERM, errno.EROFS, errno.ELOOP, errno.EEXIST, errno.EINVAL})


def os_error_sentence(error: OSError) -> str:
    """One sentence for an OSError: the path, the system's reason and what to do."""
    reason = error.strerror or " ".join(str(error).split()) or type(error).__name__
    where = f" {error.filename}" if error.filename is not None else ""
    if error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left to write{where} ({reason}); free space there or choose another path."
    if error.errno in _INPUT_ERRNOS:
        return f"cannot use the path{where} ({reason}); check the path and its permissions."
    return f"the system refused{where or ' an operation'} ({reason}); check the disk and try again."
