"""deploy/kubernetes/ checked without a cluster: every manifest against the Kubernetes API schemas
(kubernetes-validate's bundled schemas, offline), and its commands, environment variables, ports,
paths and storage URL against the real CLI, the code and the Dockerfile. The PostgreSQL test runs
the study Job's, the workers' and the dashboard's commands as their pods would, /app being a
temporary folder."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from sqlalchemy.engine import make_url

from hpsearch.cli import build_parser
from hpsearch.config import load_study
from hpsearch.storage import DEFAULT_ENV
from hpsearch.templates import template_path

ROOT = Path(__file__).resolve().parent.parent
KUBE = ROOT / "deploy" / "kubernetes"
README = KUBE / "README.md"
OLDEST_VERSION = "1.31"  # README's oldest supported Kubernetes: podFailurePolicy and elastic Indexed Jobs are GA
IMAGE = "hpsearch"  # the image name in the manifests; kustomization.yaml's `images` points it at a registry


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBE.iterdir() if p.suffix in (".yaml", ".yml") and p.name != "kustomization.yaml")


@pytest.fixture(scope="module")
def resources() -> list[dict]:
    found = []
    for path in manifest_files():
        found += [r for r in yaml.safe_load_all(path.read_text(encoding="utf-8")) if r]
    return found


@pytest.fixture(scope="module")
def kustomization() -> dict:
    return yaml.safe_load((KUBE / "kustomization.yaml").read_text(encoding="utf-8"))


def find(resources: list[dict], kind: str, name: str | None = None) -> list[dict]:
    return [r for r in resources if r["kind"] == kind and name in (None, r["metadata"]["name"])]


def one(resources: list[dict], kind: str, name: str | None = None) -> dict:
    found = find(resources, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(resource: dict) -> dict:
    return resource["spec"]["template"]["spec"]


def all_containers(pod: dict) -> list[dict]:
    return pod.get("initContainers", []) + pod["containers"]


def container(resource: dict, name: str) -> dict:
    (found,) = [c for c in all_containers(pod_spec(resource)) if c["name"] == name]
    return found


def workloads(resources: list[dict]) -> list[dict]:
    return [r for r in resources if r["kind"] in ("Job", "Deployment", "StatefulSet")]


def hpsearch_containers(resources: list[dict]) -> list[tuple[str, dict]]:
    return [
        (f"{r['kind']}/{r['metadata']['name']}/{c['name']}", c)
        for r in workloads(resources) for c in all_containers(pod_spec(r)) if c["image"] == IMAGE
    ]


def hpsearch_commands(command: list[str]) -> list[list[str]]:
    """The hpsearch invocations in a container command: itself, or each one inside `sh -c '...'`."""
    if command[0] == "hpsearch":
        return [command]
    if command[:2] == ["sh", "-c"]:
        return [shlex.split(m) for m in re.findall(r"\bhpsearch [^;&|>]*", command[2])]
    return []


def parsed(command: list[str]):
    return build_parser().parse_args(command[1:])  # argparse exits (SystemExit) on a bad command


def mounts(pod: dict, c: dict) -> dict[str, tuple[str, dict]]:
    """mountPath -> (claim name, the volumeMount) for the container's PVC mounts."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return {
        m["mountPath"]: (volumes[m["name"]]["persistentVolumeClaim"]["claimName"], m)
        for m in c.get("volumeMounts", []) if "persistentVolumeClaim" in volumes.get(m["name"], {})
    }


def dockerfile_workdir() -> str:
    (workdir,) = re.findall(r"^WORKDIR (\S+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"), re.MULTILINE)
    return workdir


# ---------------------------------------------------------------- the files and the schemas


def test_kustomization_lists_every_manifest(kustomization):
    listed = kustomization["resources"]
    assert len(listed) == len(set(listed))
    assert sorted(listed) == [p.name for p in manifest_files()]
    assert kustomization["namespace"] == "hpsearch"
    (image,) = kustomization["images"]
    assert image["name"] == IMAGE and image["newName"] and image["newTag"]


@pytest.mark.parametrize("version", [OLDEST_VERSION, kubernetes_validate.latest_version()])
def test_every_manifest_is_valid_against_the_kubernetes_schemas(resources, version):
    kinds = sorted({r["kind"] for r in resources})
    assert kinds == ["Deployment", "Job", "Namespace", "PersistentVolumeClaim", "Secret", "Service", "StatefulSet"]
    for resource in resources:
        try:
            kubernetes_validate.validate(resource, version, strict=True)  # strict: unknown fields are errors
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(part) for part in error.path)
            pytest.fail(f"{resource['kind']}/{resource['metadata']['name']} at {path}: {error.message}")


