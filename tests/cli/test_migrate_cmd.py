"""`scalerec migrate` through the real CLI: an embedded directory to a real PostgreSQL server and a
store path, the verification table printed, a non-empty target refused in one line."""

from __future__ import annotations

import json
import shutil

from scalerec.data.catalog import open_catalog
from test_migrate import embedded_template  # noqa: F401  (the shared embedded shop)
from test_shared_cmds import run_main


def test_migrate_prints_counts_and_checksums_and_refuses_a_non_empty_target(embedded_template, tmp_path, postgres_url,  # noqa: F811
                                                                            capsys, monkeypatch):
    shop = tmp_path / "shop"
    shutil.copytree(embedded_template, shop)
    monkeypatch.chdir(tmp_path)
    store = tmp_path / "models-store"
    code, out, err = run_main(["-d", str(shop), "migrate", "--to-catalog", postgres_url, "--to-store", str(store)],
                              capsys)
    assert code == 0, err
    assert "Migrated and verified" in out and "pending_events" in out and "DIFFERS" not in out
    assert f'catalog_url = "{postgres_url}"' in out
    code, out, err = run_main(["-d", str(shop), "migrate", "--to-catalog", postgres_url, "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["ok"] and report["mode"] == "replica"
    items = next(t for t in report["tables"] if t["name"] == "items")
    assert items["source_rows"] == items["target_rows"] == 52 and items["checksum"] == items["target_checksum"]

    # another shop's catalogue: refused, one line, nothing written to it
    other = tmp_path / "other-shop"
    shutil.copytree(embedded_template, other)
    with open_catalog(postgres_url) as target:
        before = target.count_items()
    code, out, err = run_main(["-d", str(other), "migrate", "--to-catalog", postgres_url], capsys)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "not empty" in err and "--force" in err, err
    with open_catalog(postgres_url) as target:
        assert target.count_items() == before
