"""Property-based tests of the command line's promise, with hypothesis, through the real entry points.

The promise (DESIGN.md, "The command line"): exit code 0, 1 or 2; never a traceback; a failing
command says exactly one line "hpsearch: error: ..." on stderr (argparse's own usage error is
allowed for command lines); no file of the input folders changes. Generated, per run
(derandomize=True, so every run draws the same cases; no shrinking, which takes minutes on a loaded
2-core machine: a failing case is reported as drawn):

- 60 `dataset.json` files (MSD v1 and nnU-Net v2, with fields missing, of the wrong type or odd),
  beside real NIfTI files, through `hpsearch train`;
- 50 params files (wrong keys, types, values, YAML tags, non-mappings) through `hpsearch train --params`;
- 40 NIfTI files (wrong dimensionality, NaN/inf voxels, zero-size axes, mismatched shapes, non-integer
  labels, odd zooms, 4-D images) as one case of a dataset, through `hpsearch train`;
- 8 of those NIfTI images through `hpsearch segment` with a trained model (TensorFlow runs);
- 80 command lines over the real parser's commands and options, in-process, and 3 as subprocesses
  `python -m hpsearch.cli`;

241 generated cases in all.

`hpsearch train` runs up to the point where TensorFlow would start (model.import_tensorflow is
replaced by a function that stops the command there), so every case checks the input but none trains.
Example-based tests at the end cover an output folder that cannot hold the model: a full tmpfs, a
read-only folder, a path whose parent is a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path
from unittest import mock

import nibabel as nib
import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, Phase, assume, event, given, settings
from hypothesis import strategies as st

import model
from hpsearch.cli import main
from hpsearch.config import load_study
from hpsearch.storage import open_storage

from searchutil import tiny_study_with_two_trials, write_tiny_study

TINY_TRAIN = ["--steps", "2", "--eval-every", "2", "--patch", "16x16x8", "--depth", "2"]
# TensorFlow writes these before its logging is set up; they are not ours to silence.
TF_NOISE = re.compile(r"^(WARNING: All log messages|I\d{4} |W\d{4} |E\d{4} )|oneDNN|cuda|TF-TRT")
ONE_LINERS = re.compile(r"^hpsearch: (error|training failed|the study storage failed)")
SHAPE = (12, 10, 8)
CASES = 5

# No shrinking: on a loaded 2-core machine it takes minutes; a failing case is printed as drawn.
COMMON = settings(derandomize=True, deadline=None, database=None, phases=(Phase.explicit, Phase.generate),
                  suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                         HealthCheck.data_too_large, HealthCheck.filter_too_much])


class ReachedTensorFlow(BaseException):
    """Raised where `hpsearch train` would start TensorFlow: all input was read and accepted."""


def _stop(*_args, **_kwargs):
    raise ReachedTensorFlow


# ---------------------------------------------------------------- running a command and checking the promise


def snapshot(*roots: Path) -> dict[str, str]:
    """sha256 of every file (and the name of every folder) under `roots`."""
    seen = {}
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                seen[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
            elif path.is_dir():
                seen[str(path)] = "folder"
    return seen


def run_main(argv: list[str], capsys, *, stop_before_tensorflow: bool = False) -> tuple[int, str]:
    """(exit code, stderr) of hpsearch.cli.main(argv) in this process."""
    capsys.readouterr()
    patch = mock.patch.object(model, "import_tensorflow", _stop) if stop_before_tensorflow else contextlib.nullcontext()
    with patch:
        try:
            code = main(argv)
        except ReachedTensorFlow:
            code = 0
        except SystemExit as exit_:  # argparse: --help, --version, usage errors
            code = exit_.code if isinstance(exit_.code, int) else 2
    return code, capsys.readouterr().err


def check_promise(argv: list[str], code: int, err: str, *, usage_allowed: bool = False) -> None:
    shown = f"hpsearch {' '.join(map(repr, argv))}\nexit {code}\nstderr:\n{err}"
    assert code in (0, 1, 2), shown
    assert "Traceback" not in err, shown
    if code == 0:
        return
    lines = [line for line in err.splitlines() if line.strip() and not TF_NOISE.search(line)]
    if usage_allowed and lines and lines[0].startswith("usage: "):
        assert code == 2 and re.match(r"^hpsearch( [\w-]+)*: error: ", lines[-1]), shown
        return
    assert len(lines) == 1 and ONE_LINERS.match(lines[0]), shown


# ---------------------------------------------------------------- the files the cases are made from


def write_nifti(path: Path, data: np.ndarray, zooms=(1.5, 1.5, 8.0)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([*zooms, 1.0])), path)
    return path


def good_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    label = np.zeros(SHAPE, np.uint8)
    label[3:8, 3:7, 2:6] = 1
    return rng.normal(100.0, 10.0, SHAPE).astype(np.float32) + 50.0 * label, label


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> Path:
    """CASES good cases in nnU-Net naming (imagesTr/case_i_0000.nii.gz, labelsTr/case_i.nii.gz)."""
    root = tmp_path_factory.mktemp("files")
    rng = np.random.default_rng(0)
    for i in range(CASES):
        image, label = good_case(rng)
        write_nifti(root / "imagesTr" / f"case_{i}_0000.nii.gz", image)
        write_nifti(root / "labelsTr" / f"case_{i}.nii.gz", label)
    return root


def msd_document(cases: int = CASES) -> dict:
    return {
        "name": "Blobs", "modality": {"0": "MRI"}, "labels": {"0": "background", "1": "blob"},
        "numTraining": cases, "numTest": 0, "test": [],
        "training": [{"image": f"./imagesTr/case_{i}_0000.nii.gz", "label": f"./labelsTr/case_{i}.nii.gz"}
                     for i in range(cases)],
    }


def nnunet_document() -> dict:
    return {"name": "Blobs", "channel_names": {"0": "MRI"}, "labels": {"background": 0, "blob": 1},
            "numTraining": CASES, "file_ending": ".nii.gz"}


@contextlib.contextmanager
def dataset_folder(files: Path, description: str | bytes | None):
    """A new dataset folder: `description` as dataset.json beside imagesTr/ and labelsTr/ (links to `files`)."""
    with tempfile.TemporaryDirectory(prefix="props-") as name:
        root = Path(name) / "data"
        root.mkdir()
        for part in ("imagesTr", "labelsTr"):
            (root / part).symlink_to(files / part, target_is_directory=True)
        if description is not None:
            data = description.encode("utf-8", "surrogatepass") if isinstance(description, str) else description
            (root / "dataset.json").write_bytes(data)
        yield root


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), *TINY_TRAIN, *extra]


def run_train(argv: list[str], capsys, inputs: list[Path], out: Path) -> tuple[int, str]:
    before = snapshot(*inputs)
    code, err = run_main(argv, capsys, stop_before_tensorflow=True)
    check_promise(argv, code, err)
    assert snapshot(*inputs) == before, f"{argv} changed its input files"
    assert not out.exists(), f"{argv} left {out} behind"
    return code, err


# ---------------------------------------------------------------- generated values

json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-3, 3), st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=6),
    st.sampled_from(["0", "1", "-1", "1.5", "x", "", "background", "./imagesTr", "../..", "/", "\n", "☃"]),
)
json_values = st.recursive(json_scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)), max_leaves=6)
path_values = st.one_of(
    st.sampled_from(["./imagesTr/case_0_0000.nii.gz", "./labelsTr/case_1.nii.gz", "./imagesTr", "", ".", "/",
                     "./imagesTr/missing.nii.gz", "../data/dataset.json", "./dataset.json", "/dev/null",
                     "imagesTr/case_0_0000.nii.gz\x00x", "./imagesTr/" + "a" * 300 + ".nii.gz"]),
    json_values,
)

FIELDS = ["name", "modality", "labels", "training", "numTraining", "channel_names", "file_ending", "test"]


@st.composite
def dataset_descriptions(draw) -> str | bytes:
    """A dataset.json: a valid MSD v1 or nnU-Net v2 document with up to 3 changes, or text that is no document."""
    kind = draw(st.sampled_from(["msd", "msd", "nnunet", "raw"]))
    if kind == "raw":
        return draw(st.one_of(
            st.sampled_from(["", "{", "[]", "null", "7", '"x"', "{\"training\": NaN}", "[" * 100000 + "]" * 100000,
                             '{"labels": {"0": "a", "1": "b"}, "training": [], "numTraining": 1e999}']),
            st.binary(max_size=20), st.text(max_size=20),
        ))
    document = msd_document() if kind == "msd" else nnunet_document()
    for _ in range(draw(st.integers(0, 3))):
        change = draw(st.sampled_from(["delete", "replace", "entry", "entry_field", "labels", "channels"]))
        field = draw(st.sampled_from(FIELDS))
        if change == "delete":
            document.pop(field, None)
        elif change == "replace":
            document[field] = draw(json_values)
        elif change in ("entry", "entry_field") and isinstance(document.get("training"), list) and document["training"]:
            index = draw(st.integers(0, len(document["training"]) - 1))
            if change == "entry":
                document["training"][index] = draw(json_values)
            elif isinstance(document["training"][index], dict):
                document["training"][index][draw(st.sampled_from(["image", "label", "other"]))] = draw(path_values)
        elif change == "labels":
            document["labels"] = draw(st.one_of(
                st.dictionaries(st.sampled_from(["0", "1", "2", "-1", "x", "1.0", " 1", "background", "blob"]),
                                json_values, max_size=4),
                st.sampled_from([{"0": "background"}, {"1": "blob"}, {"0": "b", "1": "x", "3": "y"},
                                 {"background": 0, "blob": [1, 2]}, {"background": 0, "blob": True},
                                 {"background": 0, "blob": 1.0}, {"background": -1, "blob": 0}]),
            ))
        else:
            key = "modality" if kind == "msd" else "channel_names"
            document[key] = draw(st.one_of(
                st.dictionaries(st.sampled_from(["0", "1", "x", "-1", "01", " 0"]), json_values, max_size=3),
                json_values,
            ))
    return json.dumps(document, allow_nan=True)


@settings(COMMON, max_examples=60)
@given(description=dataset_descriptions())
def test_dataset_json_files(files, capsys, description):
    """60 generated dataset.json files through `hpsearch train` (up to TensorFlow)."""
    with dataset_folder(files, description) as data:
        out = data.parent / "model"
        run_train(train_argv(data, out), capsys, [data, files], out)


# ---------------------------------------------------------------- params files

TABLE1 = ["dropout keep probability", "l2 regularization weight", "learning rate", "beta1", "beta2",
          "gradient clip", "channels in first conv layer"]
param_values = st.one_of(
    st.floats(), st.integers(-5, 2000), st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from(["3e-4", "1.0e-3", "nan", "inf", "-inf", "0x10", "1_000", "", "yes", "~", "0.5\n"]),
    json_values,
)
param_keys = st.one_of(st.sampled_from(TABLE1 + ["study", "trial", "validation IoU", "hyperparameters", "training"]),
                       st.text(max_size=8))


def _yaml_text(value) -> str:
    return yaml.safe_dump(value, allow_unicode=True)


@st.composite
def params_files(draw) -> bytes:
    kind = draw(st.sampled_from(["flat", "nested", "raw"]))
    if kind == "raw":
        return draw(st.one_of(st.sampled_from([
            b"", b"~\n", b"- 1\n- 2\n", b"42\n", b"hyperparameters: 3\n", b"hyperparameters:\n  - 1\n",
            b"!!python/object/apply:os.system ['true']\n", b"learning rate: !!python/name:os.system\n",
            b"learning rate: !!binary aGVsbG8=\n", b"learning rate: !!timestamp 2001-12-14\n",
            b"learning rate: !custom 3\n", b"!!set {a, b}\n", b"? [a, b]\n: 1\n", b"a: &x [1]\nb: *x\n",
            b"learning rate: *undefined\n", b"\xff\xfe\x00", b"key: [unclosed\n", b"\tlearning rate: 1\n",
            b"learning rate: 1\nlearning rate: 2\n", b"%YAML 9.9\n---\na: 1\n", b"--- 1\n--- 2\n",
            b"channels in first conv layer: 30.5\n", b"channels in first conv layer: 1e400\n",
            b"learning rate: " + b"9" * 5000 + b"\n", b"learning rate: !!int x\n", b"beta1: !!timestamp 2001-13-45\n",
            b"learning rate: !!float x\n", b"learning rate: !!binary '@@'\n",
        ]), st.binary(max_size=30)))
    values = draw(st.dictionaries(param_keys, param_values, max_size=4))
    if kind == "nested":
        values = {**draw(st.dictionaries(param_keys, json_scalars, max_size=2)), "hyperparameters": values}
    return _yaml_text(values).encode("utf-8", "surrogatepass")


@settings(COMMON, max_examples=50)
@given(text=params_files())
def test_params_files(files, capsys, text):
    """50 generated params files through `hpsearch train --params` (up to TensorFlow)."""
    with dataset_folder(files, json.dumps(msd_document())) as data:
        params = data.parent / "params.yaml"
        params.write_bytes(text)
        out = data.parent / "model"
        run_train(train_argv(data, out, "--params", str(params)), capsys, [data.parent, files], out)


# ---------------------------------------------------------------- NIfTI files

ODD_ZOOMS = st.sampled_from([(1.5, 1.5, 8.0), (1.0, 1.0, 1.0), (1e-30, 1.0, 1.0), (1e30, 1e30, 1e30),
                             (0.0, 1.0, 1.0), (-2.0, 1.0, 3.0), (float("nan"), 1.0, 1.0), (float("inf"), 1.0, 1.0)])
DTYPES = st.sampled_from(["uint8", "int16", "int32", "float32", "float64", "int8", "uint16", "complex64"])


@st.composite
def volumes(draw, *, label: bool, like: tuple[int, ...] | None = None) -> tuple[np.ndarray, tuple]:
    """An array as it may sit in a NIfTI file, and its voxel size: any dimensionality 1-5, small or zero sizes,
    any dtype, odd values; with `like`, usually of that shape."""
    ndim = draw(st.sampled_from([3, 3, 3, 4, 2, 1, 5]))
    if like is not None and draw(st.integers(0, 3)):
        shape = list(like[:3]) + draw(st.sampled_from([[], [], [1], [2]]))
    elif draw(st.booleans()):
        shape = list(SHAPE[:ndim]) + [1] * max(0, ndim - 3)
    else:
        shape = draw(st.lists(st.integers(0, 9), min_size=ndim, max_size=ndim))
    dtype = draw(DTYPES)
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    data = (rng.integers(0, 2, shape) if label else rng.normal(100.0, 10.0, shape)).astype(dtype)
    if data.size and draw(st.booleans()):
        special = draw(st.sampled_from([np.nan, np.inf, -np.inf, 0.5, -1, 2, 255, 1e30]))
        index = tuple(int(rng.integers(0, s)) for s in shape)
        with np.errstate(invalid="ignore", over="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with contextlib.suppress(ValueError, OverflowError):
                data[index] = special
    return data, draw(ODD_ZOOMS)


def try_write(path: Path, data: np.ndarray, zooms) -> bool:
    """Write `data` as NIfTI with voxel size `zooms` in its header (pixdim, no qform or sform, so any number
    can stand there); False where nibabel itself refuses (no such file can exist)."""
    header = nib.Nifti1Header()
    try:
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            header.set_data_dtype(data.dtype)
            image = nib.Nifti1Image(data, None, header)
            image.header["pixdim"][1:4] = zooms
            path.parent.mkdir(parents=True, exist_ok=True)
            nib.save(image, path)
    except Exception:
        return False
    return True


@st.composite
def broken_cases(draw):
    """(what is replaced, image, label): an image, a label or both as generated volumes."""
    what = draw(st.sampled_from(["image", "label", "both"]))
    image = draw(volumes(label=False))
    label = draw(volumes(label=True, like=image[0].shape if what == "both" else SHAPE))
    return what, image, label


@settings(COMMON, max_examples=40)
@given(case=broken_cases())
def test_nifti_files_in_a_dataset(files, capsys, case):
    """40 generated NIfTI image and/or label files as case_0 of a dataset, through `hpsearch train`."""
    what, image, label = case
    with tempfile.TemporaryDirectory(prefix="props-") as name:
        data = Path(name) / "data"
        shutil.copytree(files, data)
        (data / "dataset.json").write_text(json.dumps(msd_document()))
        if what in ("image", "both"):
            assume(try_write(data / "imagesTr" / "case_0_0000.nii.gz", *image))
        if what in ("label", "both"):
            assume(try_write(data / "labelsTr" / "case_0.nii.gz", *label))
        out = Path(name) / "model"
        # All cases are read, whichever part of the split case_0 falls in.
        run_train(train_argv(data, out, "--val-fraction", "0", "--test-fraction", "0"), capsys, [data], out)


# ---------------------------------------------------------------- the world of the segment and command-line cases


@pytest.fixture(scope="module")
def world(tmp_path_factory, files) -> Path:
    """A study journal with two complete trials, a dataset, and a model trained for 2 steps."""
    root = tmp_path_factory.mktemp("world")
    config = load_study(write_tiny_study(root / "studies", trials=2))
    data = root / "data"
    shutil.copytree(files, data)
    (data / "dataset.json").write_text(json.dumps(msd_document()))
    storage = open_storage(str(root / "studies" / "hpsearch.journal"), heartbeat_interval=None)
    tiny_study_with_two_trials(config, storage)
    (root / "params.yaml").write_text("hyperparameters:\n  channels in first conv layer: 2\n")
    assert main(["train", "--data", str(data), "--params", str(root / "params.yaml"), "--out", str(root / "model"),
                 *TINY_TRAIN]) == 0
    (root / "text.txt").write_text("not a study\n")
    return root


@settings(COMMON, max_examples=8)
@given(image=volumes(label=False))
def test_nifti_files_through_segment(world, capsys, image):
    """8 generated NIfTI images segmented with a trained model (TensorFlow runs the U-Net)."""
    with tempfile.TemporaryDirectory(prefix="props-") as name:
        source = Path(name) / "in" / "scan.nii.gz"
        assume(try_write(source, *image))
        target = Path(name) / "out" / "mask.nii.gz"
        argv = ["segment", "--model", str(world / "model"), str(source), str(target)]
        before = snapshot(source.parent, world / "model")
        code, err = run_main(argv, capsys)
        check_promise(argv, code, err)
        assert snapshot(source.parent, world / "model") == before
        if code == 0:
            mask = nib.load(target)
            assert mask.shape[:3] == image[0].shape[:3]
        else:
            assert not target.exists()


# ---------------------------------------------------------------- command lines

PATH_WORDS = ["{root}/studies/hpsearch.journal", "{root}/studies/tiny.yaml", "{root}/data", "{root}/model",
              "{root}/text.txt", "{root}/nowhere", "{root}/nowhere/deeper.yaml", "{root}/model/run.json",
              "{root}/data/dataset.json", "{tmp}/new", "{tmp}/new.yaml", "{tmp}/new.html", "{root}/text.txt/below",
              "{root}", "/dev/null", "/proc/self/status", "tiny", "nope", "", "-", "--", "x" * 300,
              "sqlite:///{tmp}/none/x.db", "bogus://x", "postgresql://u@:notaport/db", "{root}/studies",
              "1", "0", "-1", "16x16x8", "0x1x1", "1e9", "nan", "ünïcode", "a\nb"]
# Commands that would run for minutes or serve forever on valid input get a storage that does not exist.
NEVER_VALID = {"launch", "worker", "dashboard"}


def _options(command: str) -> list:
    from hpsearch.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction").choices[command]
    if command == "data":
        sub = next(a for a in sub._actions if a.__class__.__name__ == "_SubParsersAction").choices["synth"]
    return [a for a in sub._actions if a.dest != "help"]


COMMANDS = ["data", "train", "segment", "evaluate", "init", "launch", "worker", "status", "dashboard", "export", "report"]


@st.composite
def command_lines(draw) -> list[str]:
    command = draw(st.sampled_from(COMMANDS + ["--version", "--help", "bogus"]))
    if command not in COMMANDS:
        return [command] + draw(st.lists(st.sampled_from(PATH_WORDS), max_size=2))
    argv = [command] + (["synth"] if command == "data" else [])
    options = _options(command)
    required = [a for a in options if a.required or not a.option_strings]
    for action in required + draw(st.lists(st.sampled_from(options), max_size=5)):
        if action.option_strings:
            argv.append(draw(st.sampled_from(action.option_strings)))
        if action.nargs == 0:
            continue
        if action.choices and draw(st.booleans()):
            argv.append(str(draw(st.sampled_from(sorted(action.choices)))))  # choices may be ints (--channels)
        elif action.dest in ("steps", "cases", "eval_every") and draw(st.booleans()):
            argv.append(draw(st.sampled_from(["1", "2"])))
        else:
            argv.append(draw(st.one_of(st.sampled_from(PATH_WORDS), st.text(max_size=6))))
    if command in NEVER_VALID:
        argv += ["--storage", "{tmp}/absent/hpsearch.journal", "--study", "{tmp}/absent.yaml"]
    if command == "data":
        argv += ["--shape", "8x8x4", "--cases", "3"] if draw(st.booleans()) else []
    if command == "train":
        argv += ["--data", "{root}/data"] if draw(st.booleans()) else []
    return argv


def _format(argv: list[str], root: Path, tmp: Path) -> list[str]:
    return [arg.replace("{root}", str(root)).replace("{tmp}", str(tmp)) for arg in argv]


def check_kept(root: Path, before: dict[str, str], argv: list[str]) -> None:
    """Every file and folder of `before` is still there, unchanged; what a command newly wrote (a dataset
    synthesised into a new folder, an export) is removed so the next case sees the same world."""
    after = snapshot(root)
    assert {path: after.get(path) for path in before} == before, f"{argv} changed the world's files"
    for path in sorted(set(after) - set(before), key=len):
        if Path(path).is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)


@contextlib.contextmanager
def in_new_folder():
    with tempfile.TemporaryDirectory(prefix="props-") as name:
        previous = os.getcwd()
        os.chdir(name)
        try:
            yield Path(name)
        finally:
            os.chdir(previous)


@settings(COMMON, max_examples=80)
@given(argv=command_lines())
def test_command_lines(world, capsys, argv):
    """80 generated command lines through hpsearch.cli.main in-process, in an empty working folder."""
    before = snapshot(world)
    with in_new_folder() as tmp:
        argv = _format(argv, world, tmp)
        code, err = run_main(argv, capsys, stop_before_tensorflow=argv[0] == "train")
        check_promise(argv, code, err, usage_allowed=True)
        event(f"{argv[0]}: exit {code}" + (" (usage)" if err.startswith("usage:") else ""))
    check_kept(world, before, argv)


@settings(COMMON, max_examples=3)
@given(argv=command_lines())
def test_command_lines_in_a_subprocess(world, argv):
    """3 generated command lines through `python -m hpsearch.cli` (training ones excluded: they would train)."""
    assume(argv[0] not in ("train", "segment", "evaluate"))
    before = snapshot(world)
    with in_new_folder() as tmp:
        argv = _format(argv, world, tmp)
        env = {k: v for k, v in os.environ.items() if not k.startswith("HPSEARCH_")}
        result = subprocess.run([sys.executable, "-m", "hpsearch.cli", *argv], cwd=tmp, env=env,
                                capture_output=True, text=True, timeout=300)
        check_promise(argv, result.returncode, result.stderr, usage_allowed=True)
    check_kept(world, before, argv)


# ---------------------------------------------------------------- an output folder that cannot hold the model


@contextlib.contextmanager
def mounted_tmpfs(mount_point: Path, options: str):
    """A tmpfs mounted at the new folder `mount_point` with mount `options`; unmounted afterwards.
    Skipped where mounting is not allowed."""
    mount_point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


@pytest.fixture
def tiny_tmpfs(tmp_path):
    """A 200 KiB tmpfs: a disk that fills up."""
    with mounted_tmpfs(tmp_path / "full", "size=200k") as mount_point:
        yield mount_point


def test_train_on_a_full_disk_says_where_the_model_went(world, tiny_tmpfs, capsys, monkeypatch, tmp_path):
    """The model does not fit on the tmpfs: one line, exit 1, and the trained model saved to the fallback folder."""
    rescue = tmp_path / "rescue"
    rescue.mkdir()
    monkeypatch.setenv("TMPDIR", str(rescue))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    (tiny_tmpfs / "filler").write_bytes(b"\0" * 150_000)
    argv = ["train", "--data", str(world / "data"), "--out", str(tiny_tmpfs / "model"),
            "--params", str(world / "params.yaml"), *TINY_TRAIN]
    code, err = run_main(argv, capsys)
    assert code == 1 and "Traceback" not in err, err
    # Before it, stderr holds the training's progress lines.
    assert [line for line in err.splitlines() if line.startswith("hpsearch:")] == [err.strip().splitlines()[-1]], err
    line = err.strip().splitlines()[-1]
    assert str(tiny_tmpfs / "model") in line and "No space left on device" in line, err
    saved = [p for p in rescue.iterdir() if (p / "model.keras").is_file()]
    assert len(saved) == 1 and str(saved[0]) in line, (err, list(rescue.iterdir()))
    assert sorted(p.name for p in saved[0].iterdir()) == ["model.keras", "params.yaml", "run.json"]
    assert sorted(p.name for p in tiny_tmpfs.iterdir()) == ["filler"]  # no half-written model


@pytest.fixture
def read_only_folder(tmp_path):
    """A read-only tmpfs (root ignores file modes, not a read-only mount)."""
    with mounted_tmpfs(tmp_path / "ro", "ro,size=64k") as folder:
        yield folder


@pytest.mark.parametrize("where", ["read-only folder", "parent is a file"])
def test_train_refuses_an_output_it_cannot_write_before_training(world, capsys, tmp_path, where, request):
    """Checked before the data is read, so no training time is lost: one line, exit 2."""
    if where == "read-only folder":
        out = request.getfixturevalue("read_only_folder") / "model"
    else:
        out = world / "text.txt" / "model"
    before = snapshot(world)
    argv = train_argv(world / "data", out)
    code, err = run_main(argv, capsys, stop_before_tensorflow=True)
    check_promise(argv, code, err)
    assert code == 2 and str(out.parent) in err, err
    assert snapshot(world) == before
