"""Where a config meets Optuna: storage, sampler and pruner factories, `open_study`, output folders, and the one
adapter over Optuna internals.

Each submodule opens with what it owns; callers import from `hpsearch.study`.
"""

from __future__ import annotations

from hpsearch.study.urls import (EXAMPLE_URLS, HIDDEN, UNPARSEABLE, check_driver, check_storage, check_url,
    driver_url, redact_url, scrub, storage_identity, url_secrets)
from hpsearch.study.sqlite import SQLITE_BUSY_TIMEOUT_S, check_storage_file, check_writable
from hpsearch.study.failures import (STORAGE_EXCEPTIONS, guard_storage, guard_storages, is_storage_exception,
    storage_cause, storage_failure)
from hpsearch.study.storage import PG_CONNECT_TIMEOUT_S, dispose_storages, make_storage
from hpsearch.study.factories import derive_seed, make_pruner, make_sampler
from hpsearch.study.adapter import (FINISHED, Heartbeat, current_state, dispose_storage, fail_stale_trials,
    finished_count, hand_back, requeue, retry_history, set_study_system_attr, state_counts, storage_of, stored_distributions, study_id,
    study_system_attrs, trial_id, rdb_storage_of)
from hpsearch.study.queries import best_trial, epoch_sums, successors, trials_in, worker_states
from hpsearch.study.invariants import SETTINGS_SECTIONS, check_space_unchanged, run_settings, settings_id
from hpsearch.study.outputs import (ARTIFACTS, OWNER_FILE, artifact_dir, artifact_store, check_output_dir,
    claim_output_dir)
from hpsearch.study.opening import find_study, open_study

__all__ = [
    "ARTIFACTS",
    "EXAMPLE_URLS",
    "FINISHED",
    "HIDDEN",
    "Heartbeat",
    "OWNER_FILE",
    "PG_CONNECT_TIMEOUT_S",
    "SETTINGS_SECTIONS",
    "SQLITE_BUSY_TIMEOUT_S",
    "STORAGE_EXCEPTIONS",
    "UNPARSEABLE",
    "artifact_dir",
    "artifact_store",
    "best_trial",
    "check_driver",
    "check_output_dir",
    "check_space_unchanged",
    "check_storage",
    "check_storage_file",
    "check_url",
    "check_writable",
    "claim_output_dir",
    "current_state",
    "derive_seed",
    "dispose_storage",
    "dispose_storages",
    "driver_url",
    "epoch_sums",
    "fail_stale_trials",
    "find_study",
    "finished_count",
    "guard_storage",
    "guard_storages",
    "hand_back",
    "is_storage_exception",
    "make_pruner",
    "make_sampler",
    "make_storage",
    "open_study",
    "redact_url",
    "requeue",
    "retry_history",
    "run_settings",
    "scrub",
    "set_study_system_attr",
    "settings_id",
    "state_counts",
    "storage_cause",
    "storage_failure",
    "storage_identity",
    "rdb_storage_of",
    "storage_of",
    "stored_distributions",
    "study_id",
    "study_system_attrs",
    "successors",
    "trial_id",
    "trials_in",
    "url_secrets",
    "worker_states",
]
