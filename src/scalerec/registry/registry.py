"""Model versions: immutable directories with a manifest, their stages in SQLite, promotion, rollback, retention."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from scalerec.data.catalog import CatalogStore, StageTransaction, catalog_exists, open_catalog
from scalerec.data.eventlog import _fsync_dir, _fsync_many  # the one durable-write helper set
from scalerec.data.objectstore import ObjectStore
from scalerec.errors import ConflictError, ModelNotFoundError, StorageError, ValidationError
from scalerec.online.experiments import list_experiments, running_versions
from scalerec.registry.manifest import MANIFEST, Manifest, read_manifest

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings
    from scalerec.data.matrix import InteractionMatrix
    from scalerec.models.base import Recommender

STAGES = ("candidate", "production", "archived")
MANIFEST_FORMAT = 1
_VERSION_RE = re.compile(r"^v(\d{4,})-\d{8}T\d{6}Z$")
_TMP_PREFIX = ".tmp-"
_TRASH_PREFIX = ".trash-"

def _now() -> datetime:
    return datetime.now(timezone.utc)


def _iso(ts: datetime) -> str:
    return ts.astimezone(timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class ModelVersion:
    """One registered version as the registry sees it (a row of ``model_versions`` + its directory).

    ``error`` is None when the cheap health check passes (manifest readable, every file listed in
    it present with its recorded size); otherwise it says why the version cannot be served.
    """

    version: str
    stage: str
    created_at: str
    path: Path
    family: str | None = None
    metric: str | None = None
    score: float | None = None
    promoted_at: str | None = None
    archived_at: str | None = None
    forced: bool = False
    note: str | None = None
    error: str | None = None

    @property
    def healthy(self) -> bool:
        return self.error is None

    def manifest(self) -> dict[str, Any]:
        """The parsed manifest.json; StorageError when it is missing or unreadable."""
        return read_manifest(self.path)

    def typed_manifest(self) -> "Manifest":
        """The manifest as a :class:`~scalerec.registry.manifest.Manifest`; StorageError when unreadable."""
        return Manifest.from_dict(read_manifest(self.path))


@dataclass
class LoadedVersion:
    """A version ready to serve: its manifest, the fitted model, the training matrix and fallbacks.

    Arrays are memory-mapped read-only when loaded with ``mmap=True`` (pages shared by workers).
    ``popular`` / ``trending`` are float32 scores per item column of ``matrix``.
    """

    version: str
    manifest: dict[str, Any]
    model: "Recommender"
    matrix: "InteractionMatrix"
    popular: np.ndarray
    trending: np.ndarray
    path: Path = field(default_factory=Path)


def _check_files(path: Path, manifest: dict[str, Any]) -> str | None:
    """Why the files of a version do not match its manifest, or None when they all do."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST} lists no files"
    for rel, size in files.items():
        f = path / rel
        try:
            actual = f.stat().st_size
        except FileNotFoundError:
            return f"file {rel} is missing"
        except OSError as exc:
            return f"file {rel} is unreadable: {exc}"
        if actual != size:
            return f"file {rel} has {actual} bytes, the manifest says {size} (truncated or modified)"
    return None


