"""`hpsearch slurm`: an sbatch script running the study as a job array, one task per node.

Each array task gets one node with its GPUs (`--gres=gpu:G`; Slurm sets CUDA_VISIBLE_DEVICES) and
runs G x trials_per_gpu `hpsearch worker`s there, each pinned to a GPU by a lock file. The storage
URL comes from $HPSEARCH_STORAGE of the shell that runs sbatch (Slurm exports the environment), so
no password is written into the script or shown on a command line. `--signal=B:TERM@120` gives the
workers two minutes to stop cleanly before a time limit; `--requeue` puts a preempted task back in
the queue. A stopped trial is queued to resume from its last epoch by any worker of the study.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from hpsearch.cluster import checks
from hpsearch.cluster.launch import launcher_lines
from hpsearch.config import STORAGE_ENV, StudyConfig
from hpsearch.errors import ConfigError

STOP_WARNING_S = 120  # --signal=B:TERM@120: the workers' time to stop cleanly before the limit
PYTHON_ENV = "HPSEARCH_PYTHON"  # the interpreter the job runs `-m hpsearch` with (default: this one)
_NAME = re.compile(r"^[A-Za-z0-9_.:-]+$")


@dataclass(frozen=True)
class SlurmJob:
    """What `hpsearch slurm` was asked for."""

    nodes: int
    gpus_per_node: int = 0
    partition: str | None = None
    time: str | None = None
    python: str | None = None  # an interpreter with hpsearch installed, as the compute nodes see it


def hpsearch_command(python: str | None) -> list[str]:
    """How the job starts hpsearch: `PYTHON -m hpsearch`, PYTHON from the flag, $HPSEARCH_PYTHON or this process."""
    return [python or os.environ.get(PYTHON_ENV) or sys.executable, "-m", "hpsearch"]


def check_job(cfg: StudyConfig, job: SlurmJob) -> int:
    """Refuse a job that cannot work (one line, exit 2); the number of workers per node otherwise."""
    for flag, value in (("--partition", job.partition),):
        if value is not None and not _NAME.match(value):
            raise ConfigError(f"command line: {flag} {value!r} is not a Slurm name; use letters, digits, _ . : -")
    checks.check_shared_storage(cfg, job.nodes, "nodes")
    workers = checks.check_gpu_plan(cfg, job.gpus_per_node, "--gpus-per-node")
    epoch_s = checks.measured_epoch_s(cfg)  # also: an unreachable storage stops here
    if job.time is not None:
        checks.check_time_limit(cfg, checks.slurm_seconds(job.time), STOP_WARNING_S, epoch_s, job.time)
    return workers


def _directives(cfg: StudyConfig, job: SlurmJob, logs: Path, workdir: Path) -> list[str]:
    lines = [f"--job-name=hpsearch-{cfg.name}", f"--array=0-{job.nodes - 1}", "--nodes=1", "--ntasks=1"]
    if job.gpus_per_node:
        lines.append(f"--gres=gpu:{job.gpus_per_node}")
    if job.partition:
        lines.append(f"--partition={job.partition}")
    if job.time:
        lines.append(f"--time={job.time}")
    lines += [f"--chdir={workdir}", f"--output={logs}/slurm-%A_%a.out", "--open-mode=append",
              f"--signal=B:TERM@{STOP_WARNING_S}", "--requeue"]
    return [f"#SBATCH {line}" for line in lines]


def sbatch_script(cfg: StudyConfig, study_file: str, job: SlurmJob, workers: int, storage_from_env: bool,
                  workdir: Path | None = None) -> str:
    """The batch script's text. With `storage_from_env`, the job refuses to start without $HPSEARCH_STORAGE."""
    workdir = (workdir or Path.cwd()).resolve()
    logs = (workdir / cfg.out_dir / "logs").resolve()
    study = str(Path(study_file).resolve())
    lines = ["#!/bin/bash",
             f"# hpsearch study '{cfg.name}' on Slurm, {job.nodes} node(s), {workers} worker(s) per node; written by",
             f"# `hpsearch slurm`. Submit from a shell where {STORAGE_ENV} is set: Slurm exports it to the job.",
             *_directives(cfg, job, logs, workdir), "set -u"]
    if storage_from_env:
        lines.append(f': "${{{STORAGE_ENV}:?is not set: export it in the shell that runs sbatch}}"')
    task = "${SLURM_ARRAY_JOB_ID:-$SLURM_JOB_ID}_${SLURM_ARRAY_TASK_ID:-0}"
    lines += [f'TASK="{task}"',
              f'echo "hpsearch: task $TASK on $(hostname): {workers} worker(s)'
              f'${{CUDA_VISIBLE_DEVICES:+, CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES}}"']
    claim_dir = None
    if job.gpus_per_node:
        lines.append('CLAIMS="${TMPDIR:-/tmp}/hpsearch-gpus-$TASK"  # the GPU locks of this task\'s workers')
        lines.append('mkdir -p "$CLAIMS"')
        claim_dir = '"$CLAIMS"'
    lines += launcher_lines(hpsearch_command(job.python), study, workers, claim_dir,
                            f"{logs}/slurm-$TASK", slot_base="${SLURM_ARRAY_TASK_ID:-0}")
    return "\n".join(lines) + "\n"


def write_script(cfg: StudyConfig, study_file: str, job: SlurmJob, out: str | None, storage_from_env: bool) -> Path:
    """Check the job, write the script (default `<output_dir>/slurm.sbatch`) and create the logs folder."""
    workers = check_job(cfg, job)
    text = sbatch_script(cfg, study_file, job, workers, storage_from_env)
    path = Path(out) if out else Path(cfg.out_dir) / "slurm.sbatch"
    (Path(cfg.out_dir) / "logs").mkdir(parents=True, exist_ok=True)  # Slurm opens --output there before the job
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def submit(path: Path, storage_url: str | None, sbatch: Sequence[str] = ("sbatch", "--parsable")) -> str:
    """Run sbatch on the script (the storage URL in the environment, never on its command line); the job id."""
    env = dict(os.environ)
    if storage_url is not None:
        env[STORAGE_ENV] = storage_url
    try:
        done = subprocess.run([*sbatch, str(path)], env=env, capture_output=True, text=True, timeout=120)
    except FileNotFoundError:
        raise ConfigError(f"{path}: sbatch is not on PATH; run this on a Slurm login node, or submit the "
                          f"script there with sbatch {shlex.quote(str(path))}") from None
    if done.returncode != 0:
        reason = (done.stderr.strip().splitlines() or [f"exit code {done.returncode}"])[-1]
        raise ConfigError(f"{path}: sbatch refused the job ({reason})")
    return done.stdout.strip().split(";")[0]
