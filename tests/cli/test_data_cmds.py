"""CLI data commands: init, stats (--json), compact, users delete; one-line errors with exit code 2;
the example config."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pyarrow as pa
import pytest
from pydantic import BaseModel
from typer.testing import CliRunner

from scalerec.cli import app, main
from scalerec.config import Settings, load_settings
from scalerec.data.store import DataStore
from scalerec.data.validate import validate_events, validate_items

REPO = Path(__file__).resolve().parents[2]
runner = CliRunner()


@pytest.fixture
def data_dir(tmp_path):
    d = tmp_path / "shop"
    settings = Settings(data={"dir": d})
    store = DataStore.open(settings)
    events, rejects = validate_events(
        pa.table(
            {
                "user_id": ["ann", "ann", "ben", "ben", "cid"],
                "item_id": ["mug", "lamp", "mug", "mug", "desk"],
                "event_type": ["view", "purchase", "view", "purchase", "view"],
                "timestamp": ["2022-01-01 10:00", "2022-01-01 11:00", "2022-01-02 09:00", "2022-01-03 09:00", "2022-01-03 10:00"],
            }
        ),
        settings,
    )
    assert rejects.num_rows == 0
    store.log.append(events.slice(0, 3))
    store.log.append(events.slice(3))
    store.catalog.add_pending_events(events.slice(0, 1))
    items, _ = validate_items(pa.table({"item_id": ["mug", "lamp", "desk"], "title": ["Tea mug", "Lamp", "Desk"]}))
    store.catalog.upsert_items(items)
    store.close()
    return d


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    """Run the real entry point (with its error handling) in-process."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_init_creates_the_layout_and_says_where(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # init writes ./scalerec.toml
    target = tmp_path / "new-shop"
    result = runner.invoke(app, ["--data-dir", str(target), "init"])
    assert result.exit_code == 0, result.output
    assert (target / "catalog.db").is_file() and (target / "events").is_dir() and (target / "models").is_dir()
    assert "Created data directory" in result.output and "new-shop" in result.output
    again = runner.invoke(app, ["--data-dir", str(target), "init"])
    assert again.exit_code == 0 and "Using existing" in again.output


def test_stats_json(data_dir):
    result = runner.invoke(app, ["--data-dir", str(data_dir), "stats", "--json", "--top", "1"])
    assert result.exit_code == 0, result.output
    stats = json.loads(result.output)
    assert stats["n_events"] == 6 and stats["n_pending_events"] == 1
    assert stats["n_users"] == 3 and stats["n_items_catalog"] == 3
    assert stats["events_per_type"] == {"view": 4, "purchase": 2}
    assert stats["top_items"] == [{"item_id": "mug", "title": "Tea mug", "events": 4, "users": 2}]


def test_stats_tables(data_dir):
    result = runner.invoke(app, ["--data-dir", str(data_dir), "stats"])
    assert result.exit_code == 0, result.output
    for text in ("events", "sparsity", "Events per type", "purchase", "Top items", "Tea mug", "2022-01-01"):
        assert text in result.output


def test_compact(data_dir):
    result = runner.invoke(app, ["--data-dir", str(data_dir), "compact", "--all"])
    assert result.exit_code == 0, result.output
    assert "moved 1 pending events" in result.output
    assert "KPI rollup of the days before" in result.output  # closed days' impressions and KPIs too
    assert (data_dir / "kpi_rollup" / "current.json").exists()
    store = DataStore.open(Settings(data={"dir": data_dir}))
    assert store.catalog.count_pending_events() == 0 and store.log.count() == 6
    assert all(len(list(d.glob("*.parquet"))) == 1 for _, d in store.log.partitions())
    store.close()


def test_users_delete(data_dir):
    result = runner.invoke(app, ["--data-dir", str(data_dir), "users", "delete", "ann", "--yes"])
    assert result.exit_code == 0, result.output
    assert "deleted user 'ann'" in result.output
    store = DataStore.open(Settings(data={"dir": data_dir}))
    users = {u for b in store.events(columns=["user_id"]) for u in b.column("user_id").to_pylist()}
    assert users == {"ben", "cid"}
    store.close()


def test_users_delete_asks_for_confirmation(data_dir):
    result = runner.invoke(app, ["--data-dir", str(data_dir), "users", "delete", "ben"], input="n\n")
    assert result.exit_code == 1 and "nothing was deleted" in result.output
    store = DataStore.open(Settings(data={"dir": data_dir}))
    assert store.stats()["n_users"] == 3  # nothing deleted
    store.close()


def test_unknown_user_is_a_one_line_error_with_exit_code_2(data_dir, capsys):
    code, out, err = run_main(["--data-dir", str(data_dir), "users", "delete", "nobody", "--yes"], capsys)
    assert code == 2
    assert err.strip().count("\n") == 0
    assert err.startswith("error: ") and "nobody" in err


def test_unwritable_data_dir_is_a_one_line_error(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run_main(["--data-dir", str(blocker / "sub"), "stats"], capsys)
    assert code == 2 and err.startswith("error: ") and err.strip().count("\n") == 0


def test_example_config_has_every_key_with_its_default(tmp_path):
    example = REPO / "scalerec.example.toml"
    loaded = load_settings(example)
    assert loaded.model_dump(mode="json") == Settings().model_dump(mode="json")
    text = example.read_text()

    def keys(model, prefix=""):
        for name, field in type(model).model_fields.items():
            value = getattr(model, name)
            if isinstance(value, BaseModel):
                yield from keys(value, f"{prefix}{name}.")
            else:
                yield prefix, name

    missing = [
        f"{section}{name}"
        for section, name in keys(Settings())
        if not re.search(rf"^#?\s*{re.escape(name)}\s*=", text, flags=re.M)
        and not (name == "types" and "[events.types." in text)
    ]
    assert missing == []
