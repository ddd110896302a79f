"""The synthetic studies the collect, figures and html tests share: module-scoped fixtures, imported by those
modules (``name=`` gives each its short name, so test parameters do not shadow the import)."""

from __future__ import annotations

import optuna
import pytest

import study_fixtures as sf
from hpsearch.results.collect import collect_study
from hpsearch.results.studydata import StudyData

PER_STUDY = ["optimization history", "learning curves", "parallel coordinates", "param importances",
             "lr x batch_size contour", "slices", "timeline"]


@pytest.fixture(scope="module", name="db")
def db_fixture(tmp_path_factory: pytest.TempPathFactory) -> str:
    return f"sqlite:///{tmp_path_factory.mktemp('report') / 'studies.db'}"


@pytest.fixture(scope="module", name="study")
def study_fixture(db: str) -> optuna.Study:
    return sf.make_study(db, "alpha", 30, epochs=6, fail_every=7, running=1)


@pytest.fixture(scope="module", name="data")
def data_fixture(study: optuna.Study) -> StudyData:
    return collect_study(study)


@pytest.fixture(scope="module", name="loss_study")
def loss_study_fixture(db: str) -> optuna.Study:
    """A study that minimises val_loss, to compare with ``study`` (maximises val_accuracy)."""
    return sf.make_study(db, "lossy", 12, seed=5, direction="minimize", metric="val_loss")


@pytest.fixture(scope="module", name="loss_data")
def loss_data_fixture(loss_study: optuna.Study) -> StudyData:
    return collect_study(loss_study)
