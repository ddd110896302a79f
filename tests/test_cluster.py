"""`hpsearch slurm` and `hpsearch k8s`: the script and manifests they write, and what they refuse (exit 2).

The real-Slurm run is tests/test_slurm.py; the Kubernetes manifests are parsed with the official
`kubernetes` client's models (no cluster needed).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any, Callable

import optuna
import pytest
import yaml

from hpsearch.cli import main
from hpsearch.cluster import checks, k8s, slurm

PG_DOWN = "postgresql+psycopg://user:s3cret@127.0.0.1:1/hpsearch"  # nothing listens on port 1


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.fixture
def storage_env(monkeypatch: pytest.MonkeyPatch, pg_url: str) -> str:
    monkeypatch.setenv("HPSEARCH_STORAGE", pg_url)
    return pg_url


# --------------------------------------------------------------------------- slurm: the script


@pytest.mark.postgres
def test_slurm_script_is_a_job_array_of_workers(write_study: Callable[..., Path], storage_env: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(device="auto", workers={"trials_per_gpu": 2})
    assert main(["slurm", str(path), "--nodes", "3", "--gpus-per-node", "4", "--partition", "gpu",
                 "--time", "2:00:00", "--python", "/opt/venv/bin/python"]) == 0
    script = Path("runs/tiny/slurm.sbatch").read_text()
    logs = Path("runs/tiny/logs").resolve()
    for line in ("#SBATCH --array=0-2", "#SBATCH --nodes=1", "#SBATCH --gres=gpu:4", "#SBATCH --partition=gpu",
                 "#SBATCH --time=2:00:00", "#SBATCH --signal=B:TERM@120", "#SBATCH --requeue",
                 f"#SBATCH --output={logs}/slurm-%A_%a.out", f"#SBATCH --chdir={Path.cwd()}",
                 "HPSEARCH=(/opt/venv/bin/python -m hpsearch)", f"STUDY={path.resolve()}", "for i in $(seq 0 7); do",
                 ': "${HPSEARCH_STORAGE:?is not set: export it in the shell that runs sbatch}"'):
        assert line in script.splitlines(), line
    assert '--gpu-claim "$CLAIMS"' in script  # 8 workers share the task's 4 GPUs, 2 each, pinned by lock files
    assert storage_env not in script and "postgresql" not in script  # the URL stays in the environment
    assert logs.is_dir()  # Slurm opens --output there before the script runs
    assert "sbatch runs/tiny/slurm.sbatch" in capsys.readouterr().out
    assert subprocess.run(["bash", "-n", "runs/tiny/slurm.sbatch"]).returncode == 0


def test_slurm_cpu_job_on_one_node_may_use_sqlite(write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    path = write_study()
    assert main(["slurm", str(path), "--nodes", "1", "--out", "job.sbatch"]) == 0
    script = Path("job.sbatch").read_text()
    assert "--gres" not in script and "--gpu-claim" not in script and "for i in $(seq 0 0); do" in script
    assert "HPSEARCH_STORAGE:?" not in script  # the file's own storage: nothing to export
    assert os.access("job.sbatch", os.X_OK)


def test_slurm_script_forwards_term_and_waits_for_every_worker(tmp_path: Path) -> None:
    """The launcher itself, with a stand-in worker: SIGTERM reaches each worker, the shell exits with their code."""
    fake = tmp_path / "fake_worker.sh"
    fake.write_text('#!/bin/bash\ntrap \'echo stopped >> "$0.$4"; exit 130\' TERM\n'
                    'echo started >> "$0.$4"\nwhile :; do sleep 0.1; done\n')
    fake.chmod(0o755)
    from hpsearch.cluster.launch import launcher_lines

    script = tmp_path / "launch.sh"
    script.write_text("\n".join(["#!/bin/bash", *launcher_lines([str(fake)], "study.yaml", 2, None, None)]) + "\n")
    proc = subprocess.Popen(["bash", str(script)])
    started = [Path(f"{fake}.{slot}") for slot in (0, 1)]
    _wait_for(lambda: all(p.exists() for p in started))
    proc.terminate()
    assert proc.wait(timeout=30) == 130
    assert [p.read_text().split() for p in started] == [["started", "stopped"], ["started", "stopped"]]


def _wait_for(condition: Callable[[], bool], timeout: float = 60) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_submit_hands_the_storage_to_sbatch_in_the_environment(tmp_path: Path) -> None:
    fake = tmp_path / "sbatch"
    fake.write_text('#!/bin/bash\necho "$HPSEARCH_STORAGE" > "$(dirname "$0")/seen"\necho "$@" >> '
                    '"$(dirname "$0")/seen"\necho "4242;cluster"\n')
    fake.chmod(0o755)
    script = tmp_path / "job.sbatch"
    script.write_text("#!/bin/bash\n")
    assert slurm.submit(script, "postgresql+psycopg://u:pw@h/db", sbatch=[str(fake), "--parsable"]) == "4242"
    env_line, argv = (tmp_path / "seen").read_text().splitlines()
    assert env_line == "postgresql+psycopg://u:pw@h/db" and "pw" not in argv


# --------------------------------------------------------------------------- slurm: refusals


def test_slurm_refuses_sqlite_for_several_nodes(write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    path = write_study()
    assert main(["slurm", str(path), "--nodes", "2"]) == 2
    line = _error(capsys)
    assert f"{path}: storage:" in line and "SQLite file, which 2 nodes cannot share" in line
    assert "export HPSEARCH_STORAGE='postgresql+psycopg://" in line
    assert not Path("runs").exists()  # nothing written


@pytest.mark.parametrize(("overrides", "flags", "expected"), [
    ({"device": "cpu"}, ["--gpus-per-node", "2"], "device: cpu would leave the 2 GPUs of --gpus-per-node 2 idle"),
    ({"device": "cuda"}, [], "device: cuda needs GPUs, and --gpus-per-node is 0"),
    ({"device": "auto", "workers": {"gpus": [0, 1]}}, ["--gpus-per-node", "4"],
     "workers.gpus: the study uses 2 GPU(s) [0, 1], fewer than --gpus-per-node 4; pass --gpus-per-node 2"),
    ({"device": "auto", "workers": {"n": 2}}, ["--gpus-per-node", "8"],
     "workers.n: 2 worker(s) cannot use the 8 GPUs of --gpus-per-node 8"),
    ({}, ["--gpus-per-node", "-1"], "--gpus-per-node must be 0 or more (got -1)"),
    ({}, ["--time", "soon"], "--time 'soon' is not a Slurm time"),
    ({}, ["--time", "1"], "--time 1 is not longer than the 120 s stop warning"),
    ({}, ["--partition", "gpu;rm -rf"], "--partition 'gpu;rm -rf' is not a Slurm name"),
    ({}, ["--storage", "sqlite:///x.db"], "--storage: the job reads the storage from $HPSEARCH_STORAGE"),
])
def test_slurm_refuses_options_that_cannot_work(write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str], overrides: dict[str, Any],
                                               flags: list[str], expected: str) -> None:
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    path = write_study(**overrides)
    assert main(["slurm", str(path), "--nodes", "1", *flags]) == 2
    assert expected in _error(capsys)
    assert not Path("runs").exists()


def test_slurm_refuses_an_unreachable_storage(write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("HPSEARCH_STORAGE", PG_DOWN)
    path = write_study()
    assert main(["slurm", str(path), "--nodes", "2", "--submit"]) == 2
    line = _error(capsys)
    assert "127.0.0.1:1" in line and "s3cret" not in line and "Connection refused" in line
    assert not Path("runs").exists()


def test_slurm_refuses_a_time_limit_shorter_than_a_measured_epoch(write_study: Callable[..., Path],
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    path = write_study()
    Path("runs/tiny").mkdir(parents=True)
    study = optuna.create_study(study_name="tiny", storage="sqlite:///runs/tiny/study.db", direction="maximize")
    study.add_trial(optuna.trial.create_trial(value=0.5, user_attrs={"history": [
        {"epoch": 1, "epoch_time": 900.0}, {"epoch": 2, "epoch_time": 1000.0}]}))
    assert main(["slurm", str(path), "--nodes", "1", "--time", "15:00"]) == 2
    assert "--time 15:00 leaves 780 s before the stop warning, shorter than one epoch of study 'tiny' (950 s" \
        in _error(capsys)
    assert main(["slurm", str(path), "--nodes", "1", "--time", "1:00:00"]) == 0


def test_slurm_time_formats() -> None:
    assert [checks.slurm_seconds(t) for t in ("30", "5:30", "1:02:03", "2-0", "1-2:30", "1-00:00:10")] == \
        [1800, 330, 3723, 172800, 95400, 86410]


# --------------------------------------------------------------------------- kubernetes


def _parsed(path: Path) -> tuple[Any, Any]:
    """The ConfigMap and the Job as the kubernetes client's models, and each re-serialised equal to the file."""
    kubernetes = pytest.importorskip("kubernetes")
    api = kubernetes.client.ApiClient()
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    models = []
    for doc, kind in zip(docs, ("V1ConfigMap", "V1Job")):
        assert doc["kind"] == kind[2:]
        model = api._ApiClient__deserialize(doc, kind)  # the client's own reader: types and required fields checked
        assert api.sanitize_for_serialization(model) == doc  # a misspelt or unknown field would be dropped
        models.append(model)
    return models[0], models[1]


