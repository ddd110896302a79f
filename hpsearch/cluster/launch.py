"""The shell that starts a node's (or pod's) `hpsearch worker`s, forwards a stop signal to them and waits.

A batch shell that gets SIGTERM (Slurm's warning before a time limit or preemption, Kubernetes
deleting a pod) hands it to every worker: each marks its trial failed, queues it to resume and
exits 130, well within the grace period.
"""

from __future__ import annotations

import shlex
from typing import Sequence


def launcher_lines(hpsearch: Sequence[str], study_file: str, workers: int, claim_dir: str | None,
                   log_prefix: str | None, slot_base: str = "0") -> list[str]:
    """Bash lines that run `workers` workers; with `claim_dir`, each pins itself to a free GPU there.

    `slot_base` is a shell arithmetic expression for the first slot number (an array task index,
    say); `log_prefix` (a shell word) makes each worker append to `<prefix>-w<slot>.log`.
    """
    command = " ".join(shlex.quote(part) for part in hpsearch)
    claim = f" --gpu-claim {claim_dir}" if claim_dir else ""
    log = f' >>"{log_prefix}-w$slot.log" 2>&1' if log_prefix else ""
    return [
        f"HPSEARCH=({command})",
        f"STUDY={shlex.quote(study_file)}",
        "pids=()",
        "stop() { kill -TERM \"${pids[@]}\" 2>/dev/null; }  # each worker stops at its next safe point",
        "trap stop TERM INT",
        f"for i in $(seq 0 {workers - 1}); do",
        f"  slot=$(( ({slot_base}) * {workers} + i ))",
        f'  "${{HPSEARCH[@]}}" worker "$STUDY" --slot "$slot"{claim}{log} &',
        "  pids+=($!)",
        "done",
        "rc=0",
        "for pid in \"${pids[@]}\"; do",
        "  while :; do  # a trapped signal interrupts wait: wait again until the worker has exited",
        "    wait \"$pid\"; code=$?",
        "    if [ \"$code\" -le 128 ] || ! kill -0 \"$pid\" 2>/dev/null; then break; fi",
        "  done",
        "  if [ \"$code\" -ne 0 ] && [ \"$rc\" -eq 0 ]; then rc=$code; fi",
        "done",
        "exit \"$rc\"",
    ]
