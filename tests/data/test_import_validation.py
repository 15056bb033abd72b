"""Imports go through the same checks as HTTP: event times, the id policy, encodings, long lines,
and a fingerprint that refuses importing the same file twice (also after a crash in the commit)."""

from __future__ import annotations

import json

import pytest

from scalerec.config import Settings
from scalerec.data.importers import import_file
from scalerec.data.store import DataStore
from scalerec.errors import DataImportError

HEADER = "user_id,item_id,event_type,timestamp,value\n"


@pytest.fixture
def store(tmp_path):
    s = DataStore.open(Settings(data={"dir": tmp_path / "data"}))
    yield s
    s.close()


def _csv(tmp_path, rows: list[str], name: str = "e.csv"):
    f = tmp_path / name
    f.write_text(HEADER + "".join(r + "\n" for r in rows), encoding="utf-8")
    return f


@pytest.mark.parametrize("row, why", [
    ("u,i,view,NaN,1", "not a date-time"),
    ("u,i,view,inf,1", "not a date-time"),
    ("u,i,view,1e20,1", "not a date-time"),
    ("u,i,view,100000000000000000000,1", "in the future"),
    ("u,i,view,-1000000000000,1", "before 1970"),
    ("u,i,view,true,1", "not a date-time"),
    ("u,i,view,9999-12-31T23:59:59Z,1", "max_clock_skew_seconds"),
    ("u,i,rating,2021-01-01,NaN", "not a finite number"),
    ("u,i,rating,2021-01-01,-inf", "not a finite number"),
    ("u,a/b,view,2021-01-01,1", "contains '/'"),
    (" u,i,view,2021-01-01,1", "leading or trailing whitespace"),
    ("u," + "x" * 5000 + ",view,2021-01-01,1", "longer than 256"),
])
def test_bad_values_fail_the_import_naming_the_line(store, tmp_path, row, why) -> None:
    f = _csv(tmp_path, ["u,i,view,2021-01-01,1", row])
    with pytest.raises(DataImportError, match=why) as info:
        import_file(store, "events", f)
    assert "line 3" in info.value.message
    assert store.log.count() == 0
    report = import_file(store, "events", f, on_error="skip")  # the valid rows still import
    assert (report.imported, report.rejected) == (1, 1)
    store.compact()
    assert store.stats()["n_events"] == 1


def test_nul_bytes_in_ids_are_rejected(store, tmp_path) -> None:
    f = tmp_path / "nul.csv"
    f.write_bytes(HEADER.encode() + b"u\x00x,i,view,2021-01-01,1\n")
    with pytest.raises(DataImportError, match="control character"):
        import_file(store, "events", f)


def test_clock_skew_is_a_setting(tmp_path) -> None:
    import datetime as dt

    soon = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    f = _csv(tmp_path, [f"u,i,view,{soon},1"])
    strict = DataStore.open(Settings(data={"dir": tmp_path / "a"}))
    with pytest.raises(DataImportError, match="in the future"):
        import_file(strict, "events", f)
    loose = DataStore.open(Settings(data={"dir": tmp_path / "b", "max_clock_skew_seconds": 3600}))
    assert import_file(loose, "events", f).imported == 1


def test_a_file_mixing_utf8_and_latin1_is_refused_with_line_numbers(store, tmp_path) -> None:
    f = tmp_path / "mixed.csv"
    f.write_bytes(HEADER.encode() + "bmü0,i,view,2021-01-01,1\n".encode() + "bmü1,i,view,2021-01-01,1\n".encode("latin-1")
                  + b"u2,i,view,2021-01-01,1\n" + "bmü3,i,view,2021-01-01,1\n".encode("latin-1"))
    with pytest.raises(DataImportError, match=r"line\(s\) 3, 5 are not UTF-8") as info:
        import_file(store, "events", f)
    assert info.value.details == {"non_utf8_lines": [3, 5]}
    assert store.log.count() == 0
    # all latin-1 is still read as latin-1; an explicit --encoding is taken as it is
    latin = tmp_path / "latin.csv"
    latin.write_bytes(HEADER.encode() + "bmü1,i,view,2021-01-01,1\n".encode("latin-1"))
    import_file(store, "events", latin)
    assert store.log.read().column("user_id").to_pylist() == ["bmü1"]
    report = import_file(store, "events", f, encoding="latin-1")
    assert report.imported == 4


