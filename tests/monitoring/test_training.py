"""Training figures reach the server from the training process: `scalerec train` writes the text
file and the runs history (also for a failed run), and /metrics re-exposes them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from scalerec.cli import main
from scalerec.config import Settings
from scalerec.data.store import DataStore
from scalerec.datasets.synth import generate_store
from scalerec.monitoring.training import read_runs, textfile_families


def test_train_writes_its_figures_where_the_server_reads_them(tmp_path: Path, capsys) -> None:
    d = tmp_path / "data"
    settings = Settings(data={"dir": d})
    with DataStore.open(settings) as store:
        generate_store(store, n_users=200, n_items=60, n_events=8000, seed=2, days=40)
    main(["-d", str(d), "train", "--models", "popular", "--trials", "1", "--json"])
    out = json.loads(capsys.readouterr().out)
    runs = read_runs(settings)
    assert len(runs) == 1 and runs[0]["status"] == "registered" and runs[0]["version"] == out["version"]
    assert runs[0]["family"] == "popular" and runs[0]["trials"] >= 1 and runs[0]["peak_rss_bytes"] > 0
    assert {"snapshot", "split", "refit", "register"} <= set(runs[0]["stages"])
    fams = {f.name: f for f in textfile_families(settings)}
    assert "scalerec_training_stage_seconds" in fams and "scalerec_training_test_metric" in fams
    stages = {s.labels["stage"] for s in fams["scalerec_training_stage_seconds"].samples}
    assert "refit" in stages
    runs_total = {s.labels["status"]: s.value for s in fams["scalerec_training_runs"].samples if s.name.endswith("_total")}
    assert runs_total == {"registered": 1.0}
    # a failed run is recorded too (an unknown family fails before any work)
    with pytest.raises(SystemExit):
        main(["-d", str(d), "train", "--models", "no-such-family", "--trials", "1"])
    assert [r["status"] for r in read_runs(settings)] == ["registered", "failed"]
    runs_total = {s.labels["status"]: s.value for s in {f.name: f for f in textfile_families(settings)}["scalerec_training_runs"].samples
                  if s.name.endswith("_total")}
    assert runs_total == {"registered": 1.0, "failed": 1.0}
