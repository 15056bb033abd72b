"""Sharded batch inference: top-n for every user of a model version, one Parquet file per user shard.

Runs on any Executor: in-process, a local process pool, or Ray (the model goes through
``Executor.share`` once; each task scores one contiguous range of users and writes
``part-<shard>.parquet``).
``out_dir`` is a path or an object-store URL (``s3://bucket/prefix?endpoint_override=...``, any
URL :class:`~scalerec.data.objectstore.ObjectStore` takes). On a disk a file is written under a
temporary name and renamed; on an object store each file is one object, visible only once its
upload completed (PutObject, or CompleteMultipartUpload for a big one). Either way a shard file is
complete or absent, and ``_SUCCESS`` is written last; a rerun with the same settings skips the
finished shards (resume after Ctrl-C or a lost node). On a multi-node cluster ``out_dir`` must be
storage every node can write (an object store is).

Output schema, one row per user: ``user_id string, item_ids list<string>, scores list<float32>``
(best first; shorter than n when fewer items are eligible).
"""

from __future__ import annotations

import json
import math
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, wait
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from scalerec.data.deletion import masked_users, version_data_time_us
from scalerec.data.objectstore import ObjectStore
from scalerec.errors import ConflictError, StorageError, ValidationError
from scalerec.execution import Executor, LocalExecutor, get_executor

if TYPE_CHECKING:  # pragma: no cover
    import scipy.sparse as sp

    from scalerec.config import Settings
    from scalerec.models.base import Recommender

MANIFEST = "_batch.json"
SUCCESS = "_SUCCESS"
BATCH_SCHEMA = pa.schema(
    [
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("item_ids", pa.list_(pa.string()), nullable=False),
        pa.field("scores", pa.list_(pa.float32()), nullable=False),
    ]
)
#: at most this many users per shard by default (bounds a shard file's size)
MAX_SHARD_USERS = 100_000


class _Output:
    """The batch output directory on a local disk or an object store (one interface for both)."""

    def __init__(self, url: str | os.PathLike[str]) -> None:
        store = ObjectStore(str(url))  # the one parser of store URLs (credentials from AWS_*)
        self.store, self.fs, self.root, self.local = store, store.fs, store.root, store.local
        self.shown = self.root if self.local else store.shown
        self.url = self.root if self.local else store.url  # what worker tasks reopen

    def __str__(self) -> str:
        return self.shown

    def _p(self, name: str) -> str:
        return f"{self.root}/{name}"

    def failed(self, exc: BaseException, what: str) -> StorageError:
        return self.store._failed(exc, what)

    def entries(self) -> list[tuple[str, bool]]:
        """(name, is_file) of what is directly under the root ([] when it does not exist)."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.root, allow_not_found=True))
        return [(i.path.rsplit("/", 1)[-1], i.type == pafs.FileType.File) for i in infos]

    def is_file(self, name: str) -> bool:
        return self.fs.get_file_info(self._p(name)).type == pafs.FileType.File

    def read_text(self, name: str) -> str:
        with self.fs.open_input_stream(self._p(name)) as f:
            return f.read().decode()

    def _publish(self, name: str, write: Callable[[str], None]) -> None:
        if not self.local:
            write(self._p(name))  # an object appears whole when its upload completes
            return
        tmp = self._p(f".{name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            write(tmp)
            os.replace(tmp, self._p(name))  # a retried task (worker died after writing) just replaces it
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def write_text(self, name: str, text: str) -> None:
        def write(path: str) -> None:
            with self.fs.open_output_stream(path) as f:
                f.write(text.encode())

        self._publish(name, write)

    def write_table(self, name: str, table: pa.Table) -> None:
        self._publish(name, lambda path: pq.write_table(table, path, filesystem=self.fs, compression="zstd"))

    def delete(self, name: str) -> None:
        if self.is_file(name):
            self.fs.delete_file(self._p(name))

    def mkdir(self) -> None:
        self.fs.create_dir(self.root, recursive=True)


def part_name(shard: int) -> str:
    return f"part-{shard:05d}.parquet"


@dataclass(frozen=True)
class Scorer:
    """What a shard task needs: the model, the users' seen items and the id vocabularies."""

    model: "Recommender"
    seen: "sp.csr_matrix"
    user_ids: np.ndarray
    item_ids: np.ndarray
    version: str
    #: rows of deleted users this version must not list (scalerec.data.deletion), sorted
    masked_rows: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int64))


