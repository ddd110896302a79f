"""Cluster launchers: a Slurm batch script and a Kubernetes Indexed Job that start `hpsearch worker`s.

Both only write text (and, on request, hand it to `sbatch`); the workers coordinate through the
study's shared storage, Optuna's own distributed mode. What both refuse before anything is
submitted (one line, exit 2) is in :mod:`hpsearch.cluster.checks`.
"""
