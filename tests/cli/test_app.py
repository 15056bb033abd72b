"""The CLI's global options: a directory that is not a store is refused by every reading command
(and left uncreated), `init` records the directory, -d/-c after the subcommand, --version."""

from __future__ import annotations

import pytest

from scalerec import __version__
from scalerec.cli import hoist_global_options, main


def run_main(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return exit_info.value.code, out.out, out.err


@pytest.mark.parametrize(
    "command",
    [["stats"], ["export", "events", "out.csv"], ["models", "list"], ["models", "show", "v1"], ["tune", "report"],
     ["evaluate"], ["train"], ["compact"], ["users", "deletion-report", "ann"], ["serve", "--insecure-dev"]],
)
def test_reading_commands_refuse_a_directory_that_is_not_a_store(tmp_path, monkeypatch, capsys, command):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "no" / "such" / "dir"
    code, out, err = run_main(["-d", str(missing), *command], capsys)
    assert code == 2
    assert "is not a scalerec data directory" in err and "init" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "no").exists()  # nothing was created
    assert not (tmp_path / "out.csv").exists()


def test_an_empty_existing_directory_is_not_a_store_either(tmp_path, capsys):
    code, _, err = run_main(["-d", str(tmp_path), "stats"], capsys)
    assert code == 2 and "is not a scalerec data directory" in err
    assert list(tmp_path.iterdir()) == []


def test_init_records_the_directory_and_later_commands_find_it(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCALEREC_CONFIG", raising=False)
    monkeypatch.delenv("SCALEREC_DATA__DIR", raising=False)
    code, out, _ = run_main(["--data-dir", "shop", "init"], capsys)
    assert code == 0 and "scalerec.toml" in out
    assert 'dir = "shop"' in (tmp_path / "scalerec.toml").read_text()
    code, out, err = run_main(["stats", "--json"], capsys)  # no --data-dir: found through ./scalerec.toml
    assert code == 0, err
    assert '"data_dir"' in out and "shop" in out


def test_init_keeps_an_existing_config_and_says_it_names_another_directory(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCALEREC_CONFIG", raising=False)
    (tmp_path / "scalerec.toml").write_text('[data]\ndir = "elsewhere"\n')
    code, out, _ = run_main(["-d", "shop", "init"], capsys)
    assert code == 0 and "names another [data] dir" in out
    assert (tmp_path / "scalerec.toml").read_text() == '[data]\ndir = "elsewhere"\n'


def test_init_no_config_writes_nothing_beside_the_store(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCALEREC_CONFIG", raising=False)
    code, _, _ = run_main(["init", "-d", "shop", "--no-config"], capsys)
    assert code == 0 and sorted(p.name for p in tmp_path.iterdir()) == ["shop"]


def test_global_options_after_the_subcommand(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    code, _, err = run_main(["init", "--no-config", "-d", "a"], capsys)
    assert code == 0, err and (tmp_path / "a" / "catalog.db").is_file()
    code, out, err = run_main(["stats", "--json", "--data-dir", "a"], capsys)
    assert code == 0, err
    code, out, err = run_main(["models", "list", "--data-dir=a"], capsys)
    assert code == 0 and "no model versions yet" in out


def test_hoisting_stops_at_double_dash_and_keeps_other_options():
    assert hoist_global_options(["import", "events", "f.csv", "-d", "x", "--map", "a=b"]) == [
        "-d", "x", "import", "events", "f.csv", "--map", "a=b"]
    assert hoist_global_options(["stats", "--", "-d", "x"]) == ["stats", "--", "-d", "x"]
    assert hoist_global_options(["stats", "-c", "s.toml"]) == ["-c", "s.toml", "stats"]


def test_version(capsys):
    code, out, _ = run_main(["--version"], capsys)
    assert code == 0 and out.strip() == f"scalerec {__version__}"
