"""`scalerec train`, `tune report` and `models ...` through the real CLI (CliRunner)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from scalerec.cli import app, main
from scalerec.errors import ConflictError, ValidationError
from scalerec.registry import Registry
from test_pipeline import tiny_store

runner = CliRunner()


@pytest.fixture()
def data_dir(tmp_path: Path) -> Path:
    settings, store = tiny_store(tmp_path / "data")
    store.close()
    return Path(settings.data.dir)


def _cli(data_dir: Path, *args: str):
    return runner.invoke(app, ["--data-dir", str(data_dir), *args], catch_exceptions=True)


def test_train_prints_progress_and_summary_and_registers(data_dir: Path) -> None:
    r = _cli(data_dir, "train", "--trials", "2", "--models", "popular,ease")
    assert r.exit_code == 0, r.output
    prod = Registry(data_dir).production()
    assert prod is not None
    for text in ("search popular", "search ease", "fit", "register", prod.version, "promoted to production", "ndcg@20",
                 "chosen"):
        assert text in r.output
    # the summary table: one row per family with its trial count (2 x 2 shared by successive
    # halving: 1 each, then the other 2 to the better family)
    assert "3 (+3)" in r.output and "1 (+1)" in r.output


def test_train_json_and_if_new_events_skip(data_dir: Path) -> None:
    r = _cli(data_dir, "train", "--trials", "1", "--models", "popular", "--json")
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    assert out["status"] == "registered" and out["stage"] == "production" and out["family"] == "popular"
    assert out["selection"]["chosen"] == "popular" and out["selection"]["reason"] == "the only family"
    r = _cli(data_dir, "train", "--models", "popular", "--if-new-events", "1", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["status"] == "skipped"
    r = _cli(data_dir, "train", "--models", "popular", "--if-new-events", "1")
    assert "skipped" in r.output and "nothing to do" in r.output


def test_no_promote_then_models_promote_rollback_delete(data_dir: Path) -> None:
    assert _cli(data_dir, "train", "--trials", "1", "--models", "popular").exit_code == 0
    r = _cli(data_dir, "train", "--trials", "1", "--models", "ease", "--no-promote")
    assert r.exit_code == 0 and "kept as candidate" in r.output
    reg = Registry(data_dir)
    first, second = [v.version for v in reg.list()]
    assert reg.production().version == first

    r = _cli(data_dir, "models", "list")
    assert r.exit_code == 0 and first in r.output and second in r.output and "candidate" in r.output

    r = _cli(data_dir, "models", "show", second, "--json")
    shown = json.loads(r.output)
    assert shown["stage"] == "candidate" and shown["manifest"]["model"]["family"] == "ease"
    assert "not promoted (--no-promote)" in shown["manifest"]["promotion"]["reason"]
    readable = _cli(data_dir, "models", "show", second).output
    assert "stage" in readable and "candidate" in readable and "ease" in readable
    assert "not promoted (--no-promote)" in readable and "--json" in readable
    assert len(readable.splitlines()) < 40 and '"files"' not in readable
    test_iv = shown["intervals"]["test"]  # the primary metric's interval is in the table too
    assert f"[{test_iv['low']:.4f}, {test_iv['high']:.4f}]" in readable

    gate = shown["manifest"]["promotion"]
    r = _cli(data_dir, "models", "promote", second)
    if gate["gate_passed"]:
        assert r.exit_code == 0 and f"{second} is now in production" in r.output
    else:  # ease scored below production on this split: promoting needs --force, which is recorded
        assert isinstance(r.exception, ConflictError) and "--force" in str(r.exception)
        r = _cli(data_dir, "models", "promote", second, "--force")
        assert r.exit_code == 0 and f"{second} is now in production (forced)" in r.output
    r = _cli(data_dir, "models", "rollback")
    assert r.exit_code == 0 and f"{first} is in production again" in r.output
    assert reg.production().version == first

    r = _cli(data_dir, "models", "delete", first)
    assert isinstance(r.exception, ConflictError)  # production cannot be deleted
    r = _cli(data_dir, "models", "delete", second)
    assert r.exit_code == 0 and [v.version for v in reg.list()] == [first]


def test_models_list_reports_a_broken_version(data_dir: Path) -> None:
    assert _cli(data_dir, "train", "--trials", "1", "--models", "popular").exit_code == 0
    v = Registry(data_dir).production()
    f = v.path / "popular.npy"
    f.chmod(0o644)
    f.unlink()
    r = _cli(data_dir, "models", "list")
    assert r.exit_code == 0 and "broken" in r.output and "popular.npy" in r.output


def test_tune_report_lists_trials_and_best_per_family(data_dir: Path) -> None:
    r = _cli(data_dir, "tune", "report")
    assert r.exit_code == 0 and "no searches yet" in r.output
    assert _cli(data_dir, "train", "--trials", "3", "--models", "ease,popular").exit_code == 0
    r = _cli(data_dir, "tune", "report")
    assert r.exit_code == 0, r.output
    assert "best configuration per family" in r.output and "l2=" in r.output and "default" in r.output
    r = _cli(data_dir, "tune", "report", "--json", "--family", "ease")
    studies = json.loads(r.output)
    # 2 x 3 trials shared by successive halving; the rounds tell how many each family got
    assert len(studies) == 1 and studies[0]["family"] == "ease"
    assert len(studies[0]["trials"]) == sum(r["trials"] for r in studies[0]["rounds"]) >= 1
    best = max(t["value"] for t in studies[0]["trials"] if t["value"] is not None)
    assert studies[0]["best"]["value"] == pytest.approx(best)


def test_bad_options_are_one_line_errors(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    r = _cli(data_dir, "train", "--models", "nope")
    assert isinstance(r.exception, ValidationError) and "unknown model families" in str(r.exception)
    r = _cli(data_dir, "train", "--metric", "ndcg")
    assert isinstance(r.exception, ValidationError)
    with pytest.raises(SystemExit) as exc:
        main(["--data-dir", str(data_dir), "train", "--force", "--no-promote"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
