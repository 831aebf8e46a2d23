"""`hpsearch dashboard` as a real server process: optuna-dashboard's API and page, read-only, 127.0.0.1, Ctrl-C."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from pathlib import Path

import optuna
import pytest
from optuna.artifacts import FileSystemArtifactStore, upload_artifact
from optuna.trial import TrialState

from hpsearch.storage import open_storage
from searchutil import hpsearch, wait_for
from test_export import SPACE, TRIALS, make_study


@pytest.fixture(params=["journal", pytest.param("postgres", marks=pytest.mark.postgres)])
def storage_url(request, tmp_path):
    if request.param == "journal":
        return str(tmp_path / "study.journal")
    return request.getfixturevalue("postgres_url")


class Server:
    """A `hpsearch dashboard` subprocess whose merged output is collected by a thread."""

    def __init__(self, *args: str, **popen) -> None:
        self.process = hpsearch("dashboard", *args, **popen)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.process.stdout:
            self.lines.append(line)

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def url(self) -> str:
        def printed_url():
            """the dashboard's URL line"""
            if self.process.poll() is not None:
                raise AssertionError(f"the dashboard exited with {self.process.returncode}:\n{self.output}")
            match = re.search(r"at (http://\S+)", self.output)
            return match and match.group(1)

        return wait_for(printed_url, timeout=30, interval=0.1)

    def stop(self, sig=signal.SIGINT) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        try:
            # Seconds on a quiet machine; the margin keeps a loaded 2-core machine from failing the test.
            code = self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
        self._reader.join(timeout=5)
        return code


