"""The `hpsearch` command line: verbs, logging, and the mapping of errors to exit codes.

Exit codes: 0 success; 1 trials kept failing; 2 bad input (one line on stderr); 130 interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import sys
import traceback
from pathlib import Path
from typing import Any, Iterator, Sequence

import yaml

from hpsearch import __version__, ids, signals
from hpsearch.cliargs import Parser, add_common, add_predict_flags, add_run_flags, config_from_args, port
from hpsearch.cluster import verbs as cluster_verbs
from hpsearch.config import RUN_ENV, StudyConfig, load_config
from hpsearch.errors import ConfigError, HpsearchError
from hpsearch.threads import apply_wait_policy

log = logging.getLogger("hpsearch")
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130


def build_parser() -> argparse.ArgumentParser:
    """The whole command-line interface (the contract in DESIGN.md)."""
    parser = Parser(prog="hpsearch", description="Hyperparameter search for PyTorch from one YAML study file.")
    parser.add_argument("--version", action="version", version=f"hpsearch {__version__}")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=Parser)
    run = verbs.add_parser("run", help="run (or continue) a study")
    add_common(run)
    add_run_flags(run)
    worker = verbs.add_parser("worker", help="join a running study as one more worker")
    add_common(worker)
    add_run_flags(worker)
    worker.add_argument("--slot", type=int, default=0, help="slot number recorded with trials (set by run)")
    worker.add_argument("--supervisor-pid", type=int, help=argparse.SUPPRESS)  # set by run: stop when it dies
    worker.add_argument("--status-file", help=argparse.SUPPRESS)  # set by run: where the supervisor reads the phase
    worker.add_argument("--probe-memory", action="store_true", help=argparse.SUPPRESS)  # set by run: size the GPU
    worker.add_argument("--gpu-claim", metavar="DIR", help="pin to a free GPU by holding a lock file in DIR")
    worker.add_argument("--claim-wait", type=float, default=0.0, help="seconds to wait for a free GPU")
    validate = verbs.add_parser("validate", help="check a study file as run does and print the resolved config")
    add_common(validate)
    validate.add_argument("--config-only", action="store_true",
                          help="check the file alone: no custom code imported, no data loaded, no model built")
    status = verbs.add_parser("status", help="trials by state and the best so far")
    add_common(status)
    status.add_argument("--failed", action="store_true", help="also print the error of each failed trial")
    best = verbs.add_parser("best", help="the best trial: number, value, params, checkpoint")
    add_common(best)
    best.add_argument("--json", action="store_true", help="print JSON")
    best.add_argument("--export", metavar="DIR", help="write params.yaml, weights.pt and load_model.py to DIR")
    best.add_argument("--trial", type=int, metavar="N", help="with --export: export trial N (one of the Pareto set "
                      "with several objectives) instead of the best")
    report = verbs.add_parser("report", help="write an HTML report comparing studies")
    add_common(report, many=True)
    report.add_argument("--out", default="report.html", help="output HTML file (default report.html)")
    report.add_argument("--png", metavar="DIR", help="also write every figure as PNG into DIR")
    dashboard = verbs.add_parser("dashboard", help="open optuna-dashboard on the study's storage")
    add_common(dashboard)
    dashboard.add_argument("--host", default="127.0.0.1")
    dashboard.add_argument("--port", type=port, default=8080, help="0 picks a free port")
    export = verbs.add_parser("export", help="write all trials as CSV or JSON")
    add_common(export)
    export.add_argument("--format", choices=["csv", "json"], default="csv")
    export.add_argument("--out", help="output file (default runs/<name>/trials.<format>)")
    predict = verbs.add_parser("predict", help="a trial's checkpoint applied to images, an array or a split: a CSV")
    add_common(predict)
    add_predict_flags(predict)
    cluster_verbs.add_cluster_verbs(verbs)
    return parser


def _setup_logging(debug: bool) -> None:
    import optuna

    level = logging.DEBUG if debug else logging.INFO
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    optuna.logging.set_verbosity(optuna.logging.DEBUG if debug else optuna.logging.WARNING)
    optuna.logging.disable_default_handler()
    optuna.logging.enable_propagation()


@contextlib.contextmanager
def _writes(flag: str, other: tuple[str, str | None] | None = None) -> Iterator[None]:
    """A file a verb cannot write is bad input: one line naming the path and the flag that chooses another.

    `other` is a second flag and its folder: a path under that folder is named by that flag.
    """
    try:
        yield
    except OSError as exc:
        where = exc.filename or "the output file"
        if other is not None and other[1] and Path(where).absolute().is_relative_to(Path(other[1]).absolute()):
            flag = other[0]
        why = "a file, not a folder" if isinstance(exc, FileExistsError) else exc.strerror or exc  # from mkdir
        raise ConfigError(f"{flag}: {where} cannot be written ({why}); "
                          f"choose another {flag} (a folder you can write)") from None


# --------------------------------------------------------------------------- verbs


def _validate_data_and_model(cfg: StudyConfig) -> str:
    """Run's checks before it opens the study (custom code, data, model on two samples, on the CPU); what was done.

    Writes nothing: a dataset with download: true that is not on disk yet is not downloaded, and is said so.
    """
    from hpsearch.errors import DataError
    from hpsearch.names import DATASETS
    from hpsearch.preflight import check_factory_arguments, preflight

    downloadable = cfg.data.dataset in DATASETS and cfg.data.dataset not in ("digits", "image_folder", "label_folder")
    if not (cfg.data.download and downloadable):
        preflight(cfg, fetch=False)
        return "data loaded, model built and run on two samples"
    try:
        preflight(cfg.model_copy(update={"data": cfg.data.model_copy(update={"download": False})}), fetch=False)
    except DataError:
        check_factory_arguments(cfg)  # what run checks of the model without the data
        return (f"data not loaded: {cfg.data.dataset} is not under {cfg.data.root} yet and validate downloads "
                f"nothing (run will); model not built")
    return "data loaded, model built and run on two samples"


def cmd_validate(args: argparse.Namespace) -> int:
    from hpsearch.study import redact_url

    cfg = config_from_args(args.study_file, args)
    warm = _check_warm_start(cfg)
    if args.config_only:
        checked = "the file only: custom code, data and model not checked (--config-only)"
    else:
        checked = _validate_data_and_model(cfg)
    resolved = cfg.resolved()
    resolved["storage"] = redact_url(resolved["storage"])
    print(f"# {cfg.source}: valid ({checked})")
    for key, how in cfg.chosen.items():
        print(f"# {key}: {how}")
    if cfg.starts_from_baseline:
        from hpsearch.baseline import baseline_point

        point = ", ".join(f"{name}: {value:.4g}" if isinstance(value, float) else f"{name}: {value}"
                          for name, value in baseline_point(cfg).items())
        print(f"# first trial: the baseline {{{point}}} (hpsearch's defaults where the space holds them, "
              f"the middle of each range elsewhere)")
    if warm:
        print(f"# warm_start: {warm}")
    # libyaml's emitter where PyYAML has it: the same text, 4x faster for a long enqueue: list.
    print(yaml.dump(resolved, Dumper=getattr(yaml, "CSafeDumper", yaml.SafeDumper), sort_keys=False), end="")
    return 0


def _check_warm_start(cfg: StudyConfig) -> str | None:
    """What `run` would add from `warm_start:`, checked as `run` checks it (read only); ConfigError if it cannot."""
    if cfg.warm_start is None:
        return None
    from hpsearch.study.warm import source_key, warm_trials

    return f"{len(warm_trials(cfg))} finished trials of {source_key(cfg)} fit this space"


def _storage_flag(args: argparse.Namespace, cfg: StudyConfig) -> str:
    """` --storage URL` for the commands a summary suggests, when this command did not use the file's storage.

    A storage from $HPSEARCH_STORAGE needs no flag: the variable stays set for the next command.
    """
    from hpsearch.study import redact_url

    moved = getattr(args, "output_dir", None) and cfg.storage is None  # the default database moved with the folder
    if not (getattr(args, "storage", None) or moved):
        return ""
    return f" --storage {shlex.quote(redact_url(cfg.storage_url))}"


def _hints(args: argparse.Namespace, cfg: StudyConfig) -> Any:
    """How the commands a summary suggests are spelled: the program as invoked, and each flag that moved the study."""
    from hpsearch import summary

    in_file = load_config(args.study_file, storage=cfg.storage_url)  # what a plain rerun of the file asks for (n_trials, output_dir)
    return summary.Hints(prog=summary.invoked_as(), storage=_storage_flag(args, cfg), file_n_trials=in_file.n_trials,
                         file_out_dir=in_file.out_dir)


def _summary(study: Any, cfg: StudyConfig, hints: Any) -> None:
    from hpsearch import summary
    from hpsearch.study import guard_storage

    if study is None:
        log.info("the study '%s' was not created: no worker got as far as opening it", cfg.name)
        return
    with guard_storage(cfg, running=True):
        summary.print_summary(study, cfg, hints=hints)


def _nothing_to_run(cfg: StudyConfig, hints: Any) -> bool:
    """True (after saying so and how to add trials) when the study already has its n_trials finished trials.

    Read-only: no worker starts and nothing is written, not even this run's target.
    """
    from hpsearch.study import dispose_storage, find_study, finished_count, guard_storage

    with guard_storage(cfg):
        study = find_study(cfg, create=False)
        finished = 0 if study is None else finished_count(study)
        if study is None or finished < cfg.n_trials:
            if study is not None:
                dispose_storage(study)  # the run opens storages of its own: this one's connection would idle
            return False
        log.info("nothing to run: study '%s' already has %d finished trials and n_trials is %d (the study's total)",
                 cfg.name, finished, cfg.n_trials)
    _summary(study, cfg, hints)
    return True


def cmd_run(args: argparse.Namespace) -> int:
    """Run the study: in this process for one slot, under a supervisor for several."""
    from hpsearch.slots import plan_slots
    from hpsearch.study import check_output_dir, check_writable

    cfg = config_from_args(args.study_file, args)
    check_output_dir(cfg)
    check_writable(cfg.storage_url, cfg.source)
    hints = _hints(args, cfg)
    os.environ[RUN_ENV] = ids.run_id()  # workers inherit it
    if _nothing_to_run(cfg, hints):
        return 0
    if cfg.unused_pruner is not None:
        log.info("%s", cfg.unused_pruner)
    slots, auto = plan_slots(cfg, args.gpus, args.workers)
    if len(slots) == 1 and not auto:
        from hpsearch import summary
        from hpsearch.worker import work_in_this_process

        outcome, study = work_in_this_process(cfg, slots[0], summary.trial_logger(cfg))
    else:
        from hpsearch.supervisor import supervise, worker_argv

        outcome, study = supervise(cfg, slots, auto, worker_argv(args.study_file, args))
    _summary(study, cfg, hints)
    return EXIT_INTERRUPTED if outcome.interrupted else 0


def cmd_worker(args: argparse.Namespace) -> int:
    """One worker joining the study (started by `run --workers`, by docker, or by hand on another machine)."""
    from hpsearch.status import WorkerStatus

    status = WorkerStatus(args.status_file, started=float(os.environ.get("HPSEARCH_SPAWNED_AT", "0")) or None)
    if args.supervisor_pid is not None:
        from hpsearch.supervisor import follow_supervisor

        follow_supervisor(args.supervisor_pid)
    from hpsearch import summary
    from hpsearch.slots import worker_slot
    from hpsearch.study import check_output_dir
    from hpsearch.worker import work_in_this_process

    cfg = config_from_args(args.study_file, args)
    check_output_dir(cfg)
    slot, claim = worker_slot(cfg, args.slot, args.gpus, args.gpu_claim, args.claim_wait)
    try:
        outcome, _ = work_in_this_process(cfg, slot, summary.trial_logger(cfg), status=status,
                                          sampler_seed=ids.derive_seed(cfg.seed, f"worker {os.getpid()}"),
                                          probe=args.probe_memory)
        return EXIT_INTERRUPTED if outcome.interrupted else 0
    finally:
        if claim is not None:
            claim.release()


def cmd_status(args: argparse.Namespace) -> int:
    from hpsearch import summary
    from hpsearch.study import guard_storage, open_study

    cfg = config_from_args(args.study_file, args)
    with guard_storage(cfg):
        study = open_study(cfg, create=False)
        summary.print_summary(study, cfg, show_failed=args.failed, hints=_hints(args, cfg))
    return 0


def cmd_best(args: argparse.Namespace) -> int:
    from hpsearch import summary
    from hpsearch.study import guard_storage, open_study

    cfg = config_from_args(args.study_file, args)
    if args.trial is not None and not args.export:
        raise ConfigError(f"--trial {args.trial}: picks the trial --export writes; add --export DIR")
    with guard_storage(cfg):
        study = open_study(cfg, create=False)
        record = summary.best_record(study, cfg)
        if args.export:
            from hpsearch.results.export import export_best, predict_usage

            with _writes("--export"):
                paths = export_best(study, args.export, trial=args.trial)
            record["exported"] = {k: str(v) for k, v in paths.items()}
            record["exported_trial"] = record["number"] if args.trial is None else args.trial
            if "loader" in paths:
                record["predict"] = predict_usage(study, args.trial)
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        summary.print_best(record)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from hpsearch.results import html
    from hpsearch.study import guard_storage, guard_storages, open_study, rdb_storage_of

    studies, cfgs = [], []
    storages: dict[str, Any] = {}  # one per database: a storage per study held a server connection each
    for path in args.study_files:
        cfg = config_from_args(path, args)
        with guard_storage(cfg):
            studies.append(open_study(cfg, create=False, storage=storages.get(cfg.storage_url)))
        cfgs.append(cfg)
        storages.setdefault(cfg.storage_url, rdb_storage_of(studies[-1]))
    with _writes("--out", other=("--png", args.png)), guard_storages(cfgs):
        out = html.write_report(studies, args.out, png_dir=args.png)
    print(f"report written to {out}")  # the one line a user needs; write_report logs the details at debug
    return 0


def cmd_dashboard(args: argparse.Namespace) -> int:
    from hpsearch.results.dashboard import serve_dashboard
    from hpsearch.study import guard_storage

    cfg = config_from_args(args.study_file, args)
    with guard_storage(cfg):
        serve_dashboard(cfg.storage_url, host=args.host, port=args.port, source=cfg.source, study_name=cfg.name,
                        out_dir=cfg.out_dir)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from hpsearch.results.export import export_trials
    from hpsearch.study import guard_storage, open_study
    from hpsearch.summary import shown_path, study_output_dir

    cfg = config_from_args(args.study_file, args)
    with guard_storage(cfg):
        study = open_study(cfg, create=False)
        out = args.out or str(Path(study_output_dir(study, cfg)) / f"trials.{args.format}")
        with _writes("--out"):
            written = export_trials(study, out, args.format)
        per_epoch = written.with_name(f"{written.stem}_epochs.csv") if args.format == "csv" else None
        print(f"trials written to {shown_path(written)}"
              + (f" and {shown_path(per_epoch)} (one row per epoch)" if per_epoch else ""))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from hpsearch import trialsets
    from hpsearch.predict import input_notes, pick_trial, predict_to_csv
    from hpsearch.study import guard_storage, open_study

    cfg = config_from_args(args.study_file, args)
    with guard_storage(cfg):
        study = open_study(cfg, create=False)
        trial, checkpoint = pick_trial(study.get_trials(deepcopy=False), trialsets.best_trial(study), args.trial)
    rows = predict_to_csv(cfg, trial, checkpoint, args.input, Path(args.out), tta=args.tta)
    print(f"{rows} predictions of trial {trial.number} written to {args.out}")
    for note in input_notes(cfg, args.input):
        print(f"note: {note}", file=sys.stderr)
    return 0


COMMANDS = {"run": cmd_run, "worker": cmd_worker, "validate": cmd_validate, "status": cmd_status, "best": cmd_best,
            "report": cmd_report, "dashboard": cmd_dashboard, "export": cmd_export, "predict": cmd_predict,
            "slurm": cluster_verbs.cmd_slurm, "k8s": cluster_verbs.cmd_k8s}


def console() -> None:
    """The `hpsearch` command: :func:`main`, then a prompt exit.

    Everything is written and flushed when main returns (checkpoints, storage, logs), so the
    interpreter's own teardown, about a second with torch loaded, is skipped: for a supervisor
    waiting on its workers, and for a test suite of real processes, that second is pure waiting.
    """
    apply_wait_policy()  # before anything loads torch: its OpenMP runtime reads the environment once, at load
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:  # `hpsearch validate x.yaml | head`: the reader left early, which is no error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # what is still buffered goes nowhere
        code = 0
    logging.shutdown()  # main closed the database connections properly; none is cut
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
    finally:
        _close_storages()


def _close_storages() -> None:
    """Close the database connections the verb opened (a verb called in-process must not leave them to the GC)."""
    study_package = sys.modules.get("hpsearch.study")  # a verb that opened no storage does not import it for this
    if study_package is not None:
        study_package.dispose_storages()
