"""Where trial models and checkpoints are kept: a folder, or an S3 bucket that every machine reaches.

`--artifacts` (else `$HPSEARCH_ARTIFACTS`, else `artifacts/` beside the study) names the store.
`s3://bucket/prefix` stores through Optuna's Boto3ArtifactStore under that prefix; boto3 reads
credentials, region and `AWS_ENDPOINT_URL` (for MinIO, Ceph and other S3-compatible servers)
from the environment as usual. Anything else is a folder path (Optuna's FileSystemArtifactStore).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import BinaryIO

from hpsearch.errors import UsageError

ARTIFACTS_ENV = "HPSEARCH_ARTIFACTS"
S3_SCHEME = "s3://"


def resolve_artifacts(cli_value: str | None, *, default_folder: Path) -> str:
    """The `--artifacts` value, else `$HPSEARCH_ARTIFACTS`, else the default folder."""
    for value in (cli_value, os.environ.get(ARTIFACTS_ENV)):
        if value is not None and value.strip():
            return value.strip()
    return str(default_folder)


def is_s3(value: str) -> bool:
    return value.lower().startswith(S3_SCHEME)


class PrefixedArtifactStore:
    """An Optuna artifact store that keeps every artifact of `inner` under `prefix/`."""

    def __init__(self, inner, prefix: str) -> None:
        self.inner = inner
        self.prefix = prefix.strip("/")

    def _key(self, artifact_id: str) -> str:
        return f"{self.prefix}/{artifact_id}" if self.prefix else artifact_id

    def open_reader(self, artifact_id: str) -> BinaryIO:
        return self.inner.open_reader(self._key(artifact_id))

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        self.inner.write(self._key(artifact_id), content_body)

    def remove(self, artifact_id: str) -> None:
        self.inner.remove(self._key(artifact_id))


def open_artifact_store(value: str, *, create: bool):
    """The artifact store `value` names; a folder is created when `create`, else None if it does not exist.

    Raises UsageError with one sentence for an S3 location that cannot be used (no boto3, no
    such bucket, no credentials) or a folder that cannot be written.
    """
    if is_s3(value):
        return _open_s3(value)
    folder = Path(value)
    if not create and not folder.is_dir():
        return None
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder} is a file, but hpsearch keeps trial models in a folder there; "
                         "pass --artifacts DIR or s3://bucket/prefix.")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UsageError(f"cannot create the trial model folder {folder} ({error.strerror or error}); "
                         "pass --artifacts DIR or s3://bucket/prefix.") from None
    from optuna.artifacts import FileSystemArtifactStore

    return FileSystemArtifactStore(str(folder.resolve()))


def _open_s3(value: str):
    bucket, _, prefix = value[len(S3_SCHEME):].partition("/")
    if not bucket:
        raise UsageError(f"--artifacts {value} names no bucket; write s3://BUCKET/PREFIX.")
    try:
        import boto3
        import botocore.exceptions
    except ImportError:
        raise UsageError(f"--artifacts {value} needs boto3; pip install 'hpsearch[s3]'.") from None
    from optuna.artifacts import Boto3ArtifactStore

    client = boto3.client("s3")
    try:
        client.head_bucket(Bucket=bucket)
    except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as error:
        raise UsageError(f"cannot use the S3 bucket {bucket!r} of --artifacts {value} ({error}); check the bucket "
                         "name, the credentials and AWS_ENDPOINT_URL.") from None
    return PrefixedArtifactStore(Boto3ArtifactStore(bucket, client=client), prefix)
