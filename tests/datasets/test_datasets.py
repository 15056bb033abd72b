"""Dataset plug-ins: the preset and split registries, the built-in datasets registered in them, and
the core asking the registry (CLI options and help, make_split, worker-side split rebuild)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pyarrow as pa
import pytest

from scalerec.config import Settings
from scalerec.data.importers import (
    Preset,
    import_file,
    preset_entry,
    preset_help,
    preset_names,
    register_preset,
    resolve_preset,
)
from scalerec.data.importers import presets as presets_module
from scalerec.data.schema import EVENT_SCHEMA
from scalerec.data.store import DataStore
from scalerec.errors import ConfigError, DataImportError, ValidationError
from scalerec.evaluation import splits as splits_module
from scalerec.evaluation.splits import SPLITS, Split, make_split, register_split, split_entry, split_names, split_temporal

T0 = datetime(2025, 1, 1, tzinfo=timezone.utc)


@pytest.fixture
def fresh_registries():
    """Registrations made by a test disappear after it (copies of the registry dicts)."""
    registries = (presets_module.PRESET_REGISTRY, splits_module.SPLIT_REGISTRY)
    split_names()  # built-ins first, as in a real run (they load on the first lookup)
    states = [r.snapshot() for r in registries]
    yield
    for registry, state in zip(registries, states):
        registry.restore(state)


def events_table(n_users: int = 6, days: int = 40) -> pa.Table:
    rows = [(f"u{u}", f"i{(u + d) % 5}", "purchase", T0 + timedelta(days=d)) for u in range(n_users) for d in range(0, days, 3)]
    n = len(rows)
    return pa.table({
        "user_id": pa.array([r[0] for r in rows], pa.string()),
        "item_id": pa.array([r[1] for r in rows], pa.string()),
        "event_type": pa.array([r[2] for r in rows], pa.string()),
        "timestamp": pa.array([r[3] for r in rows], pa.timestamp("us", tz="UTC")),
        "value": pa.array([1.0] * n, pa.float32()),
        "session_id": pa.nulls(n, pa.string()),
        "recommendation_id": pa.nulls(n, pa.string()),
        "context": pa.nulls(n, EVENT_SCHEMA.field("context").type),
    }, schema=EVENT_SCHEMA)


# ---- built-in plug-ins ---------------------------------------------------------------------------


def test_builtin_presets_are_registered_in_order_with_aliases() -> None:
    assert preset_names()[:2] == ("online-retail", "movielens")
    assert preset_entry("UCI_Online_Retail").name == "online-retail"
    assert preset_entry("ML").name == "movielens"
    assert resolve_preset("online_retail", "items", Path("x.csv")).aggregator is not None
    assert resolve_preset("movielens", "events", Path("ratings.dat.gz")).constants == {"event_type": "rating"}
    with pytest.raises(DataImportError, match="unknown preset 'nope'; use one of online-retail, movielens"):
        preset_entry("nope")


def test_preset_help_lists_the_registry() -> None:
    text = preset_help()
    assert text.startswith("online-retail (UCI Online Retail; its InvoiceDate, UK local time, is taken as UTC) or movielens (")
    assert "u.user: recognised by name or content)" in text


def test_builtin_splits_and_the_online_retail_properties() -> None:
    assert split_names()[:5] == ("auto", "temporal", "leave-last", "random", "users")
    assert "online-retail" in split_names() and set(SPLITS) == set(split_names())
    entry = split_entry("Online_Retail")
    assert entry.name == "online-retail"
    assert entry.uses_settings is False and entry.default_test_days == 30.0 and entry.options == ("test_days",)
    assert split_entry("leave_last").name == "leave-last" and split_entry("temporal").uses_settings
    with pytest.raises(ValidationError, match="unknown split 'nope'; choose one of auto, temporal, leave-last"):
        split_entry("nope")


def test_cli_start_imports_no_plugin() -> None:
    code = ("import sys, scalerec.cli; "
            "print(sorted(m for m in sys.modules if m.startswith(('scalerec.datasets', 'scalerec.data.importers'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"


# ---- registering new ones ------------------------------------------------------------------------


def test_register_split_conflicts_and_replacement(fresh_registries) -> None:
    register_split("my-protocol", split_temporal, aliases=("mine",))
    with pytest.raises(ConfigError, match="taken by split 'my-protocol'"):
        register_split("other", split_temporal, aliases=("MINE",))
    with pytest.raises(ConfigError, match="taken by split 'temporal'"):
        register_split("Temporal", split_temporal)
    register_split("my-protocol", split_temporal)  # again: replaces, and drops the old alias
    with pytest.raises(ValidationError):
        split_entry("mine")


def test_make_split_passes_settings_only_to_splits_that_read_them(fresh_registries) -> None:
    seen: dict[str, object] = {}

    def fixed(events, *, test_days: float = 9.0) -> Split:
        seen["fixed"] = test_days
        return "fixed split"  # type: ignore[return-value]

    def configured(events, *, settings: Settings, test_days: float = 9.0) -> Split:
        seen["configured"] = settings
        return "configured split"  # type: ignore[return-value]

    register_split("fixed-protocol", fixed, uses_settings=False, options=("test_days",), default_test_days=9.0)
    register_split("configured-protocol", configured, options=("test_days",))
    settings = Settings()
    assert make_split("fixed_protocol", events_table(), settings=settings, test_days=12.0) == "fixed split"
    assert make_split("configured-protocol", events_table(), settings=settings) == "configured split"
    assert seen == {"fixed": 12.0, "configured": settings}


def test_cli_split_options_come_from_the_registry(fresh_registries) -> None:
    from scalerec.cli.evaluate_cmd import split_options

    register_split("fixed-protocol", split_temporal, uses_settings=False, options=("test_days",), default_test_days=9.0)
    register_split("no-options", split_temporal, uses_settings=False)
    common = dict(leave_k=1, ratios="0.8,0.2", test_fraction=0.1, seed=0, default_test_days=30.0)
    assert split_options("fixed-protocol", test_days=None, **common) == {"test_days": 9.0}
    assert split_options("fixed-protocol", test_days=5.0, **common) == {"test_days": 5.0}
    assert split_options("online_retail", test_days=None, **common) == {"test_days": 30.0}
    assert split_options("no-options", test_days=5.0, **common) == {}
    assert split_options("leave_last", test_days=None, **common) == {"k": 1}


def test_help_placeholders_list_registered_names(fresh_registries) -> None:
    from scalerec.cli._registry_help import fill

    register_split("fixed-protocol", split_temporal, uses_settings=False, default_test_days=9.0)
    text = fill("{SPLITS}; {PROTOCOL_TEST_DAYS}")
    assert text.startswith("auto | temporal | leave-last | random | users | online-retail | fixed-protocol; ")
    assert text.endswith("30 for online-retail; 9 for fixed-protocol")
    assert fill("no placeholder") == "no placeholder"


def test_worker_rebuild_asks_the_registry_about_settings(fresh_registries) -> None:
    from scalerec.training.tuning import SplitSpec

    calls = []

    def fixed(events, *, test_days: float) -> Split:
        calls.append((events.height, test_days))
        return "rebuilt"  # type: ignore[return-value]

    register_split("fixed-protocol", fixed, uses_settings=False, options=("test_days",))
    table = events_table()

    class Ref:
        def get(self):
            import polars as pl

            return pl.from_arrow(table)

    spec = SplitSpec(key="k", name="fixed-protocol", options={"test_days": 7.0},
                     settings=Settings().model_dump(mode="json"), events_ref=Ref())
    assert spec.build() == "rebuilt" and calls == [(table.num_rows, 7.0)]


def test_a_registered_preset_imports_through_import_file(fresh_registries, tmp_path) -> None:
    shop = Preset("my-shop", "events", mapping={"user_id": "customer", "item_id": "sku", "timestamp": "when"},
                  constants={"event_type": "purchase"}, note="my shop's export")
    register_preset("my-shop", {"events": shop}, aliases=("myshop",), help="My Shop exports")
    assert "my-shop (My Shop exports)" in preset_help()
    path = tmp_path / "orders.csv"
    path.write_text("customer,sku,when\nc1,s1,2025-01-01T10:00:00Z\nc2,s2,2025-01-02T10:00:00Z\n")
    store = DataStore.open(Settings(data={"dir": tmp_path / "data"}))
    try:
        report = import_file(store, "events", path, preset="MyShop")
        assert (report.preset, report.imported, report.notes) == ("my-shop", 2, ["my shop's export"])
        assert report.counts_by_type == {"purchase": 2}
        with pytest.raises(DataImportError, match="--preset my-shop imports events, not items"):
            import_file(store, "items", path, preset="my-shop")
    finally:
        store.close()
    with pytest.raises(ConfigError, match="taken by preset 'online-retail'"):
        register_preset("retail2", {"events": shop}, aliases=("online_retail",))