@dataclass(frozen=True)
class SourceSpec:
    """How a worker process gets the Scorer: from the registry on disk (memory-mapped, cached)."""

    data_dir: str
    version: str


_CACHE: dict[tuple[str, str], Scorer] = {}


def load_scorer(data_dir: str | os.PathLike[str], version: str | None = None) -> Scorer:
    """The Scorer of a registered version (default: production), arrays memory-mapped."""
    from scalerec.registry import Registry

    registry = Registry(Path(data_dir))
    lv = registry.load(version, mmap=True)
    user_ids = lv.matrix.user_ids
    tombstones = [(user_id, deleted_at) for _, user_id, deleted_at in registry.catalog.user_tombstones()]
    masked = masked_users(np.asarray(user_ids), tombstones, version_data_time_us(lv.manifest))
    rows = np.sort(np.searchsorted(np.asarray(user_ids), np.array(sorted(masked), dtype=str))).astype(np.int64)
    return Scorer(lv.model, lv.matrix.matrix, user_ids, lv.matrix.item_ids, lv.version, rows)


def _resolve(source: Scorer | SourceSpec) -> Scorer:
    if isinstance(source, SourceSpec):
        key = (source.data_dir, source.version)
        if key not in _CACHE:
            _CACHE.clear()  # one batch at a time per worker
            _CACHE[key] = load_scorer(source.data_dir, source.version)
        return _CACHE[key]
    return source  # the Scorer itself, or what Executor.share turned back into it


def recommend_shard(scorer: Scorer, start: int, stop: int, n: int, exclude_seen: bool) -> pa.Table:
    """Top-``n`` of users ``[start, stop)`` as a table of BATCH_SCHEMA."""
    users = np.arange(start, stop, dtype=np.int64)
    exclude = scorer.seen[start:stop] if exclude_seen else None
    ids, scores = scorer.model.recommend(users, n, exclude=exclude)
    valid = ids >= 0
    counts = valid.sum(axis=1)
    offsets = np.zeros(len(users) + 1, dtype=np.int32)
    np.cumsum(counts, out=offsets[1:])
    # Arrow's take on the id vocabulary is much faster than building a string per cell in numpy.
    items = _arrow_ids(scorer.item_ids).take(pa.array(ids[valid]))
    table = pa.Table.from_arrays(
        [
            pa.array(np.asarray(scorer.user_ids[start:stop]).astype(object), type=pa.string()),
            pa.ListArray.from_arrays(pa.array(offsets), items),
            pa.ListArray.from_arrays(pa.array(offsets), pa.array(scores[valid], type=pa.float32())),
        ],
        schema=BATCH_SCHEMA,
    )
    if len(scorer.masked_rows):  # a deleted user gets no list at all
        hidden = scorer.masked_rows[(scorer.masked_rows >= start) & (scorer.masked_rows < stop)] - start
        if len(hidden):
            keep = np.ones(len(users), dtype=bool)
            keep[hidden] = False
            table = table.filter(pa.array(keep))
    return table


_ARROW_IDS: dict[int, tuple[np.ndarray, pa.Array]] = {}


def _arrow_ids(ids: np.ndarray) -> pa.Array:
    """The id vocabulary as an Arrow string array, converted once per array (per worker)."""
    hit = _ARROW_IDS.get(id(ids))
    if hit is None or hit[0] is not ids:
        _ARROW_IDS.clear()
        hit = _ARROW_IDS[id(ids)] = (ids, pa.array(np.asarray(ids).astype(object), type=pa.string()))
    return hit[1]


