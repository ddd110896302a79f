"""The `hpsearch` command line: verbs, logging, and the mapping of errors to exit codes.

Exit codes: 0 success; 1 trials kept failing; 2 bad input (one line on stderr); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import functools
import json
import logging
import os
import sys
import traceback
from collections.abc import Iterator
from typing import Any, Sequence

import yaml

from hpsearch import __version__, signals
from hpsearch.config import STORAGE_ENV, StudyConfig, load_config, with_overrides
from hpsearch.errors import ConfigError, HpsearchError

log = logging.getLogger("hpsearch")
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130
MAX_WORKERS = 1024  # the file's workers.n has the same bound


class _Parser(argparse.ArgumentParser):
    """argparse that reports bad flags as one line and exit code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise ConfigError(f"command line: {message}; see `{self.prog} --help`")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {text})")
    return value


def _worker_count(text: str) -> int:
    value = _positive_int(text)
    if value > MAX_WORKERS:
        raise argparse.ArgumentTypeError(f"must be at most {MAX_WORKERS} (got {text})")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive (got {text})")
    return value


def _add_common(parser: argparse.ArgumentParser, many: bool = False) -> None:
    if many:
        parser.add_argument("study_files", nargs="+", metavar="STUDY.yaml")
    else:
        parser.add_argument("study_file", metavar="STUDY.yaml")
    parser.add_argument("--storage", help=f"storage URL overriding the file's storage: (default: ${STORAGE_ENV} "
                                          f"when set; a password is safer there than on the command line)")
    parser.add_argument("--debug", action="store_true", help="full tracebacks and debug logging")