@contextlib.contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold Ctrl-C during a short critical section (rename + row insert) and re-raise it after.

    Only possible in the main thread; elsewhere the section simply runs unprotected.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[Any] = []
    previous = signal.getsignal(signal.SIGINT)

    def _hold(signum: int, frame: Any) -> None:
        received.append(signum)

    signal.signal(signal.SIGINT, _hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if received:
            raise KeyboardInterrupt


def _write_readonly_files(root: Path) -> dict[str, int]:
    """Make every file under ``root`` read-only and return {relative path: size in bytes}."""
    sizes: dict[str, int] = {}
    for f in sorted(root.rglob("*")):
        if f.is_file():
            sizes[f.relative_to(root).as_posix()] = f.stat().st_size
            f.chmod(0o444)
    return sizes


def _fsync_tree(root: Path) -> None:
    """fsync every file, then every directory (deepest first), under ``root`` and ``root`` itself."""
    files = [f for f in root.rglob("*") if f.is_file()]
    dirs = sorted((d for d in root.rglob("*") if d.is_dir()), key=lambda d: -len(d.parts))
    _fsync_many(files)
    _fsync_many([*dirs, root], dirs=True)


class Registry:
    """Versioned model store under ``<data_dir>/models/`` with stages in ``<data_dir>/catalog.db``.

    A version is written whole into ``models/.tmp-<uuid>/`` and renamed to ``models/<version>/``,
    so readers only ever see complete versions; its files are then read-only. Exactly one version
    at most is ``production`` (enforced by a partial unique index); promoting archives the
    previous one, ``rollback`` moves production back to the version promoted before it.
    """

    def __init__(
        self, settings_or_data_dir: "Settings | str | os.PathLike[str]", *, keep_archived: int | None = None,
        read_only: bool = False,
    ):
        from scalerec.config import Settings

        if isinstance(settings_or_data_dir, Settings):
            settings = settings_or_data_dir
            self.data_dir = Path(settings.data.dir)
            url: str | Path = settings.data.resolved_catalog_url()
            default_keep = settings.training.keep_archived
        else:
            self.data_dir = Path(settings_or_data_dir)
            url = self.data_dir / "catalog.db"
            default_keep = 5
        self.keep_archived = default_keep if keep_archived is None else keep_archived
        self.root = self.data_dir / "models"
        # the shared store of several machines (models/ is then this machine's cache of it)
        self.store: ObjectStore | None = None
        store_url = settings.data.store_url if isinstance(settings_or_data_dir, Settings) else None
        if store_url:
            self.store = ObjectStore(store_url)
            self.store.check()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            # read_only (models list/show): no write lock, so it answers while another process writes
            self.read_only = read_only and catalog_exists(url)
            self.catalog: CatalogStore = open_catalog(url, create_dirs=True, read_only=self.read_only)
        except (OSError, StorageError) as exc:
            raise StorageError(f"cannot open the model registry in {self.data_dir}: {exc}") from exc
        self.db_path = getattr(self.catalog, "path", None)

    # ------------------------------------------------------------------ database
    def _row_to_version(self, row: dict[str, Any], *, check: bool = True) -> ModelVersion:
        path = self.root / row["version"]
        error = self.health(path) if check else None
        return ModelVersion(
            version=row["version"],
            stage=row["stage"],
            created_at=row["created_at"],
            path=path,
            family=row["family"],
            metric=row["metric"],
            score=row["score"],
            promoted_at=row["promoted_at"],
            archived_at=row["archived_at"],
            forced=bool(row["forced"]),
            note=row["note"],
            error=error,
        )

    # ------------------------------------------------------------------ health
    def health(self, version_or_path: str | Path) -> str | None:
        """Cheap check (no array reads): None when the version looks servable, else the reason."""
        path = version_or_path if isinstance(version_or_path, Path) else self.root / version_or_path
        if not path.is_dir():
            if self.store is not None and path.parent == self.root and self.store.committed(path.name):
                return None  # in the shared store: load() copies it into the local cache
            return f"directory {path} is missing" + (" here and in the object store" if self.store else "")
        try:
            manifest = read_manifest(path)
        except StorageError as exc:
            return exc.message
        return _check_files(path, manifest)

    # ------------------------------------------------------------------ naming
    def _next_version(self, db: StageTransaction, now: datetime) -> str:
        numbers = [0]
        for name in db.version_names():
            m = _VERSION_RE.match(name)
            if m:
                numbers.append(int(m.group(1)))
        for p in self.root.iterdir() if self.root.is_dir() else ():
            m = _VERSION_RE.match(p.name)
            if m:
                numbers.append(int(m.group(1)))
        return f"v{max(numbers) + 1:04d}-{now.strftime('%Y%m%dT%H%M%SZ')}"

    # ------------------------------------------------------------------ writing
    def register(
        self,
        *,
        model: "Recommender",
        matrix: "InteractionMatrix",
        manifest: "Manifest | dict[str, Any]",
        popular: np.ndarray,
        trending: np.ndarray,
        stage: str = "candidate",
        progress: Callable[[int, int], None] | None = None,
        write_extra: Callable[[Path], None] | None = None,
    ) -> ModelVersion:
        """Write a new immutable version and record it with ``stage`` (default candidate).

        ``manifest`` is the caller's content (a Manifest or its dict: model, data snapshot, metrics, ...); the registry
        adds ``version``, ``created_at``, ``format`` and ``files`` (path -> size, the health check).
        ``popular`` / ``trending`` are float32 [matrix.n_items]. Nothing is left behind if this is
        interrupted (Ctrl-C included) before the version is complete. Use :meth:`promote` to make
        it production (never pass stage='production' here). ``write_extra(dir)`` writes more files of
        the version (the ranking stage's bundle) into it before it is sealed.
        """
        from scalerec.data.matrix import save_matrix

        if not isinstance(manifest, dict):
            manifest = manifest.to_dict()
        if stage not in ("candidate", "archived"):
            raise ValidationError(f"register() stage must be 'candidate' or 'archived', got {stage!r}; use promote()")
        popular = np.asarray(popular, dtype=np.float32)
        trending = np.asarray(trending, dtype=np.float32)
        for name, arr in (("popular", popular), ("trending", trending)):
            if arr.shape != (matrix.n_items,):
                raise ValidationError(f"{name} has shape {arr.shape}; expected ({matrix.n_items},) one score per item")
        tmp = self.root / f"{_TMP_PREFIX}{uuid.uuid4().hex}"
        steps = 4
        try:
            tmp.mkdir(parents=True)
            model.save(tmp / "model")
            if progress:
                progress(1, steps)
            save_matrix(matrix, tmp / "matrix")
            if progress:
                progress(2, steps)
            np.save(tmp / "popular.npy", popular, allow_pickle=False)
            np.save(tmp / "trending.npy", trending, allow_pickle=False)
            if write_extra is not None:
                write_extra(tmp)
            if progress:
                progress(3, steps)
            files = _write_readonly_files(tmp)
            created = _now()
            with _sigint_deferred(), self.catalog.stage_transaction() as db:
                version = self._next_version(db, created)
                body = {
                    "format": MANIFEST_FORMAT,
                    "version": version,
                    "created_at": _iso(created),
                    **{k: v for k, v in manifest.items() if k not in ("version", "created_at", "format", "files")},
                    "files": files,
                }
                (tmp / MANIFEST).write_text(json.dumps(body, indent=2, sort_keys=False, default=_json_default))
                (tmp / MANIFEST).chmod(0o444)
                _fsync_tree(tmp)  # a version renamed in must survive power loss whole
                model_info = body.get("model") or {}
                metric = body.get("primary_metric")
                score = _score_of(body)
                db.insert_version({"version": version, "stage": stage, "created_at": body["created_at"],
                                   "family": model_info.get("family"), "metric": metric, "score": score})
                if self.store is not None:  # committed in the store before its row is visible anywhere
                    self.store.publish(tmp, version)
                # Rename last, inside the transaction: if it fails the row is rolled back.
                os.rename(tmp, self.root / version)
                _fsync_dir(self.root)  # the rename itself
            if progress:
                progress(4, steps)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return self.get(version)

    # ------------------------------------------------------------------ reading
    def list(self, stage: str | None = None, *, check: bool = True) -> list[ModelVersion]:
        """All versions (oldest first), optionally of one stage; each carries its health ``error``.

        Complete version directories without a row (written but not recorded, e.g. the process was
        killed between the two) are adopted as candidates.
        """
        if stage is not None and stage not in STAGES:
            raise ValidationError(f"unknown stage {stage!r}; choose one of {', '.join(STAGES)}")
        self._adopt_orphans()
        rows = self.catalog.model_versions(stage)
        return [self._row_to_version(r, check=check) for r in rows]

    def _adopt_orphans(self) -> None:
        if not self.root.is_dir() or self.read_only:
            return
        known = {r["version"] for r in self.catalog.model_versions()}
        for p in sorted(self.root.iterdir()):
            if p.name in known or not _VERSION_RE.match(p.name) or not p.is_dir():
                continue
            if self.store is not None and not self.store.committed(p.name):
                _rmtree_readonly(p)  # a cached copy of a version another machine deleted
                continue
            try:
                body = read_manifest(p)
            except StorageError:
                continue
            self.catalog.adopt_model_version(
                {"version": p.name, "created_at": body.get("created_at") or _iso(_now()),
                 "family": (body.get("model") or {}).get("family"), "metric": body.get("primary_metric"),
                 "score": _score_of(body), "note": "adopted: directory found without a registry row"}
            )

    def get(self, version: str) -> ModelVersion:
        """One version by name; ModelNotFoundError (404) when there is none."""
        row = self.catalog.model_version(version)
        if row is None:
            self._adopt_orphans()
            row = self.catalog.model_version(version)
        if row is None:
            raise ModelNotFoundError(
                f"no model version {version!r}; list them with `scalerec models list`",
                details={"version": version},
            )
        return self._row_to_version(row)

    def production(self) -> ModelVersion | None:
        """The production version, or None before the first promotion."""
        row = self.catalog.production_version()
        return None if row is None else self._row_to_version(row)

    def load(self, version: str | None = None, *, mmap: bool = True) -> LoadedVersion:
        """Load a version (default: production) for serving.

        Raises StorageError when any part fails to load (missing/truncated files, unreadable
        arrays, a model of an unknown family): such a version is never served.
        ModelNotFoundError when there is no such version (or no production yet).
        """
        from scalerec.data.matrix import load_matrix
        from scalerec.models.base import Recommender

        if version is None:
            prod = self.production()
            if prod is None:
                raise ModelNotFoundError("no production model yet: train one with `scalerec train`")
            mv = prod
        else:
            mv = self.get(version)
        if mv.error is not None:
            raise StorageError(f"model version {mv.version} cannot be loaded: {mv.error}")
        if self.store is not None and not mv.path.is_dir():
            self.store.fetch(mv.version, mv.path)  # the local cache that serving memory-maps
            error = self.health(mv.path)
            if error is not None:
                raise StorageError(f"model version {mv.version} cannot be loaded: {error}")
        try:
            manifest = read_manifest(mv.path)
            model = Recommender.load(mv.path / "model", mmap=mmap)
            matrix = load_matrix(mv.path / "matrix", mmap=mmap)
            mode = "r" if mmap else None
            popular = np.load(mv.path / "popular.npy", mmap_mode=mode, allow_pickle=False)
            trending = np.load(mv.path / "trending.npy", mmap_mode=mode, allow_pickle=False)
        except StorageError as exc:
            raise StorageError(f"model version {mv.version} cannot be loaded: {exc.message}") from exc
        except Exception as exc:  # a corrupt .npy raises ValueError/OSError/EOFError/...
            raise StorageError(f"model version {mv.version} cannot be loaded: {type(exc).__name__}: {exc}") from exc
        n_items = getattr(model, "n_items_", None)
        if n_items != matrix.n_items or popular.shape != (matrix.n_items,) or trending.shape != (matrix.n_items,):
            raise StorageError(
                f"model version {mv.version} cannot be loaded: model has {n_items} items, matrix "
                f"{matrix.n_items}, popular {popular.shape}, trending {trending.shape} (inconsistent files)"
            )
        return LoadedVersion(mv.version, manifest, model, matrix, popular, trending, mv.path)

    # ------------------------------------------------------------------ stages
    def promote(self, version: str, *, force: bool = False, note: str | None = None) -> ModelVersion:
        """Make ``version`` production; the previous production becomes archived.

        A version whose manifest records that the promotion gate refused it needs ``force=True``
        (recorded as forced). A version that fails to load is never promoted (StorageError).
        Older candidates are archived (superseded) and retention prunes old archived versions.
        """
        mv = self.get(version)
        if mv.stage == "production":
            return mv
        self.load(version)  # raises StorageError: a broken version must never reach production
        decision = (read_manifest(mv.path).get("promotion") or {})
        refused = decision.get("gate_passed") is False
        if refused and not force:
            raise ConflictError(
                f"version {version} was refused by the promotion gate ({decision.get('reason')}); "
                "pass --force to promote it anyway",
                details=decision,
            )
        now = _iso(_now())
        with self.catalog.stage_transaction() as db:
            db.promote(version, now, forced=bool(force and refused), note=note)
        self.prune()
        return self.get(version)

    def rollback(self) -> ModelVersion:
        """Move production back to the version promoted before the current one; returns it.

        The current production becomes archived. Versions that fail to load are skipped.
        ConflictError when there is no production or no earlier healthy version to go back to.
        """
        current = self.production()
        if current is None:
            raise ConflictError("nothing to roll back: there is no production model")
        rows = self.catalog.promoted_before(current.promoted_at or "")
        for row in rows:
            target = self._row_to_version(row)
            if target.error is not None:
                continue
            try:
                self.load(target.version)
            except StorageError:
                continue
            now = _iso(_now())
            with self.catalog.stage_transaction() as db:
                db.restore(current.version, target.version, now)  # target keeps its promoted_at
            return self.get(target.version)
        raise ConflictError(
            f"cannot roll back from {current.version}: no earlier production version is still available "
            "(retention may have deleted it); promote a version explicitly with `scalerec models promote`"
        )

    def delete(self, version: str) -> None:
        """Delete a non-production version (its row and directory). ConflictError for production."""
        mv = self.get(version)
        if mv.stage == "production":
            raise ConflictError(
                f"version {version} is in production; promote another version or roll back before deleting it"
            )
        used = sorted(e.name for e in list_experiments(self.catalog, "running") if version in {v.version for v in e.variants})
        if used:
            raise ConflictError(f"version {version} is served by the running experiment(s) {', '.join(used)}; "
                                "stop them first (`scalerec experiments stop NAME`)")
        self._remove(mv.version)

    def _remove(self, version: str) -> None:
        # Rename first so a half-deleted directory never looks like a version.
        path = self.root / version
        trash = self.root / f"{_TRASH_PREFIX}{uuid.uuid4().hex}"
        with self.catalog.stage_transaction() as db:
            db.delete_version(version)
            if path.exists():
                os.rename(path, trash)
            if self.store is not None:
                self.store.delete(version)
        _rmtree_readonly(trash)

    def prune(self, keep_archived: int | None = None) -> list[str]:
        """Delete archived versions beyond the newest ``keep_archived`` (never one that a running
        experiment serves: it is kept until the experiment stops); returns the deleted names.

        Also clears leftovers of interrupted writes/deletes (``.tmp-*`` / ``.trash-*`` directories)
        that are older than an hour (a running training may own a fresh one).
        """
        keep = self.keep_archived if keep_archived is None else keep_archived
        if keep < 0:
            raise ValidationError(f"keep_archived must be >= 0, got {keep}")
        archived = self.list("archived", check=False)
        busy = running_versions(self.catalog)  # a running experiment still serves them
        doomed = [v.version for v in archived[: max(0, len(archived) - keep)] if v.version not in busy]
        for name in doomed:
            self._remove(name)
        cutoff = _now().timestamp() - 3600
        for p in self.root.iterdir():
            if p.name.startswith((_TMP_PREFIX, _TRASH_PREFIX, ".fetch-")) and p.stat().st_mtime < cutoff:
                _rmtree_readonly(p)
        return doomed


def _rmtree_readonly(path: Path) -> None:
    if path.exists():
        shutil.rmtree(path, ignore_errors=True)


def _score_of(body: dict[str, Any]) -> float | None:
    metric = body.get("primary_metric")
    for split_metrics in (body.get("metrics") or {}).values():
        if isinstance(split_metrics, dict) and metric in split_metrics:
            try:
                return float(split_metrics[metric])
            except (TypeError, ValueError):
                return None
    return None


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (Path,)):
        return str(value)
    if isinstance(value, datetime):
        return _iso(value)
    raise TypeError(f"cannot store {type(value).__name__} in a manifest")
