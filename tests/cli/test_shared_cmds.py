"""The shared set-up through the real CLI: a data directory on a PostgreSQL catalogue, and the
start-up refusals (a SQLite catalogue on a network filesystem, an unreachable catalogue server)."""

from __future__ import annotations

import json

import pytest

from scalerec.cli import main
from scalerec.data.catalog import sqlite as sqlite_backend


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


def test_init_and_stats_on_a_postgresql_catalogue(tmp_path, postgres_url, monkeypatch, capsys):
    monkeypatch.setenv("SCALEREC_DATA__CATALOG_URL", postgres_url)
    monkeypatch.chdir(tmp_path)  # init writes ./scalerec.toml
    code, out, err = run_main(["--data-dir", str(tmp_path / "shop"), "init"], capsys)
    assert code == 0, err
    assert not (tmp_path / "shop" / "catalog.db").exists(), "the catalogue lives on the server"
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\nmug,Tea mug\nlamp,Desk lamp\n")
    code, out, err = run_main(["--data-dir", str(tmp_path / "shop"), "import", "items", str(items)], capsys)
    assert code == 0, err
    code, out, err = run_main(["--data-dir", str(tmp_path / "shop"), "stats", "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["n_items_catalog"] == 2
    from scalerec.data.catalog import open_catalog

    with open_catalog(postgres_url) as catalog:  # what another machine reads
        assert catalog.get_item("lamp")["title"] == "Desk lamp"


def test_a_sqlite_catalogue_on_a_network_filesystem_is_refused(tmp_path, monkeypatch, capsys):
    # The mount table says the data directory is an NFS mount (the parsing and refusal are real).
    mounts = tmp_path / "mountinfo"
    mounts.write_text(
        "22 27 0:21 / / rw,relatime - ext4 /dev/sda1 rw\n"
        f"90 22 0:55 / {tmp_path} rw,relatime - nfs4 files:/export/shop rw,vers=4.2\n"
    )
    monkeypatch.setattr(sqlite_backend, "MOUNTINFO", mounts)
    code, out, err = run_main(["--data-dir", str(tmp_path / "shop"), "init"], capsys)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "network filesystem (nfs4)" in err and "catalog_url" in err and "postgresql://" in err
    assert not (tmp_path / "shop" / "catalog.db").exists()
    # a local disk is fine
    mounts.write_text(f"90 22 0:55 / {tmp_path} rw,relatime - ext4 /dev/sdb1 rw\n")
    code, out, err = run_main(["--data-dir", str(tmp_path / "shop"), "init"], capsys)
    assert code == 0, err


def test_an_unreachable_catalogue_server_fails_in_one_line_without_the_password(tmp_path, monkeypatch, capsys):
    from _servers import free_port

    monkeypatch.setenv("SCALEREC_DATA__CATALOG_URL", f"postgresql://shop:hunter2@127.0.0.1:{free_port()}/scalerec")
    code, out, err = run_main(["--data-dir", str(tmp_path / "shop"), "stats"], capsys)
    assert code != 0
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert "hunter2" not in err + out and "shop:***@127.0.0.1" in err
    assert "start the PostgreSQL server" in err and "catalog_url" in err