@pytest.mark.postgres
def test_k8s_indexed_job_parses_with_the_kubernetes_models(write_study: Callable[..., Path], storage_env: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = write_study(device="auto")
    assert main(["k8s", str(path), "--workers", "6", "--gpus-per-worker", "1", "--image", "reg/hpsearch:1",
                 "--runs-volume", "hpsearch-runs"]) == 0
    out = capsys.readouterr().out
    assert 'kubectl create secret generic hpsearch-tiny-storage --from-literal=url="$HPSEARCH_STORAGE"' in out
    manifest = Path("runs/tiny/k8s.yaml")
    assert storage_env not in manifest.read_text()
    config_map, job = _parsed(manifest)
    assert yaml.safe_load(config_map.data["study.yaml"]) == yaml.safe_load(path.read_text())
    spec = job.spec
    assert (spec.completion_mode, spec.completions, spec.parallelism) == ("Indexed", 6, 6)
    assert spec.backoff_limit_per_index == 5
    assert spec.pod_failure_policy.rules[0].on_exit_codes.values == [2]
    pod = spec.template.spec
    assert pod.restart_policy == "Never" and pod.termination_grace_period_seconds == 60
    (container,) = pod.containers
    assert container.image == "reg/hpsearch:1"
    assert container.args == ["worker", "/studies/study.yaml", "--slot", "$(JOB_COMPLETION_INDEX)"]
    assert container.resources.limits == {"nvidia.com/gpu": "1"}
    (env,) = container.env
    assert env.name == "HPSEARCH_STORAGE" and env.value is None
    assert (env.value_from.secret_key_ref.name, env.value_from.secret_key_ref.key) == ("hpsearch-tiny-storage", "url")
    volumes = {v.name: v for v in pod.volumes}
    assert volumes["study"].config_map.name == "hpsearch-tiny-study"
    assert volumes["runs"].persistent_volume_claim.claim_name == "hpsearch-runs"
    assert {m.mount_path for m in container.volume_mounts} >= {"/studies", "/work/runs"}


@pytest.mark.postgres
def test_k8s_pod_with_several_gpus_runs_a_worker_per_gpu(write_study: Callable[..., Path], storage_env: str) -> None:
    path = write_study(device="auto", workers={"trials_per_gpu": 2})
    assert main(["k8s", str(path), "--workers", "2", "--gpus-per-worker", "4", "--out", "job.yaml"]) == 0
    _, job = _parsed(Path("job.yaml"))
    (container,) = job.spec.template.spec.containers
    assert container.command[:2] == ["bash", "-c"] and "for i in $(seq 0 7); do" in container.command[2]
    assert "--gpu-claim /tmp/hpsearch-gpus" in container.command[2]
    assert container.resources.limits == {"nvidia.com/gpu": "4"}
    assert subprocess.run(["bash", "-n", "-c", container.command[2]]).returncode == 0


@pytest.mark.parametrize(("flags", "env", "expected"), [
    (["--workers", "2", "--skip-storage-check"], None, "SQLite file, which 2 pods cannot share"),
    (["--workers", "2", "--gpus-per-worker", "0"], PG_DOWN, "127.0.0.1:1"),
    (["--workers", "2"], PG_DOWN, "device: cpu would leave the 1 GPUs of --gpus-per-worker 1 idle"),
    (["--workers", "1", "--gpus-per-worker", "-2"], None, "--gpus-per-worker must be 0 or more (got -2)"),
    (["--workers", "1", "--gpus-per-worker", "0", "--runs-volume", "Bad_Name"], None,
     "--runs-volume 'Bad_Name' is not a PersistentVolumeClaim"),
])
def test_k8s_refuses_options_that_cannot_work(write_study: Callable[..., Path], monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], flags: list[str], env: str | None,
                                              expected: str) -> None:
    if env:
        monkeypatch.setenv("HPSEARCH_STORAGE", env)
    else:
        monkeypatch.delenv("HPSEARCH_STORAGE", raising=False)
    path = write_study(device="cpu")
    assert main(["k8s", str(path), *flags]) == 2
    line = _error(capsys)
    assert expected in line and "s3cret" not in line
    assert not Path("runs").exists()


def test_k8s_names_are_dns_labels() -> None:
    assert k8s.resource_name("CIFAR10_seednet.v2") == "hpsearch-cifar10-seednet-v2"
    assert len(k8s.resource_name("x" * 100)) <= 52
