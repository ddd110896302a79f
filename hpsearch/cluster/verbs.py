"""The cluster verbs: `hpsearch slurm` (an sbatch job array) and `hpsearch k8s` (a Kubernetes Indexed Job)."""

from __future__ import annotations

import argparse
import os
import shlex
from typing import Any

from hpsearch.cliargs import add_common, config_from_args, worker_count
from hpsearch.config import STORAGE_ENV
from hpsearch.errors import ConfigError


def add_cluster_verbs(verbs: Any) -> None:
    slurm = verbs.add_parser("slurm", help="write (and --submit) an sbatch job array of workers, one task per node")
    add_common(slurm)
    slurm.add_argument("--nodes", type=worker_count, required=True, help="array tasks, one node each")
    slurm.add_argument("--gpus-per-node", type=int, default=0, help="GPUs per node (--gres=gpu:G; default 0)")
    slurm.add_argument("--partition", help="Slurm partition")
    slurm.add_argument("--time", help="time limit per task (minutes, HH:MM:SS or D-HH:MM:SS)")
    slurm.add_argument("--python", help="interpreter with hpsearch on the nodes (default $HPSEARCH_PYTHON, "
                                        "else this one)")
    slurm.add_argument("--out", help="script file (default runs/<name>/slurm.sbatch)")
    slurm.add_argument("--submit", action="store_true", help="run sbatch and print the job id")
    k8s = verbs.add_parser("k8s", help="write a Kubernetes Indexed Job of worker pods")
    add_common(k8s)
    k8s.add_argument("--workers", type=worker_count, required=True, help="worker pods (the Job's parallelism)")
    k8s.add_argument("--gpus-per-worker", type=int, default=1, help="nvidia.com/gpu per pod (default 1; 0: CPU)")
    k8s.add_argument("--image", default="hpsearch:latest", help="the image docker/Dockerfile builds")
    k8s.add_argument("--runs-volume", metavar="PVC", help="ReadWriteMany claim for /work/runs (checkpoints)")
    k8s.add_argument("--skip-storage-check", action="store_true",
                     help="do not open the storage first (a database reachable only inside the cluster)")
    k8s.add_argument("--out", help="manifest file (default runs/<name>/k8s.yaml)")


def _gpu_count(value: int, flag: str) -> None:
    if value < 0:
        raise ConfigError(f"command line: {flag} must be 0 or more (got {value})")


def cmd_slurm(args: argparse.Namespace) -> int:
    from hpsearch.cluster import slurm

    _gpu_count(args.gpus_per_node, "--gpus-per-node")
    cfg = config_from_args(args.study_file, args)
    from_env = bool(os.environ.get(STORAGE_ENV)) or bool(args.storage)
    if args.storage and not args.submit:
        raise ConfigError(f"command line: --storage: the job reads the storage from ${STORAGE_ENV} of the shell "
                          f"that runs sbatch; export {STORAGE_ENV} instead (or add --submit)")
    job = slurm.SlurmJob(nodes=args.nodes, gpus_per_node=args.gpus_per_node, partition=args.partition,
                         time=args.time, python=args.python)
    path = slurm.write_script(cfg, args.study_file, job, args.out, storage_from_env=from_env)
    print(f"sbatch script written to {path}")
    if args.submit:
        job_id = slurm.submit(path, args.storage)
        print(f"submitted job {job_id}: watch with `squeue -j {job_id}` and `hpsearch status {args.study_file}`; "
              f"logs in {cfg.out_dir}/logs/slurm-{job_id}_*")
    else:
        print(f"submit it with: sbatch {shlex.quote(str(path))}  (from a shell where {STORAGE_ENV} is set)")
    return 0


def cmd_k8s(args: argparse.Namespace) -> int:
    from hpsearch.cluster import k8s

    _gpu_count(args.gpus_per_worker, "--gpus-per-worker")
    cfg = config_from_args(args.study_file, args)
    path, secret = k8s.write_manifests(cfg, args.study_file, args.out, args.workers, args.gpus_per_worker,
                                       args.image, args.runs_volume, check_storage=not args.skip_storage_check)
    print(f"Kubernetes manifests written to {path}; create the storage Secret, then apply:")
    print(f'  kubectl create secret generic {secret} --from-literal=url="${STORAGE_ENV}"')
    print(f"  kubectl apply -f {shlex.quote(str(path))}")
    return 0