def _add_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--n-trials", type=_positive_int, help="study-wide total of finished trials")
    parser.add_argument("--timeout", type=_positive_float, help="stop starting trials after S seconds")
    parser.add_argument("--epochs", type=_positive_int, help="override train.epochs")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], help="override device:")
    parser.add_argument("--workers", type=_worker_count, help="worker processes on this machine")
    parser.add_argument("--gpus", help="GPUs to use: all, none or a list like 0,1")


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line interface (the contract in DESIGN.md)."""
    parser = _Parser(prog="hpsearch", description="Hyperparameter search for PyTorch from one YAML study file.")
    parser.add_argument("--version", action="version", version=f"hpsearch {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    run = verbs.add_parser("run", help="run (or continue) a study")
    _add_common(run)
    _add_run_flags(run)
    worker = verbs.add_parser("worker", help="join a running study as one more worker")
    _add_common(worker)
    _add_run_flags(worker)
    worker.add_argument("--slot", type=int, default=0, help="slot number recorded with trials (set by run)")
    worker.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)  # set by run: stop when it dies
    worker.add_argument("--status-file", help=argparse.SUPPRESS)  # set by run: where the supervisor reads the phase
    worker.add_argument("--probe-memory", action="store_true", help=argparse.SUPPRESS)  # set by run: size the GPU
    worker.add_argument("--gpu-claim", metavar="DIR", help="pin to a free GPU by holding a lock file in DIR")
    worker.add_argument("--claim-wait", type=float, default=0.0, help="seconds to wait for a free GPU")
    _add_common(verbs.add_parser("validate", help="check a study file and print the resolved config"))
    status = verbs.add_parser("status", help="trials by state and the best so far")
    _add_common(status)
    status.add_argument("--failed", action="store_true", help="also print the error of each failed trial")
    best = verbs.add_parser("best", help="the best trial: number, value, params, checkpoint")
    _add_common(best)
    best.add_argument("--json", action="store_true", help="print JSON")
    best.add_argument("--export", metavar="DIR", help="write params.yaml, weights.pt and load_model.py to DIR")
    report = verbs.add_parser("report", help="write an HTML report comparing studies")
    _add_common(report, many=True)
    report.add_argument("--out", default="report.html", help="output HTML file (default report.html)")
    report.add_argument("--png", metavar="DIR", help="also write every figure as PNG into DIR")
    dashboard = verbs.add_parser("dashboard", help="open optuna-dashboard on the study's storage")
    _add_common(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=_positive_int, default=8080)
    export = verbs.add_parser("export", help="write all trials as CSV or JSON")
    _add_common(export)
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("--out", help="output file (default runs/<name>/trials.<format>)")
    return parser


def _config(path: str, args: argparse.Namespace) -> StudyConfig:
    cfg = load_config(path)
    overrides: dict[str, Any] = {"storage": getattr(args, "storage", None) or os.environ.get(STORAGE_ENV) or None}
    for key in ("n_trials", "timeout", "epochs", "device"):
        overrides[key] = getattr(args, key, None)
    return with_overrides(cfg, **overrides)


def _setup_logging(debug: bool) -> None:
    import optuna

    level = logging.DEBUG if debug else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


# --------------------------------------------------------------------------- verbs

def cmd_validate(args: argparse.Namespace) -> int:
    from hpsearch.study import redact_url

    cfg = _config(args.study_file, args)
    resolved = cfg.resolved()
    resolved["storage"] = redact_url(resolved["storage"])
    print(f"# {cfg.source}: valid")
    # libyaml's emitter where PyYAML has it: the same text, 4x faster for a long enqueue: list.
    print(yaml.dump(resolved, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False), end="")
    return 0


def _slots(cfg: StudyConfig, args: argparse.Namespace) -> list[Any]:
    from hpsearch.errors import DeviceError
    from hpsearch.slots import assign_slots, parse_gpus, visible_gpus

    requested = parse_gpus(args.gpus) if args.gpus is not None else cfg.workers.gpus
    visible = [] if cfg.device == "cpu" else visible_gpus()
    if cfg.device == "cuda" and not visible:
        raise DeviceError("--device cuda: no CUDA GPU is visible; use --device cpu or auto")
    per_gpu = cfg.workers.trials_per_gpu if isinstance(cfg.workers.trials_per_gpu, int) else 1  # auto grows later
    return assign_slots(visible, requested, per_gpu, args.workers or cfg.workers.n)


def _auto_scaled(cfg: StudyConfig, args: argparse.Namespace, slots: list[Any]) -> bool:
    """Whether the workers per GPU are sized from a memory probe (trials_per_gpu: auto, GPUs, no fixed count)."""
    fixed = args.workers is not None or cfg.workers.n is not None
    return cfg.workers.trials_per_gpu == "auto" and not fixed and any(slot.gpu is not None for slot in slots)


def _open_and_enqueue(cfg: StudyConfig, sampler_seed: int | None = None) -> Any:
    from hpsearch.study import open_study

    study = open_study(cfg, sampler_seed=sampler_seed)
    for point in cfg.enqueue:
        study.enqueue_trial(point, skip_if_exists=True)
    return study


def _work(cfg: StudyConfig, slot: Any, on_trial: Any, sampler_seed: int | None = None, status: Any = None,
          probe: bool = False) -> tuple[int, Any]:
    """One worker in this process: load data once, run trials to the study-wide total; (exit code, study).

    A storage found broken while opening is bad input (exit 2, nothing written); one that fails
    during the run is a StorageFailure (exit 1; the trial in flight is handed back where it can be).
    """
    import dataclasses

    from hpsearch.objective import run_trial
    from hpsearch.status import WorkerStatus
    from hpsearch.study import finished_count, guard_storage
    from hpsearch.worker import prepare_context, probe_memory, run_worker, with_thread_plan

    status = status or WorkerStatus(None)
    ctx = prepare_context(cfg, slot, status)
    if probe:
        status.phase("probing memory")
        found = probe_memory(ctx)
        status.note(probe=None if found is None else dataclasses.asdict(found))
    status.phase("opening the study")
    objective = with_thread_plan(functools.partial(run_trial, ctx=ctx), status)
    with guard_storage(cfg):
        study = _open_and_enqueue(cfg, sampler_seed)
    status.materialise()
    status.phase("trials")
    with guard_storage(cfg, running=True), _checkpoints_guarded(cfg):
        log.info("study '%s', worker %s on %s: %d of %d trials finished", cfg.name, slot.label, ctx.device_name,
                 finished_count(study), cfg.n_trials)
        workers = cfg.workers
        outcome = run_worker(study, objective, cfg.n_trials, cfg.timeout,
                             on_trial=on_trial, max_retries=workers.max_retries,
                             stale_check_s=workers.heartbeat_interval, grace_period=workers.grace_period,
                             max_failures=workers.max_consecutive_failures)
    status.phase("done")
    return (EXIT_INTERRUPTED if outcome.interrupted else 0), study


@contextlib.contextmanager
def _checkpoints_guarded(cfg: StudyConfig) -> Iterator[None]:
    """A checkpoint the file system refused ends the run with one line naming output_dir (exit 1)."""
    from hpsearch.errors import CheckpointError

    try:
        yield
    except CheckpointError as exc:
        cause = exc.__cause__
        reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(cause)
        full = isinstance(cause, OSError) and cause.errno in (errno.ENOSPC, errno.EDQUOT)
        what, fix = ("the disk is full", "free space") if full else ("the file system refused it", "fix that")
        raise CheckpointError(f"{cfg.source}: output_dir: '{cfg.out_dir}' cannot be written: {what} ({exc.path}: "
                              f"{reason}); {fix}, then rerun to continue", exc.path) from None


def _summary(study: Any, cfg: StudyConfig) -> None:
    from hpsearch import summary
    from hpsearch.study import guard_storage

    if study is None:
        log.info("the study '%s' was not created: no worker got as far as opening it", cfg.name)
        return
    with guard_storage(cfg, running=True):
        summary.print_summary(study, cfg)


def cmd_run(args: argparse.Namespace) -> int:
    """Run the study: in this process for one slot, under a supervisor for several."""
    from pathlib import Path

    from hpsearch import summary
    from hpsearch.status import WorkerStatus, process_start_time

    cfg = _config(args.study_file, args)
    slots = _slots(cfg, args)
    auto = _auto_scaled(cfg, args, slots)
    if len(slots) == 1 and not auto:
        status = WorkerStatus(Path(cfg.out_dir) / "logs" / "worker-0.json", process_start_time(), wait_for_folder=True)
        code, study = _work(cfg, slots[0], summary.trial_logger(cfg), status=status)
        _summary(study, cfg)
        return code
    from hpsearch.monitor import Monitor
    from hpsearch.study import find_study, finished_count, guard_storage
    from hpsearch.supervisor import Supervisor, worker_argv

    # The workers load the data, check the model and create the study themselves: the supervisor
    # only reads a study that exists already (so bad input still fails with nothing written).
    with guard_storage(cfg):
        study = find_study(cfg)
    with guard_storage(cfg, running=True):
        slots = _enough_slots(slots, cfg.n_trials - (finished_count(study) if study is not None else 0))
        supervisor = Supervisor(cfg, study, slots, worker_argv(args.study_file, args), auto_scale=auto)
        try:
            supervisor.run(Monitor(study, cfg, supervisor.slots))
        except KeyboardInterrupt:
            _summary(supervisor.study, cfg)
            return EXIT_INTERRUPTED
    _summary(supervisor.study, cfg)
    return 0


def _enough_slots(slots: list[Any], remaining: int) -> list[Any]:
    """No more workers than trials left to run: each extra one would load the data and find nothing to do."""
    keep = max(1, remaining)
    if len(slots) > keep:
        log.info("starting %d workers, not %d: only %d trials are left to run", keep, len(slots), max(0, remaining))
    return slots[:keep]


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker joining the study (started by `run --workers`, by docker, or by hand on another machine)."""
    from hpsearch.status import WorkerStatus

    status = WorkerStatus(args.status_file, started=float(os.environ.get("HPSEARCH_SPAWNED_AT", "0")) or None)
    if args.supervisor_pid is not None:
        from hpsearch.supervisor import follow_supervisor

        follow_supervisor(args.supervisor_pid)
    from hpsearch import summary
    from hpsearch.study import derive_seed
    from hpsearch.slots import Slot, assign_slots, claim_gpu, parse_gpus, visible_gpus

    cfg = _config(args.study_file, args)
    visible = [] if cfg.device == "cpu" else visible_gpus()
    claim = None
    if args.gpu_claim:
        claim = claim_gpu(args.gpu_claim, visible, wait_s=args.claim_wait, trials_per_gpu=_claim_ranks(cfg))
        os.environ.update(claim.env)  # before CUDA starts: this process sees only its claimed GPU, as cuda:0
        gpu: int | None = 0
    elif args.gpus is not None:
        gpu = assign_slots(visible, parse_gpus(args.gpus), 1, 1)[0].gpu
    else:
        gpu = 0 if visible else None
    slot = Slot(index=args.slot, gpu=gpu)
    try:
        return _work(cfg, slot, summary.trial_logger(cfg), sampler_seed=derive_seed(cfg.seed, f"worker {os.getpid()}"),
                     status=status, probe=args.probe_memory)[0]
    finally:
        if claim is not None:
            claim.release()