def test_the_schema_check_rejects_a_misspelt_field(resources):
    """The validation above is strict: a field Kubernetes does not know fails it."""
    worker = yaml.safe_load(yaml.safe_dump(one(resources, "Job", "hpsearch-worker")))
    pod_spec(worker)["containers"][0]["resource"] = {"limits": {"nvidia.com/gpu": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(worker, OLDEST_VERSION, strict=True)


def test_kustomize_renders_the_manifests_into_the_namespace_with_the_registry_image(kustomization):
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed; its built-in kustomize renders deploy/kubernetes")
    done = subprocess.run([kubectl, "kustomize", str(KUBE)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    rendered = [r for r in yaml.safe_load_all(done.stdout) if r]
    assert len(rendered) == sum(len([r for r in yaml.safe_load_all(p.read_text(encoding="utf-8")) if r]) for p in manifest_files())
    image = f"{kustomization['images'][0]['newName']}:{kustomization['images'][0]['newTag']}"
    for resource in rendered:
        kubernetes_validate.validate(resource, OLDEST_VERSION, strict=True)
        if resource["kind"] != "Namespace":
            assert resource["metadata"]["namespace"] == "hpsearch", resource["metadata"]["name"]
    images = {c["image"] for r in workloads(rendered) for c in all_containers(pod_spec(r))}
    assert images == {image, "postgres:16"}


# ---------------------------------------------------------------- commands and environment


def test_every_hpsearch_command_parses(resources):
    seen = set()
    for where, c in hpsearch_containers(resources):
        for command in hpsearch_commands(c["command"]):
            args = parsed(command)
            assert callable(args.handler), where
            seen.add(args.command)
            assert args.storage is None, f"{where}: the storage URL belongs in ${DEFAULT_ENV}, not on argv"
    assert seen == {"worker", "dashboard", "status"}
    # The README's commands, run in a pod with `kubectl exec ... -- hpsearch ...`.
    examples = re.findall(r"kubectl .*? -- (hpsearch [^#>\n]*)", README.read_text(encoding="utf-8"))
    assert len(examples) >= 3
    for example in examples:
        parsed(shlex.split(example))


def test_environment_variables_are_ones_the_code_reads(resources):
    sources = "".join(p.read_text(encoding="utf-8") for folder in ("hpsearch", "model") for p in (ROOT / folder).rglob("*.py"))
    secrets = {s["metadata"]["name"]: s["stringData"] for s in find(resources, "Secret")}
    for where, c in hpsearch_containers(resources):
        names = [e["name"] for e in c.get("env", [])]
        assert DEFAULT_ENV in names, where
        for name in names:
            assert f'"{name}"' in sources, f"{where}: hpsearch never reads ${name}"
    for resource in workloads(resources):
        for c in all_containers(pod_spec(resource)):
            for e in c.get("env", []):
                ref = e.get("valueFrom", {}).get("secretKeyRef")
                if ref:
                    assert ref["key"] in secrets[ref["name"]], f"{c['name']}: ${e['name']} names a missing secret key"
    # The official postgres image's variables.
    postgres = container(one(resources, "StatefulSet", "postgres"), "postgres")
    assert {e["name"] for e in postgres["env"]} == {"POSTGRES_USER", "POSTGRES_DB", "POSTGRES_PASSWORD", "PGDATA"}


def test_the_secret_url_reaches_the_postgres_service(resources):
    secret = one(resources, "Secret")["stringData"]
    statefulset = one(resources, "StatefulSet", "postgres")
    service = one(resources, "Service", statefulset["spec"]["serviceName"])
    env = {e["name"]: e for e in container(statefulset, "postgres")["env"]}
    url = make_url(secret[DEFAULT_ENV])
    assert url.drivername == "postgresql+psycopg2"
    assert url.host == service["metadata"]["name"]
    assert service["spec"]["selector"].items() <= statefulset["spec"]["template"]["metadata"]["labels"].items()
    (port,) = service["spec"]["ports"]
    assert url.port == port["port"]
    assert port["targetPort"] in [p["name"] for p in container(statefulset, "postgres")["ports"]]
    assert url.username == env["POSTGRES_USER"]["value"] and url.database == env["POSTGRES_DB"]["value"]
    assert env["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]["key"] == "POSTGRES_PASSWORD"
    assert url.password == secret["POSTGRES_PASSWORD"]  # one password in both places
    assert re.fullmatch(r"[A-Za-z0-9]+", secret["POSTGRES_PASSWORD"])


def test_postgres_keeps_its_data_on_a_claim(resources):
    statefulset = one(resources, "StatefulSet", "postgres")
    (claim,) = statefulset["spec"]["volumeClaimTemplates"]
    postgres = container(statefulset, "postgres")
    (mount,) = postgres["volumeMounts"]
    assert mount["name"] == claim["metadata"]["name"]
    pgdata = next(e["value"] for e in postgres["env"] if e["name"] == "PGDATA")
    assert Path(pgdata).parent == Path(mount["mountPath"])  # a subfolder: initdb refuses a volume's root
    assert "pg_isready" in " ".join(postgres["readinessProbe"]["exec"]["command"])


def test_the_workers_are_an_indexed_job_with_a_gpu_each(resources):
    job = one(resources, "Job", "hpsearch-worker")
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["completions"] == spec["parallelism"] >= 1  # elastic Indexed Jobs scale only with both equal
    assert pod_spec(job)["restartPolicy"] == "Never"  # podFailurePolicy and backoffLimitPerIndex need it
    worker = container(job, "worker")
    args = parsed(worker["command"])
    assert args.command == "worker" and args.gpu == "0"  # the pod's one GPU is device 0 inside it
    assert args.study == load_study(template_path("paper")).name  # the study the study Job creates
    resources_ = worker["resources"]
    assert resources_["limits"]["nvidia.com/gpu"] == 1
    assert resources_["requests"].get("nvidia.com/gpu", 1) == 1
    env = {e["name"]: e for e in worker["env"]}
    assert env[DEFAULT_ENV]["valueFrom"]["secretKeyRef"]["key"] == DEFAULT_ENV
    # They wait for the study Job, and wait on the same study.
    (wait,) = hpsearch_commands(container(job, "wait-for-study")["command"])
    assert parsed(wait).command == "status" and parsed(wait).study == args.study


def test_the_dashboard_port_matches_its_command_and_service(resources):
    deployment = one(resources, "Deployment", "hpsearch-dashboard")
    dashboard = container(deployment, "dashboard")
    args = parsed(dashboard["command"])
    assert args.command == "dashboard" and args.host == "0.0.0.0" and not args.allow_writes
    (port,) = dashboard["ports"]
    assert port["containerPort"] == args.port
    service = one(resources, "Service", "hpsearch-dashboard")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in (port["containerPort"], port["name"])
    assert dashboard["readinessProbe"]["httpGet"]["port"] in (port["containerPort"], port["name"])
    forward = f"port-forward svc/{service['metadata']['name']} {service_port['port']}:{service_port['port']}"
    assert forward in README.read_text(encoding="utf-8") and forward in (KUBE / "dashboard.yaml").read_text(encoding="utf-8")


def test_volumes_are_where_the_cli_looks(resources):
    workdir = dockerfile_workdir()
    claims = {c["metadata"]["name"]: c for c in find(resources, "PersistentVolumeClaim")}
    study_job = one(resources, "Job", "hpsearch-study")
    worker_job = one(resources, "Job", "hpsearch-worker")
    dashboard = one(resources, "Deployment", "hpsearch-dashboard")
    # Every hpsearch container starts in the image's WORKDIR, where `hpsearch init` put studies/.
    for where, c in hpsearch_containers(resources):
        assert c["workingDir"] == workdir, where
    script = container(study_job, "study")["command"][2]
    (study_file,) = re.findall(r'load_study\("([^"]+)"\)', script)
    assert study_file == "studies/paper.yaml"
    # The dataset: where the image's studies/paper.yaml says (data.path, relative to studies/).
    data_path = load_study(template_path("paper"), home=Path(workdir) / "studies").data_path
    study_mounts = mounts(pod_spec(study_job), container(study_job, "study"))
    worker_mounts = mounts(pod_spec(worker_job), container(worker_job, "worker"))
    for where, found in ("study Job", study_mounts), ("worker", worker_mounts):
        (data_mount,) = [m for m in found if data_path.is_relative_to(m)]
        assert found[data_mount][0] == "hpsearch-data", where
    assert not study_mounts[data_mount][1].get("readOnly")  # the study Job writes the synthetic data
    # The trial models: where the workers write them and the dashboard reads them.
    dashboard_mounts = mounts(pod_spec(dashboard), container(dashboard, "dashboard"))
    for pod, c, found in (worker_job, "worker", worker_mounts), (dashboard, "dashboard", dashboard_mounts):
        artifacts = parsed(container(pod, c)["command"]).artifacts
        assert found[artifacts][0] == "hpsearch-artifacts", c
    assert not worker_mounts[artifacts][1].get("readOnly")
    for name, claim in claims.items():
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"], name  # pods on several nodes share them
    used = {claim for found in (study_mounts, worker_mounts, dashboard_mounts) for claim, _ in found.values()}
    assert used == set(claims)
    # The image's user (Dockerfile: useradd --uid N) owns what the pods write.
    (uid,) = re.findall(r"useradd .*--uid (\d+)", (ROOT / "Dockerfile").read_text(encoding="utf-8"))
    for resource in (study_job, worker_job, dashboard):
        context = pod_spec(resource)["securityContext"]
        assert context["runAsUser"] == context["fsGroup"] == int(uid), resource["metadata"]["name"]


# ---------------------------------------------------------------- the pods' commands, run for real


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.postgres
def test_the_study_job_workers_and_dashboard_run_as_in_their_pods(resources, postgres_url, tmp_path):
    """The study Job creates the study, the wait loop lets the pods go, a worker completes the study's
    one trial and stores its model, and the dashboard answers its readiness probe: each with its
    manifest's command and $HPSEARCH_STORAGE, /app being tmp_path and the study a tiny paper.yaml."""
    from optuna.trial import TrialState

    from searchutil import load, wait_for, write_tiny_study

    app = str(tmp_path)
    write_tiny_study(tmp_path / "studies", name="paper", trials=1)
    env = {**os.environ, DEFAULT_ENV: postgres_url, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}

    def run(command: list[str], **kwargs) -> subprocess.CompletedProcess:
        if command[0] in ("hpsearch", "python"):
            command = [sys.executable, *(["-m", "hpsearch.cli"] if command[0] == "hpsearch" else []), *command[1:]]
        return subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600, **kwargs)

    def in_app(command: list[str]) -> list[str]:
        return [part.replace("/app", app) for part in command]

    worker_job = one(resources, "Job", "hpsearch-worker")
    wait = container(worker_job, "wait-for-study")["command"]
    (status,) = hpsearch_commands(wait)
    assert run(status).returncode == 2  # no study yet: the init container keeps waiting

    study = container(one(resources, "Job", "hpsearch-study"), "study")["command"]
    done = run(study)
    assert done.returncode == 0, done.stderr
    assert "study 'paper' in PostgreSQL study storage" in done.stdout and "0 of 1 complete" in done.stdout
    assert (tmp_path / "studies" / "data" / "dataset.json").is_file()

    done = run(wait)  # the init container's own shell loop, now done at once
    assert done.returncode == 0, done.stderr

    worker = in_app(container(worker_job, "worker")["command"])
    # The pod has its GPU; this machine has none, so the command as written refuses to train on the
    # CPU behind the user's back, and the test runs it with --cpu in place of --gpu 0.
    refused = run(worker)
    assert refused.returncode == 2 and "sees no GPU" in refused.stderr, refused.stderr
    at = worker.index("--gpu")
    done = run([*worker[:at], "--cpu", *worker[at + 2:]])
    assert done.returncode == 0, done.stdout + done.stderr
    trials = load(postgres_url, "paper").get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 1
    assert any((tmp_path / "studies" / "artifacts").iterdir())  # the model, on the artifacts volume

    deployment = one(resources, "Deployment", "hpsearch-dashboard")
    dashboard = in_app(container(deployment, "dashboard")["command"])
    port = free_port()
    dashboard[dashboard.index("--port") + 1] = str(port)
    probe = container(deployment, "dashboard")["readinessProbe"]["httpGet"]["path"]
    process = subprocess.Popen([sys.executable, "-m", "hpsearch.cli", *dashboard[1:]], cwd=tmp_path, env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        def ready():
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=5) as response:
                    return response.status == 200
            except OSError:
                assert process.poll() is None, process.stderr.read()
                return False

        wait_for(ready, timeout=120, interval=0.5)
    finally:
        process.terminate()
        process.wait(timeout=30)