def test_latin1_guess_refuses_utf8_rows_after_the_sample(store, tmp_path, monkeypatch) -> None:
    from scalerec.data.importers import sources

    monkeypatch.setattr(sources, "SNIFF_BYTES", 64)
    f = tmp_path / "late.csv"
    f.write_bytes(HEADER.encode() + "bmü1,i,view,2021-01-01,1\n".encode("latin-1") + b"u,i,view,2021-01-01,1\n" * 5
                  + "bmü0,i,view,2021-01-01,1\n".encode())
    with pytest.raises(DataImportError, match=r"line\(s\) 8 look like UTF-8"):
        import_file(store, "events", f)


def test_a_huge_line_without_newline_is_a_clear_error(store, tmp_path) -> None:
    f = tmp_path / "one-line.csv"
    f.write_bytes(b"a" * (10 << 20))
    with pytest.raises(DataImportError, match="longer than 1 MiB"):
        import_file(store, "events", f)


def test_importing_the_same_file_twice_is_refused_unless_allowed(store, tmp_path) -> None:
    f = _csv(tmp_path, ["u,i,view,2021-01-01,1", "u,j,view,2021-01-02,1"])
    assert import_file(store, "events", f).imported == 2
    with pytest.raises(DataImportError, match="already imported with the same options") as info:
        import_file(store, "events", f)
    assert "--allow-duplicate" in info.value.message and "\n" not in info.value.message
    assert store.log.count() == 2
    # other options are another import; --allow-duplicate imports anyway
    assert import_file(store, "events", f, constants={"event_type": "purchase"}).imported == 2
    assert import_file(store, "events", f, allow_duplicate=True).imported == 2
    assert store.log.count() == 6
    # items are upserts: importing them twice is harmless and allowed
    items = tmp_path / "items.csv"
    items.write_text("item_id,title\ni,I\n")
    import_file(store, "items", items)
    import_file(store, "items", items)


def test_an_import_killed_in_its_commit_window_is_not_imported_again(tmp_path, monkeypatch) -> None:
    from scalerec.data import eventlog

    settings = Settings(data={"dir": tmp_path / "data"})
    store = DataStore.open(settings)
    f = _csv(tmp_path, ["u,i,view,2021-01-01,1", "u,j,view,2021-01-02,1"])

    class Killed(BaseException):
        pass

    def die(self, tmp_dir, moves):  # the process dies right after the commit journal is durable
        journal = json.loads((tmp_dir / eventlog.TXN_FILE).read_text())
        (tmp_dir / eventlog.TXN_FILE).write_text(json.dumps({**journal, "pid": 2**22 + 12345}))
        raise Killed

    with monkeypatch.context() as m:
        m.setattr(eventlog.EventLog, "_apply_moves", die)
        m.setattr(eventlog.EventLog, "_undo_moves", lambda *a: None)
        m.setattr(eventlog.LogTransaction, "_discard", lambda self: None)
        m.setattr(eventlog.LogTransaction, "_rollback", lambda self: None)
        with pytest.raises(Killed):
            import_file(store, "events", f)
    store.close()
    reopened = DataStore.open(settings)  # recovery rolls the committed transaction forward
    assert reopened.log.count() == 2
    with pytest.raises(DataImportError, match="already imported"):
        import_file(reopened, "events", f)
    assert reopened.log.count() == 2


def test_a_fingerprint_without_its_rows_does_not_block(store, tmp_path) -> None:
    # recorded, but the transaction never committed (crash before the journal): importing works
    from scalerec.data.importers.run import Plan

    f = _csv(tmp_path, ["u,i,view,2021-01-01,1"])
    plan = Plan.make("events", f, None, None, None, None, None, None)
    store.catalog.record_import_fingerprint(plan.fingerprint(f), "never-committed", str(f), 1, "2025-01-01T00:00:00")
    assert import_file(store, "events", f).imported == 1


def test_cli_refuses_a_repeat_in_one_line_and_allow_duplicate_imports(tmp_path, capsys) -> None:
    from scalerec.cli import main

    f = _csv(tmp_path, ["u,i,view,2021-01-01,1"])

    def run(*extra: str) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exit_info:
            main(["--data-dir", str(tmp_path / "d"), "import", "events", str(f), *extra])
            raise SystemExit(0)
        return int(exit_info.value.code or 0), capsys.readouterr().err

    assert run()[0] == 0
    code, err = run()
    assert code == 2 and err.count("\n") == 1 and "--allow-duplicate" in err
    assert run("--allow-duplicate")[0] == 0