def _claim_ranks(cfg: StudyConfig) -> int:
    """Claimable slots per GPU for lock-file workers: the fixed number, or up to the auto cap."""
    from hpsearch.slots import MAX_TRIALS_PER_GPU

    tpg = cfg.workers.trials_per_gpu
    return tpg if isinstance(tpg, int) else MAX_TRIALS_PER_GPU


def cmd_status(args: argparse.Namespace) -> int:
    from hpsearch import summary
    from hpsearch.study import guard_storage, open_study

    cfg = _config(args.study_file, args)
    with guard_storage(cfg):
        study = open_study(cfg, create=False)
        summary.print_summary(study, cfg, show_failed=args.failed)
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from hpsearch import summary
    from hpsearch.study import guard_storage, open_study

    cfg = _config(args.study_file, args)
    with guard_storage(cfg):
        study = open_study(cfg, create=False)
        record = summary.best_record(study, cfg)
        if args.export:
            from hpsearch.results.export import export_best

            record["exported"] = {k: str(v) for k, v in export_best(study, args.export).items()}
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        summary.print_best(record)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpsearch.results.html import write_report
    from hpsearch.study import guard_storage, open_study

    studies = []
    for path in args.study_files:
        cfg = _config(path, args)
        with guard_storage(cfg):
            studies.append(open_study(cfg, create=False))
    out = write_report(studies, args.out, png_dir=args.png)
    print(f"report written to {out}")
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpsearch.results.dashboard import serve_dashboard
    from hpsearch.study import guard_storage

    cfg = _config(args.study_file, args)
    with guard_storage(cfg):
        serve_dashboard(cfg.storage_url, host=args.host, port=args.port, source=cfg.source, study_name=cfg.name)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hpsearch.results.export import export_trials
    from hpsearch.study import guard_storage, open_study

    cfg = _config(args.study_file, args)
    with guard_storage(cfg):
        study = open_study(cfg, create=False)
        out = args.out or str(Path(cfg.out_dir) / f"trials.{args.format}")
        print(f"trials written to {export_trials(study, out, args.format)}")
    return 0


COMMANDS = {"run": cmd_run, "worker": cmd_worker, "validate": cmd_validate, "status": cmd_status, "best": cmd_best,
            "report": cmd_report, "dashboard": cmd_dashboard, "export": cmd_export}


def console() -> None:
    """The `hpsearch` command: :func:`main`, then a prompt exit.

    Everything is written and flushed when main returns (checkpoints, storage, logs), so the
    interpreter's own teardown, about a second with torch loaded, is skipped: for a supervisor
    waiting on its workers, and for a test suite of real processes, that second is pure waiting.
    """
    code = main()
    from hpsearch.study import dispose_storages

    dispose_storages()  # database connections are closed properly, not cut
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `hpsearch` console script; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        _setup_logging(debug)
        if args.verb in ("run", "worker"):
            with signals.installed():  # a stop signal is honoured at safe points, never lost
                return COMMANDS[args.verb](args)
        return COMMANDS[args.verb](args)
    except HpsearchError as exc:
        if debug:
            traceback.print_exc()
        print(f"hpsearch: error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_code", EXIT_BAD_INPUT)
    except KeyboardInterrupt:
        print("hpsearch: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