def write_shard(source: Scorer | SourceSpec, shard: int, start: int, stop: int, n: int, exclude_seen: bool, out_dir: str) -> int:
    """Task body: score one shard and publish ``part-<shard>.parquet`` atomically; returns its users."""
    table = recommend_shard(_resolve(source), start, stop, n, exclude_seen)
    out = _Output(out_dir)
    try:
        out.write_table(part_name(shard), table)
    except (OSError, pa.ArrowException) as exc:
        raise out.failed(exc, f"cannot write shard {shard}") from None
    return table.num_rows


@dataclass
class BatchResult:
    """What a batch run did; ``users_per_s``: users scored and written per second of this run's scoring."""

    out_dir: str
    version: str
    n: int
    n_users: int
    shard_users: int
    shards_total: int
    shards_done: int
    shards_skipped: int
    seconds: float
    users_per_s: float
    files: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _plan(out: _Output, expected: dict[str, Any], overwrite: bool) -> None:
    """Create ``out`` with its manifest, or check that an existing run was started with the same plan."""
    if out.is_file(MANIFEST) and not overwrite:
        found = json.loads(out.read_text(MANIFEST))
        diff = {k: (found.get(k), v) for k, v in expected.items() if found.get(k) != v}
        if diff:
            detail = ", ".join(f"{k}: {a!r} there vs {b!r} now" for k, (a, b) in diff.items())
            raise ConflictError(
                f"{out} holds a batch run with other settings ({detail}); resume it with the same options, "
                "pass --overwrite to replace it, or choose another --out"
            )
        return
    entries = out.entries()
    if entries:
        if not overwrite:
            raise ConflictError(f"{out} is not empty and is not a batch output; choose another --out or pass --overwrite")
        for name, is_file in entries:
            if is_file and (name.startswith("part-") or name.startswith(".part-") or name in (MANIFEST, SUCCESS)):
                out.delete(name)
            else:
                raise ConflictError(f"--overwrite only replaces batch outputs, but {out}/{name} is something else; "
                                    "choose another --out")
    out.mkdir()
    out.write_text(MANIFEST, json.dumps(expected, indent=2, sort_keys=True))


