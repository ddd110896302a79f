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
    if previous.direction.name.lower() != cfg.resolved_direction or records.metric_of(previous) != cfg.metric:
        raise ConfigError(f"{where}: study '{name}' {previous.direction.name.lower()}s {records.metric_of(previous)}, "
                          f"this file {cfg.resolved_direction}s {cfg.metric}; warm-start from a study of the same metric")
    ours = {key: space.distribution(spec) for key, spec in cfg.space.items()}
    trials = previous.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    _check_fit(cfg, name, trials, ours)
    fitting = [t for t in trials if all(ours[k]._contains(ours[k].to_internal_repr(v)) for k, v in t.params.items())]
    if len(fitting) < len(trials):
        log.info("warm start: %d of %d trials of '%s' lie outside this space's ranges and are left out",
                 len(trials) - len(fitting), len(trials), name)
    return [create_trial(value=t.value, params=t.params, distributions={k: ours[k] for k in t.params},
                         user_attrs={"warm_start": f"{name}#{t.number}"}) for t in fitting]


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
