"""docker-compose.yml and its Dockerfile, checked without Docker: services, commands, storage URL, GPUs."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import make_url

from hpsearch.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text(encoding="utf-8"))  # YAML anchors and << merges resolved


def interpolate(text: str) -> str:
    """Compose's ${VAR:-default} with nothing set: the defaults."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)


def command_of(service: dict) -> list[str]:
    command = service.get("command", [])
    return shlex.split(command) if isinstance(command, str) else [str(part) for part in command]


def hpsearch_services(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if s.get("image", "").startswith("hpsearch") or "build" in s}


def workers(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if command_of(s)[:2] == ["hpsearch", "worker"]}


def test_the_services_exist(compose):
    services = compose["services"]
    assert {"postgres", "dashboard"} <= set(services)
    assert sorted(workers(compose)) == ["worker-gpu0", "worker-gpu1"]


def test_every_hpsearch_command_parses(compose):
    commands = [command_of(s) for s in compose["services"].values()]
    hpsearch_commands = [c for c in commands if c and c[0] == "hpsearch"]
    assert len(hpsearch_commands) >= 4  # dashboard, two workers, the tools service
    parser = build_parser()
    for command in hpsearch_commands:
        args = parser.parse_args(command[1:])  # argparse exits (SystemExit) on a bad command
        assert callable(args.handler)
    # The examples in its comments and in the README: docker compose run ... hpsearch hpsearch COMMAND.
    examples = 0
    for text in (COMPOSE.read_text(encoding="utf-8"), (ROOT / "README.md").read_text(encoding="utf-8")):
        for match in re.finditer(r"docker compose run .*?hpsearch (hpsearch [^#>\n]*)", text):
            parser.parse_args(shlex.split(match.group(1))[1:])
            examples += 1
    assert examples >= 4


def test_the_dashboard_listens_in_its_container_and_is_published_on_loopback(compose):
    dashboard = compose["services"]["dashboard"]
    args = build_parser().parse_args(command_of(dashboard)[1:])
    assert args.command == "dashboard" and args.host == "0.0.0.0"
    assert dashboard["ports"] == [f"127.0.0.1:{args.port}:{args.port}"]


def test_all_services_use_one_postgresql_study_storage(compose):
    postgres = compose["services"]["postgres"]
    env = {k: interpolate(str(v)) for k, v in postgres["environment"].items()}
    urls = {name: interpolate(s["environment"]["HPSEARCH_STORAGE"]) for name, s in hpsearch_services(compose).items()}
    assert {"dashboard", "worker-gpu0", "worker-gpu1"} <= set(urls)
    assert len(set(urls.values())) == 1, urls
    url = make_url(next(iter(urls.values())))
    assert url.drivername == "postgresql+psycopg2"
    assert url.host == "postgres"
    assert url.database == env["POSTGRES_DB"] and url.username == env["POSTGRES_USER"]
    assert url.password == env["POSTGRES_PASSWORD"]
    # One place for the password: the same variable in the server and in the URL.
    text = COMPOSE.read_text(encoding="utf-8")
    assert "${POSTGRES_PASSWORD:-" in postgres["environment"]["POSTGRES_PASSWORD"]
    assert len(re.findall(r"^\s+HPSEARCH_STORAGE:", text, re.MULTILINE)) == 1
    # Every service works on the same study.
    parser = build_parser()
    studies = {parser.parse_args(command_of(s)[1:]).study for s in hpsearch_services(compose).values() if command_of(s)[:1] == ["hpsearch"]}
    assert studies <= {"studies/paper.yaml", "paper"}
    assert "paper.yaml" in "".join(command_of(compose["services"]["study"]))


def test_postgres_keeps_its_data_and_reports_its_health(compose):
    postgres = compose["services"]["postgres"]
    volume = postgres["volumes"][0].split(":")
    assert volume[0] in compose["volumes"] and volume[1] == "/var/lib/postgresql/data"
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for name, service in hpsearch_services(compose).items():
        assert service["depends_on"]["postgres"]["condition"] == "service_healthy", name