def get(url: str) -> tuple[int, str, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.headers.get("Content-Type", ""), response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.headers.get("Content-Type", ""), error.read()


def post(url: str, body: dict) -> int:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def listening_addresses(port: int) -> set[str]:
    """Local addresses of the sockets listening on `port` (Linux /proc/net/tcp)."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, hex_port = local.split(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]))
    return found


def test_the_dashboard_serves_the_study_its_trials_and_models(storage_url, tmp_path):
    _, _, study = make_study(storage_url, tmp_path / "studies", TRIALS, search_space=SPACE)
    artifacts = tmp_path / "studies" / "artifacts"
    artifacts.mkdir()
    model = tmp_path / "trial-4-model.zip"
    model.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip archive
    # Trial 4 stores its model the way the objective does: as an artifact while it runs.
    study.enqueue_trial(TRIALS[2]["params"])
    trial = study.ask(study.trials[2].distributions)
    artifact_id = upload_artifact(
        artifact_store=FileSystemArtifactStore(str(artifacts)), file_path=str(model),
        study_or_trial=trial, mimetype="application/zip",
    )
    study.tell(trial, 0.55)
    storage = open_storage(storage_url, heartbeat_interval=None)
    server = Server("--study", "tiny", "--storage", storage_url, "--artifacts", str(artifacts), "--port", "0")
    try:
        url = server.url()
        base = url.split("/dashboard")[0]
        port = int(base.rsplit(":", 1)[1])
        # Bound to this machine only, by default.
        assert base.startswith("http://127.0.0.1:")
        assert listening_addresses(port) == {"127.0.0.1"}
        assert "warning" not in server.output

        status, kind, body = get(f"{base}/api/studies")
        assert status == 200 and kind.startswith("application/json")
        summaries = json.loads(body)["study_summaries"]
        assert [s["study_name"] for s in summaries] == ["tiny"]
        study_id = summaries[0]["study_id"]
        assert url == f"{base}/dashboard/studies/{study_id}"  # the printed URL opens the study

        detail = json.loads(get(f"{base}/api/studies/{study_id}?after=0")[2])
        assert detail["name"] == "tiny" and detail["directions"] == ["maximize"]
        trials = {t["number"]: t for t in detail["trials"]}
        assert sorted(trials) == [0, 1, 2, 3, 4]
        assert [trials[n]["state"] for n in range(5)] == ["Complete", "Complete", "Complete", "Fail", "Complete"]
        assert trials[1]["values"] == [0.63]
        assert [(v["step"], v["value"]) for v in trials[1]["intermediate_values"]] == [(3, 0.315), (6, 0.63)]
        assert {p["name"] for p in trials[1]["params"]} == set(SPACE)
        assert [t["number"] for t in detail["best_trials"]] == [1]
        user_attrs = {a["key"]: a["value"] for a in trials[1]["user_attrs"]}
        assert user_attrs["parent_trial"] == "0"

        # The trial's model shows and downloads.
        assert json.loads(get(f"{base}/api/meta")[2])["artifact_is_available"] is True
        assert [a["artifact_id"] for a in trials[4]["artifacts"]] == [artifact_id]
        assert trials[1]["artifacts"] == []
        status, kind, body = get(f"{base}/artifacts/{study_id}/{trials[4]['trial_id']}/{artifact_id}")
        assert status == 200 and kind == "application/zip" and body == model.read_bytes()

        # The page itself (/ redirects to /dashboard).
        for path in ("/", "/dashboard", f"/dashboard/studies/{study_id}"):
            status, kind, body = get(base + path)
            assert status == 200 and kind.startswith("text/html") and b"<title>Optuna Dashboard</title>" in body, path

        # Read-only: writes are refused, and the study is unchanged.
        assert post(f"{base}/api/studies", {"study_name": "intruder", "directions": ["maximize"]}) == 403
        assert post(f"{base}/api/trials/{trials[1]['trial_id']}/tell", {"state": "Fail"}) == 403
        after = optuna.load_study(study_name="tiny", storage=storage)
        assert [s.study_name for s in optuna.get_all_study_summaries(storage)] == ["tiny"]
        assert after.trials[1].state == TrialState.COMPLETE
    finally:
        code = server.stop(signal.SIGINT)
    # Ctrl-C stops it cleanly.
    assert code in (0, 130), server.output
    assert "Traceback" not in server.output
    assert "dashboard stopped" in server.output


def test_a_non_loopback_host_is_warned_about_and_sigterm_stops_it(tmp_path):
    journal = str(tmp_path / "study.journal")
    make_study(journal, tmp_path / "studies", TRIALS[:1], search_space=SPACE)
    # No --study and no studies/quickstart.yaml here: the dashboard lists whatever the storage holds.
    server = Server("--storage", journal, "--host", "0.0.0.0", "--port", "0", cwd=tmp_path)
    try:
        url = server.url()
        port = int(url.split("/dashboard")[0].rsplit(":", 1)[1])
        assert listening_addresses(port) == {"0.0.0.0"}
        wait_for(lambda: "warning" in server.output, timeout=5, interval=0.1)
        assert "reachable from other machines" in server.output
        assert "no artifact folder" in server.output  # none beside the default study: said, not created
        assert not (tmp_path / "studies" / "artifacts").exists()
        assert get(url.replace("0.0.0.0", "127.0.0.1"))[0] == 200
    finally:
        code = server.stop(signal.SIGTERM)  # what `docker stop` sends
    assert code == 0 and "Traceback" not in server.output


def test_bad_usage_is_one_line_and_exit_2(tmp_path):
    journal = tmp_path / "missing.journal"
    process = hpsearch("dashboard", "--storage", str(journal), "--port", "0", cwd=tmp_path)
    output, _ = process.communicate(timeout=30)
    assert process.returncode == 2 and output.count("\n") == 1 and "no study storage" in output
    assert not journal.exists()  # looking creates nothing

    make_study(str(journal), tmp_path / "studies", TRIALS[:1], search_space=SPACE)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        process = hpsearch("dashboard", "--storage", str(journal), "--port", str(port), cwd=tmp_path)
        output, _ = process.communicate(timeout=30)
    assert process.returncode == 2 and output.count("\n") == 1 and f"port {port}" in output and "already in use" in output