def batch_recommend(
    settings: "Settings",
    out_dir: str | os.PathLike[str],
    *,
    n: int = 100,
    version: str | None = None,
    executor: Executor | None = None,
    shard_users: int | None = None,
    exclude_seen: bool = True,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> BatchResult:
    """Write the top-``n`` items of every user of ``version`` (default production) under ``out_dir``.

    Users are split into shards of ``shard_users`` contiguous rows (default: about four shards per
    parallel job, at most ``MAX_SHARD_USERS``), scored by ``executor`` (default
    ``get_executor(settings)``: Ray when ``[cluster] address`` is set). ``progress(done, total)``
    counts shards. Rerunning with the same options resumes; other options raise ConflictError
    unless ``overwrite``. Raises ModelNotFoundError when there is no such version.
    """
    _check_options(n, shard_users)
    data_dir = Path(settings.data.dir).resolve()
    scorer = load_scorer(data_dir, version)
    own = executor is None
    executor = executor or get_executor(settings, 1)
    try:
        return run_batch(
            scorer, out_dir, executor=executor, n=n, shard_users=shard_users, exclude_seen=exclude_seen,
            overwrite=overwrite, progress=progress, spec=SourceSpec(str(data_dir), scorer.version),
        )
    except BaseException:
        if own:
            executor.shutdown(cancel=True)
            own = False
        raise
    finally:
        if own:
            executor.shutdown()


def _check_options(n: Any, shard_users: Any) -> None:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValidationError(f"n must be a positive integer, got {n!r}")
    if shard_users is not None and (isinstance(shard_users, bool) or int(shard_users) < 1):
        raise ValidationError(f"shard_users must be a positive integer, got {shard_users!r}")


def run_batch(
    scorer: Scorer,
    out_dir: str | os.PathLike[str],
    *,
    executor: Executor,
    n: int = 100,
    shard_users: int | None = None,
    exclude_seen: bool = True,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    spec: SourceSpec | None = None,
) -> BatchResult:
    """:func:`batch_recommend` for an already loaded Scorer (any model and users, e.g. in benchmarks).

    ``spec`` lets local worker processes memory-map the version themselves instead of receiving
    the pickled scorer with every shard.
    """
    _check_options(n, shard_users)
    t0 = time.perf_counter()
    out = _Output(out_dir if "://" in str(out_dir) else Path(out_dir).resolve())
    try:
        return _run_batch(scorer, out, executor, n, shard_users, exclude_seen, overwrite, progress, spec, t0)
    except (OSError, pa.ArrowException) as exc:
        raise out.failed(exc, "cannot write the batch output") from None


def _run_batch(scorer: Scorer, out: _Output, executor: Executor, n: int, shard_users: int | None, exclude_seen: bool,
               overwrite: bool, progress: Callable[[int, int], None] | None, spec: SourceSpec | None,
               t0: float) -> BatchResult:
    n_users = len(scorer.user_ids)
    jobs = max(1, int(getattr(executor, "jobs", 1)))
    if shard_users is None and not overwrite and out.is_file(MANIFEST):
        shard_users = int(json.loads(out.read_text(MANIFEST)).get("shard_users", 0)) or None
    if shard_users is None:
        shard_users = max(1, min(MAX_SHARD_USERS, math.ceil(n_users / (4 * jobs))))
    n_shards = math.ceil(n_users / shard_users) if n_users else 0
    plan = {
        "version": scorer.version,
        "n": int(n),
        "n_users": n_users,
        "shard_users": int(shard_users),
        "shards": n_shards,
        "exclude_seen": bool(exclude_seen),
    }
    _plan(out, plan, overwrite)
    present = {name for name, is_file in out.entries() if is_file}
    for stale in present:  # left by workers killed mid-write (a disk only: objects are never partial)
        if stale.startswith(".part-") and stale.endswith(".tmp"):
            out.delete(stale)
    out.delete(SUCCESS)
    todo = [s for s in range(n_shards) if part_name(s) not in present]
    skipped = n_shards - len(todo)

    if spec is not None and isinstance(executor, LocalExecutor) and executor.jobs > 1:
        source: Any = spec  # worker processes memory-map the version themselves (no pickled model)
    else:
        source = executor.share(scorer)  # a cluster ships it to each node once

    done_users = 0
    finished = skipped
    if progress is not None:
        progress(finished, n_shards)
    futures = {}
    t_compute = time.perf_counter()
    try:
        for s in todo:
            start, stop = s * shard_users, min((s + 1) * shard_users, n_users)
            fut = executor.submit(write_shard, source, s, start, stop, int(n), bool(exclude_seen), out.url)
            futures[fut] = s
        pending = set(futures)
        while pending:
            ready, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in ready:
                done_users += fut.result()
                finished += 1
                if progress is not None:
                    progress(finished, n_shards)
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise
    compute_s = time.perf_counter() - t_compute
    seconds = time.perf_counter() - t0
    out.write_text(SUCCESS, json.dumps({"users": n_users, "shards": n_shards, "seconds": round(seconds, 3)}))
    return BatchResult(
        out_dir=out.shown,
        version=scorer.version,
        n=int(n),
        n_users=n_users,
        shard_users=int(shard_users),
        shards_total=n_shards,
        shards_done=len(todo),
        shards_skipped=skipped,
        seconds=seconds,
        users_per_s=done_users / compute_s if compute_s > 0 else 0.0,
        files=[part_name(s) for s in range(n_shards)],
    )
