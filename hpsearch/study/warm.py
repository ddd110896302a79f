"""`warm_start:`: the finished trials of a previous study join this study's sampler history (once)."""

from __future__ import annotations

import logging

import optuna
from optuna.trial import FrozenTrial, TrialState, create_trial

from hpsearch import space
from hpsearch.config import StudyConfig, load_config
from hpsearch.errors import ConfigError
from hpsearch import records
from hpsearch.study.invariants import _shown_distribution
from hpsearch.study.storage import make_storage
from hpsearch.study.urls import redact_url

log = logging.getLogger(__name__)


def _source(cfg: StudyConfig) -> tuple[str, str]:
    """(study name, storage URL) of the study `warm_start:` names."""
    ws = cfg.warm_start
    assert ws is not None
    if ws.study_file is not None:
        other = load_config(ws.study_file)
        return other.name, other.storage_url
    return str(ws.study), ws.storage or cfg.storage_url


def source_key(cfg: StudyConfig) -> str | None:
    """How the study records that a warm-start source was added: '<redacted storage>#<study>'."""
    if cfg.warm_start is None:
        return None
    name, url = _source(cfg)
    return f"{redact_url(url)}#{name}"


def warm_trials(cfg: StudyConfig) -> list[FrozenTrial]:
    """The previous study's complete trials, re-expressed in this file's space; ConfigError if it does not fit.

    Read only: nothing is written, here or there. A trial with a value outside this space's ranges is left out.
    """
    name, url = _source(cfg)
    where = f"{cfg.source}: warm_start"
    try:
        storage = make_storage(url, cfg.source, cfg.workers, create=False)
        previous = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise ConfigError(f"{where}: no study '{name}' in {redact_url(url)}; check warm_start.study") from None
    except Exception as exc:  # noqa: BLE001 - a missing file or server is the user's to fix: one line
        raise ConfigError(f"{where}: storage {redact_url(url)} cannot be read ({type(exc).__name__}); "
                          f"check warm_start.storage") from None
    theirs = records.goals_of(previous)
    if theirs != [tuple(goal) for goal in cfg.goals]:
        raise ConfigError(f"{where}: study '{name}' {_said(theirs)}, this file {_said(cfg.goals)}; warm-start from a "
                          f"study of the same {'metric' if len(theirs) == 1 else 'objectives'}")
    ours = {key: space.distribution(spec) for key, spec in cfg.space.items()}
    # An infeasible trial would teach this study's sampler a point it must avoid as a good one.
    trials = [t for t in previous.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if records.is_feasible(t)]
    _check_fit(cfg, name, trials, ours)
    fitting = [t for t in trials if all(ours[k]._contains(ours[k].to_internal_repr(v)) for k, v in t.params.items())]
    if len(fitting) < len(trials):
        log.info("warm start: %d of %d trials of '%s' lie outside this space's ranges and are left out",
                 len(trials) - len(fitting), len(trials), name)
    return [create_trial(values=list(t.values), params=t.params, distributions={k: ours[k] for k in t.params},
                         user_attrs={"warm_start": f"{name}#{t.number}"}) for t in fitting]


def _said(goals: list[tuple[str, str]]) -> str:
    return ", ".join(f"{direction}s {metric}" for metric, direction in goals)


def _check_fit(cfg: StudyConfig, name: str, trials: list[FrozenTrial],
               ours: dict[str, optuna.distributions.BaseDistribution]) -> None:
    bad: dict[str, str] = {}
    for trial in trials:
        for key, dist in trial.distributions.items():
            if key not in ours:
                bad.setdefault(key, "not in this file's space")
                continue
            try:
                optuna.distributions.check_distribution_compatibility(dist, ours[key])
            except ValueError:
                bad.setdefault(key, f"{_shown_distribution(dist)} there, {_shown_distribution(ours[key])} here")
    if bad:
        named = "; ".join(f"{key}: {why}" for key, why in bad.items())
        raise ConfigError(f"{cfg.source}: warm_start: study '{name}' does not fit this space ({named}); "
                          f"align the spaces or drop warm_start")


def add_warm_trials(study: optuna.Study, key: str, trials: list[FrozenTrial]) -> int:
    """Add `trials` to `study` unless trials from `key` were added already; the count added."""
    done = study.user_attrs.get(records.STUDY_WARM_START) or []
    if key in done:
        return 0
    study.add_trials(trials)
    study.set_user_attr(records.STUDY_WARM_START, [*done, key])
    log.info("warm start: %d finished trials of %s added to the sampler's history", len(trials), key)
    return len(trials)
