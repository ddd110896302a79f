"""A one-machine Slurm cluster of our own for tests: munged, slurmctld and slurmd as root, state in a temp folder.

Debian's `slurm-wlm` and `munge` packages provide the daemons. :class:`Cluster` writes a
``slurm.conf`` for this machine (its CPUs and memory, one partition), starts the three daemons as
child processes (so they are stopped by PID, never by name), and waits until the node accepts
jobs. Commands (sbatch, squeue, scontrol, scancel) find it through ``$SLURM_CONF``, which
:attr:`Cluster.env` sets. Nothing here imports pytest.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

DAEMONS = ("munged", "slurmctld", "slurmd")
CRED_EXPIRE_S = 10  # how long a requeued job waits before it may start again (Slurm's default is 120)


class SlurmUnavailable(RuntimeError):
    """Slurm's daemons are not installed here, or cannot start (not root, no ports)."""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _binary(name: str) -> str:
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/bin")
    if not found:
        raise SlurmUnavailable(f"{name} is not installed (apt-get install slurm-wlm munge)")
    return found


def _memory_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    return 1024


class Cluster:
    """munged + slurmctld + slurmd on this machine; use as a context manager."""

    def __init__(self, start_timeout: float = 120.0) -> None:
        if os.geteuid() != 0:
            raise SlurmUnavailable("the Slurm test daemons run as root (SlurmUser=root)")
        self.binaries = {name: _binary(name) for name in (*DAEMONS, "sbatch", "sinfo")}
        self.dir = Path(tempfile.mkdtemp(prefix="hpsearch-slurm-"))
        self.node = socket.gethostname().split(".")[0]
        self.conf = self.dir / "slurm.conf"
        self.munge_socket = self.dir / "munge.socket"
        self.start_timeout = start_timeout
        self.procs: dict[str, subprocess.Popen[Any]] = {}

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def _write_conf(self) -> None:
        (self.dir / "state").mkdir()
        (self.dir / "spool").mkdir()
        cpus = os.cpu_count() or 1
        lines = [
            "ClusterName=hpsearchtest", f"SlurmctldHost={self.node}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/munge", "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket},cred_expire={CRED_EXPIRE_S}",
            f"StateSaveLocation={self.dir / 'state'}", f"SlurmdSpoolDir={self.dir / 'spool'}",
            f"SlurmctldPidFile={self.dir / 'slurmctld.pid'}", f"SlurmdPidFile={self.dir / 'slurmd.pid'}",
            f"SlurmctldLogFile={self.dir / 'slurmctld.log'}", f"SlurmdLogFile={self.dir / 'slurmd.log'}",
            "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU", "JobAcctGatherType=jobacct_gather/none", "MpiDefault=none",
            "SwitchType=switch/none", "ReturnToService=2", "JobRequeue=1", "KillWait=30", "MinJobAge=300",
            "SchedulerType=sched/builtin", "SlurmctldTimeout=30", "SlurmdTimeout=60", "InactiveLimit=0",
            f"NodeName={self.node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={_memory_mb()} State=UNKNOWN",
            f"PartitionName=test Nodes={self.node} Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def _start(self, name: str, argv: list[str]) -> None:
        with open(self.dir / f"{name}.out", "ab") as log:  # the child keeps its own copy of the descriptor
            self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                                start_new_session=True)

    def start(self) -> Cluster:
        self._write_conf()
        key = self.dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o600)
        self._start("munged", [self.binaries["munged"], "-F", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={key}", f"--pid-file={self.dir / 'munged.pid'}",
                               f"--log-file={self.dir / 'munged.log'}", f"--seed-file={self.dir / 'munge.seed'}"])
        self._wait(lambda: self.munge_socket.exists(), "munged")
        self._start("slurmctld", [self.binaries["slurmctld"], "-D", "-i", "-f", str(self.conf)])
        self._start("slurmd", [self.binaries["slurmd"], "-D", "-N", self.node, "-f", str(self.conf)])
        self._wait(self._node_idle, "the node to accept jobs")
        return self

    def _node_idle(self) -> bool:
        done = subprocess.run([self.binaries["sinfo"], "-h", "-N", "-o", "%t"], env=self.env, capture_output=True,
                              text=True, timeout=30)
        return done.returncode == 0 and done.stdout.strip() in ("idle", "mix", "alloc")

    def _wait(self, ready: Any, what: str) -> None:
        deadline = time.monotonic() + self.start_timeout
        while not ready():
            for name, proc in self.procs.items():
                if proc.poll() is not None:
                    raise SlurmUnavailable(f"{name} exited with code {proc.returncode} while waiting for {what}: "
                                           f"{self.log_tail(name)}")
            if time.monotonic() > deadline:
                raise SlurmUnavailable(f"timed out after {self.start_timeout:.0f} s waiting for {what}")
            time.sleep(0.2)

    def log_tail(self, name: str, lines: int = 5) -> str:
        text = ""
        for path in (self.dir / f"{name}.log", self.dir / f"{name}.out"):
            if path.exists():
                text += path.read_text(errors="replace")
        return " | ".join(text.strip().splitlines()[-lines:])

    def stop(self) -> None:
        """Stop the daemons by PID (slurmd first: it ends the jobs it runs), then remove the folder."""
        for name in reversed(DAEMONS):
            proc = self.procs.pop(name, None)
            if proc is None or proc.poll() is not None:
                continue
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Cluster:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
