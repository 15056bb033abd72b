"""Bad import files (corpus_import.FILES): a clear DataImportError naming the file, nothing written."""

from __future__ import annotations

import pytest

from _reliability import record
from corpus_import import FILES, BadFile, write


def _params() -> list:
    return [pytest.param(f, id=f.id, marks=pytest.mark.xfail(strict=True, reason=f"needs {f.needs}: imported today"))
            if f.needs else pytest.param(f, id=f.id) for f in FILES]


def _counts(store) -> tuple[int, int, int]:  # noqa: ANN001
    n_events = sum(b.num_rows for b in store.events(columns=["user_id"]))
    return n_events, store.catalog.count_items(), store.catalog.count_users()


@pytest.fixture(scope="module")
def import_store(rel_base, tmp_path_factory):  # noqa: ANN001, ANN201
    import shutil

    from scalerec.config import Settings
    from scalerec.data.store import DataStore

    d = tmp_path_factory.mktemp("hostile-import") / "data"
    shutil.copytree(rel_base, d)
    store = DataStore.open(Settings(data={"dir": d}))
    yield store
    store.close()


@pytest.mark.parametrize("case", _params())
def test_bad_import_file(import_store, case: BadFile, tmp_path) -> None:  # noqa: ANN001
    from scalerec.data.importers import import_file
    from scalerec.errors import DataImportError, EmptyDataError

    path = write(case, tmp_path)
    before = _counts(import_store)
    expected = EmptyDataError if case.empty else DataImportError
    with pytest.raises(expected) as info:
        import_file(import_store, case.kind, path)
    assert case.name in str(info.value), str(info.value)[:500]
    assert len(str(info.value)) < 2000, "the message must be readable, not a dump of the file"
    assert _counts(import_store) == before, "a failed import wrote rows"


def test_store_still_works_after_the_bad_imports(import_store) -> None:  # noqa: ANN001
    record(bad_import_files=len(FILES))
    stats = import_store.stats()
    assert stats["n_events"] > 0
    import_store.compact(all_partitions=True)
