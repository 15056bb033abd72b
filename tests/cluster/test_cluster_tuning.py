"""Training on the cluster: tuning trials as Ray tasks (one Optuna storage, asked and told by the driver),
a killed trial worker retried rather than lost, and the winner refitted by the distributed twin."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from _ray_cluster import Killer, ray_cluster  # noqa: F401  (fixture)
from _serving_fixtures import base_store  # noqa: F401  (fixture)
from scalerec.config import Settings

pytestmark = [pytest.mark.ray, pytest.mark.slow]


def test_trials_run_as_ray_tasks_and_a_killed_one_is_retried(ray_cluster, base_store: Path, tmp_path: Path) -> None:  # noqa: F811
    import optuna
    from optuna.trial import TrialState

    from scalerec.models.als import ALS
    from scalerec.registry import Registry
    from scalerec.training.pipeline import TrainOptions, train
    from scalerec.training.tuning import storage_url

    d = tmp_path / "data"
    shutil.copytree(base_store, d)
    settings = Settings(data={"dir": d}, cluster={"address": ray_cluster.address})
    with Killer("run_trial", timeout_s=120) as killer:
        result = train(settings, TrainOptions(models=["als"], trials=4, promote=False, seed=3))
    assert killer.killed, "the chaos thread found no running trial to kill"
    assert result.status == "registered"
    (family,) = result.families
    # the base store's own training left one trial in the same study; this run adds the rest
    assert family.trials_total == 4 and family.trials_failed == 0, "the killed trial was retried, not lost"
    storage = optuna.storages.RDBStorage(storage_url(d))
    study = optuna.load_study(study_name=family.study, storage=storage)
    trials = study.get_trials(deepcopy=False)
    # every trial ran to an end (the killed one again): completed, or stopped by the median rule, which is the
    # search at work (the ranges follow each trial's matrix, so a seed's later ALS trial may be pruned), never failed
    assert len(trials) == 4 and all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials), trials
    assert sum(t.state == TrialState.COMPLETE for t in trials) >= 2
    assert all(t.user_attrs.get("fit_s", 0) > 0 for t in trials)
    loaded = Registry(settings).load(result.version.version)
    assert type(loaded.model) is ALS  # refitted by DistributedALS, saved as plain ALS