def test_each_worker_reserves_its_own_gpu(compose):
    ids = []
    for name, service in workers(compose).items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert len(devices) == 1, name
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"], name
        ids += devices[0]["device_ids"]
        # The reserved GPU is device 0 inside the container.
        assert build_parser().parse_args(command_of(service)[1:]).gpu == "0"
        assert service["depends_on"]["study"]["condition"] == "service_completed_successfully"
    assert sorted(ids) == ["0", "1"]


def test_the_dockerfile_installs_the_package():
    text = DOCKERFILE.read_text(encoding="utf-8")
    assert re.search(r"^FROM python:3\.1[1-9]", text, re.MULTILINE)
    for folder in ("hpsearch", "model"):
        assert re.search(rf"^COPY {folder} ", text, re.MULTILINE), folder
    assert re.search(r"^COPY pyproject\.toml ", text, re.MULTILINE)
    assert re.search(r"pip install \.(\s|$)", text)
    assert re.search(r"^RUN hpsearch init /app", text, re.MULTILINE)  # studies/*.yaml from the packaged templates
    ignored = (ROOT / ".dockerignore").read_text(encoding="utf-8").split()
    assert {".venv", ".git", "data", ".env"} <= set(ignored)


@pytest.mark.postgres
def test_the_study_service_creates_the_study_the_workers_join(compose, postgres_url, tmp_path):
    """Run the one-shot `study` service's command (as its container would) on a tiny paper.yaml."""
    import subprocess
    import sys

    from optuna.trial import TrialState

    from hpsearch.vocabulary import CONFIG_ATTR, TARGET_ATTR
    from searchutil import load, write_tiny_study

    write_tiny_study(tmp_path / "studies", name="paper").rename(tmp_path / "studies" / "paper.yaml")
    command = command_of(compose["services"]["study"])
    assert command[:2] == ["python", "-c"]
    env = {"PATH": "/usr/bin:/bin", "HPSEARCH_STORAGE": postgres_url}
    for _ in range(2):  # a second `docker compose up` resumes the same study
        done = subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert "study 'paper' in PostgreSQL study storage" in done.stdout and "0 of 4 complete" in done.stdout
    assert (tmp_path / "studies" / "data" / "dataset.json").is_file()  # the data written once, before the workers
    study = load(postgres_url, "paper")
    assert study.user_attrs[TARGET_ATTR] == 4 and study.user_attrs[CONFIG_ATTR]["study"] == "paper"
    assert not study.get_trials(states=(TrialState.RUNNING,))


@pytest.mark.slow
@pytest.mark.postgres
def test_a_compose_worker_joins_the_study_and_stores_its_model(compose, postgres_url, tmp_path):
    """The `study` service's command, then worker-gpu0's command (on the CPU, one trial), as in the containers."""
    import subprocess
    import sys

    from optuna.trial import TrialState

    from searchutil import finish, hpsearch, load, write_tiny_study

    write_tiny_study(tmp_path / "studies", name="paper").rename(tmp_path / "studies" / "paper.yaml")
    env = {"HPSEARCH_STORAGE": postgres_url}
    command = command_of(compose["services"]["study"])
    assert subprocess.run([sys.executable, *command[1:]], cwd=tmp_path, env=env, timeout=120).returncode == 0
    worker = command_of(compose["services"]["worker-gpu0"])
    assert worker[:2] == ["hpsearch", "worker"]
    args = list(worker[1:])
    args[args.index("--gpu") + 1] = ""  # no GPU here: CUDA_VISIBLE_DEVICES="" runs on the CPU
    code, output = finish(hpsearch(*args, "--trials", "1", cwd=tmp_path, env=env), timeout=300)
    assert code == 0, output
    complete = load(postgres_url, "paper").get_trials(states=(TrialState.COMPLETE,))
    assert len(complete) == 1 and "model_artifact" in complete[0].user_attrs
    assert any((tmp_path / "studies" / "artifacts").iterdir())  # the volume the dashboard serves
