"""`hpsearch k8s`: a Kubernetes Indexed Job of `hpsearch worker` pods, with the study file in a ConfigMap.

The pods run the image docker/ builds. The storage URL comes from a Secret (key `url`) as
$HPSEARCH_STORAGE, so it is in no manifest and on no command line. A deleted or preempted pod gets
SIGTERM and `terminationGracePeriodSeconds` to stop cleanly (its trial is queued to resume); a pod
that crashes is replaced (`backoffLimitPerIndex`) and any worker resumes its trial from the last
epoch saved under /work/runs (a ReadWriteMany volume with `--runs-volume`, else the pod's own disk).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from hpsearch.cluster import checks
from hpsearch.cluster.launch import launcher_lines
from hpsearch.config import STORAGE_ENV, StudyConfig
from hpsearch.errors import ConfigError

DEFAULT_IMAGE = "hpsearch:latest"  # docker build -f docker/Dockerfile -t hpsearch .
SECRET_KEY = "url"
GRACE_S = 60  # a worker stops within 10 s of SIGTERM; the rest is margin for a checkpoint being written
EXIT_BAD_INPUT = 2  # hpsearch's exit code for bad input: a replacement pod would fail the same way
STUDIES = "/studies"
RUNS = "/work/runs"
_DNS = re.compile(r"[^a-z0-9-]+")


class _Dumper(yaml.SafeDumper):
    """Plain YAML for kubectl: no anchors for repeated objects, multi-line strings (the study, a script) as blocks."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def _str(dumper: yaml.SafeDumper, text: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", text, style="|" if "\n" in text else None)


_Dumper.add_representer(str, _str)


def resource_name(study: str) -> str:
    """A DNS-1123 name for the study's objects: `hpsearch-<study>`, lower case, at most 52 characters."""
    return ("hpsearch-" + _DNS.sub("-", study.lower())).strip("-")[:52].rstrip("-")


def check_job(cfg: StudyConfig, workers: int, gpus_per_worker: int, check_storage: bool) -> int:
    """Refuse a job that cannot work (one line, exit 2); the number of `hpsearch worker`s per pod otherwise."""
    checks.check_shared_storage(cfg, workers, "pods")
    per_pod = checks.check_gpu_plan(cfg, gpus_per_worker, "--gpus-per-worker")
    if check_storage:
        checks.measured_epoch_s(cfg)  # opens the study read-only: an unreachable storage stops here
    return per_pod


def _container(cfg: StudyConfig, study_path: str, image: str, secret: str, gpus: int, per_pod: int) -> dict[str, Any]:
    if per_pod == 1:
        command: dict[str, Any] = {"args": ["worker", study_path, "--slot", "$(JOB_COMPLETION_INDEX)"]}
    else:  # several workers share the pod's GPUs, each pinned to one by a lock file
        script = launcher_lines(["hpsearch"], study_path, per_pod, "/tmp/hpsearch-gpus", None,
                                slot_base="${JOB_COMPLETION_INDEX:-0}")
        command = {"command": ["bash", "-c", "\n".join(script)]}
    container: dict[str, Any] = {
        "name": "worker", "image": image, **command,
        "env": [{"name": STORAGE_ENV, "valueFrom": {"secretKeyRef": {"name": secret, "key": SECRET_KEY}}}],
        "volumeMounts": [{"name": "study", "mountPath": STUDIES, "readOnly": True},
                         {"name": "runs", "mountPath": RUNS}, {"name": "data", "mountPath": "/work/data"},
                         {"name": "dshm", "mountPath": "/dev/shm"}],
    }
    if gpus:
        container["resources"] = {"limits": {"nvidia.com/gpu": str(gpus)}}  # a quantity: a string
    return container


def job_manifests(cfg: StudyConfig, study_file: str, workers: int, gpus_per_worker: int, per_pod: int,
                  image: str = DEFAULT_IMAGE, secret: str | None = None, runs_volume: str | None = None) -> list[dict]:
    """The ConfigMap holding the study file and the Indexed Job, as plain data."""
    name = resource_name(cfg.name)
    secret = secret or f"{name}-storage"
    labels = {"app.kubernetes.io/name": "hpsearch", "hpsearch/study": name}
    filename = Path(study_file).name
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": f"{name}-study", "labels": labels},
                  "data": {filename: Path(study_file).read_text()}}
    runs: dict[str, Any] = {"persistentVolumeClaim": {"claimName": runs_volume}} if runs_volume else {"emptyDir": {}}
    pod = {
        "metadata": {"labels": labels},
        "spec": {
            "restartPolicy": "Never",  # backoffLimitPerIndex replaces a failed pod instead
            "terminationGracePeriodSeconds": GRACE_S,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001, "fsGroup": 10001},
            "containers": [_container(cfg, f"{STUDIES}/{filename}", image, secret, gpus_per_worker, per_pod)],
            "volumes": [{"name": "study", "configMap": {"name": f"{name}-study"}}, {"name": "runs", **runs},
                        {"name": "data", "emptyDir": {}},
                        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": "2Gi"}}],
        },
    }
    job = {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name, "labels": labels},
        "spec": {
            "completionMode": "Indexed", "completions": workers, "parallelism": workers,
            "backoffLimitPerIndex": cfg.workers.max_restarts, "maxFailedIndexes": workers,
            # Bad input fails the same way in every pod (no replacement); a preempted pod costs no retry.
            "podFailurePolicy": {"rules": [
                {"action": "FailIndex", "onExitCodes": {"containerName": "worker", "operator": "In",
                                                         "values": [EXIT_BAD_INPUT]}},
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},  # preempted, evicted
            ]},
            "template": pod,
        },
    }
    return [config_map, job]


def write_manifests(cfg: StudyConfig, study_file: str, out: str | None, workers: int, gpus_per_worker: int,
                    image: str, runs_volume: str | None, check_storage: bool) -> tuple[Path, str]:
    """Check, then write the manifests (default `<output_dir>/k8s.yaml`); the path and the Secret's name."""
    if runs_volume is not None and not re.fullmatch(r"[a-z0-9]([-a-z0-9.]*[a-z0-9])?", runs_volume):
        raise ConfigError(f"command line: --runs-volume {runs_volume!r} is not a PersistentVolumeClaim name "
                          f"(lower case letters, digits, - and .)")
    per_pod = check_job(cfg, workers, gpus_per_worker, check_storage)
    docs = job_manifests(cfg, study_file, workers, gpus_per_worker, per_pod, image=image, runs_volume=runs_volume)
    path = Path(out) if out else Path(cfg.out_dir) / "k8s.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# hpsearch study '{cfg.name}': {workers} worker pod(s); written by `hpsearch k8s`.\n"
                    + yaml.dump_all(docs, Dumper=_Dumper, sort_keys=False))
    return path, f"{resource_name(cfg.name)}-storage"
