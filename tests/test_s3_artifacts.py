"""Trial models and checkpoints in an S3 bucket (a real S3-compatible server: moto, on 127.0.0.1), reached by
workers, the dashboard and download_artifact alike; a bucket that cannot be used is one sentence."""

from __future__ import annotations

import io
import json
import socket
import urllib.request
import zipfile

import pytest
from moto.server import ThreadedMotoServer

from hpsearch.artifacts import PrefixedArtifactStore, open_artifact_store
from hpsearch.cli import main
from searchutil import finish, hpsearch, load, write_tiny_study
from test_dashboard import Server, get


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def s3(monkeypatch):
    """A moto S3 server on 127.0.0.1 with an empty bucket 'models'; boto3 pointed at it through the environment."""
    import boto3

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port)
    server.start()
    environment = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
                   "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    client = boto3.client("s3")
    client.create_bucket(Bucket="models")
    yield client
    # moto keeps its buckets in this process: empty them for the next test.
    urllib.request.urlopen(urllib.request.Request(f"http://127.0.0.1:{port}/moto-api/reset", method="POST"))
    server.stop()


def test_a_search_stores_its_models_in_the_bucket_and_the_dashboard_serves_them(s3, tmp_path):
    journal = str(tmp_path / "study.journal")
    study_file = write_tiny_study(tmp_path / "studies", trials=1)
    code, output = finish(hpsearch("launch", "--workers", "1", "--study", str(study_file), "--storage", journal,
                                   "--artifacts", "s3://models/searches/tiny"))
    assert code == 0, output
    [trial] = load(journal).trials
    artifact_id = trial.user_attrs["model_artifact"]
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="models")["Contents"]]
    assert f"searches/tiny/{artifact_id}" in keys
    assert not (tmp_path / "studies" / "artifacts").exists()  # nothing kept on this machine's disk
    # Read back through the store as any machine would, and as the dashboard serves it.
    store = open_artifact_store("s3://models/searches/tiny", create=False)
    archive = zipfile.ZipFile(io.BytesIO(store.open_reader(artifact_id).read()))
    assert json.loads(archive.read("run.json"))["study"] == "tiny"
    server = Server("--study", "tiny", "--storage", journal, "--artifacts", "s3://models/searches/tiny", "--port", "0")
    try:
        base = server.url().split("/dashboard")[0]
        detail = json.loads(get(f"{base}/api/studies/0?after=0")[2])
        [shown] = detail["trials"]
        assert [a["artifact_id"] for a in shown["artifacts"]] == [artifact_id]
        status, _, body = get(f"{base}/artifacts/0/{shown['trial_id']}/{artifact_id}")
        assert status == 200 and zipfile.ZipFile(io.BytesIO(body)).namelist()
    finally:
        server.stop()


def test_the_prefix_keeps_stores_apart(s3):
    store = open_artifact_store("s3://models/a", create=False)
    assert isinstance(store, PrefixedArtifactStore)
    store.write("x", io.BytesIO(b"one"))
    open_artifact_store("s3://models/b", create=False).write("x", io.BytesIO(b"two"))
    assert store.open_reader("x").read() == b"one"
    store.remove("x")
    assert [o["Key"] for o in s3.list_objects_v2(Bucket="models")["Contents"]] == ["b/x"]


def test_a_missing_bucket_is_one_sentence(s3, tmp_path, capsys):
    study_file = write_tiny_study(tmp_path / "studies", trials=1)
    code = main(["launch", "--study", str(study_file), "--storage", str(tmp_path / "s.journal"),
                 "--artifacts", "s3://no-such-bucket/x"])
    assert code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "no-such-bucket" in line and "AWS_ENDPOINT_URL" in line
    assert not (tmp_path / "s.journal").exists()  # refused before the study storage was created
