"""The Executor seam: run independent tasks in-process, in local worker processes, or on Ray.

Callers (training, batch inference) only see :class:`Executor`; the Ray backend lives in
``scalerec.cluster`` and is loaded by :func:`get_executor` only when a cluster is configured.
"""

from __future__ import annotations

# This module is imported by spawned worker processes before anything else of ours: it must not
# import numpy (or anything that loads a BLAS) at module level, so that the worker initializer can
# pin BLAS/OpenMP thread counts through the environment before those libraries start.
import os
import signal
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ProcessPoolExecutor
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, runtime_checkable

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings
    from scalerec.models.base import Recommender

T = TypeVar("T")

#: environment variables read by BLAS / OpenMP runtimes when they load
_THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "POLARS_MAX_THREADS",  # matrix rebuilds inside trials (e.g. recency-weighted) run in polars
)

_WORKER_THREADS: int | None = None  # set in worker processes by _init_worker


@runtime_checkable
class Executor(Protocol):
    """Runs picklable callables: ``submit`` one, ``map`` many; the pipeline only sees this.

    ``jobs`` is how many tasks run at the same time. Implementations: :class:`LocalExecutor`
    (in-process for one job, a process pool otherwise) and
    ``scalerec.cluster.ray_executor.RayExecutor`` (a Ray cluster).

    ``share(obj)`` returns a handle to pass to many tasks instead of ``obj`` (a cluster ships it
    to each node once); a handle passed as a direct argument of ``submit``/``map`` reaches the
    task as the object itself. ``adapt_model(model)`` returns the model this backend should fit
    (a cluster's distributed twin of the same family, or ``model``).
    """

    jobs: int

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "Future[T]": ...

    def map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]: ...

    def shutdown(self, *, cancel: bool = False) -> None: ...

    def share(self, obj: Any) -> Any: ...

    def adapt_model(self, model: "Recommender") -> "Recommender": ...


def _init_worker(threads: int) -> None:
    """Process-pool initializer: one BLAS/OpenMP thread per worker, Ctrl-C handled by the parent."""
    global _WORKER_THREADS
    _WORKER_THREADS = threads
    for name in _THREAD_ENV:
        os.environ[name] = str(threads)
    # The terminal sends SIGINT to the whole process group; the parent decides how to stop, so
    # workers must not die mid-write with their own KeyboardInterrupt tracebacks.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _call_limited(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """Run ``fn`` in a worker with BLAS/OpenMP pools limited to the worker's thread count.

    The environment set by the initializer covers libraries loaded after it; threadpoolctl also
    covers any already loaded (e.g. by unpickling the task's arguments).
    """
    if _WORKER_THREADS is None:
        return fn(*args, **kwargs)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=_WORKER_THREADS):
        return fn(*args, **kwargs)


class LocalExecutor:
    """Run tasks on this machine: in the calling process for ``jobs == 1``, else in a process pool.

    With ``jobs > 1`` the pool uses the ``spawn`` start method (no forked BLAS or sqlite state) and
    each worker runs ``threads_per_job`` BLAS/OpenMP threads (default: cores // jobs, at least 1),
    so ``jobs`` parallel fits do not oversubscribe the cores. With ``jobs == 1`` tasks run inline
    and keep every core for BLAS; ``submit`` then returns an already-completed Future.
    """

    def __init__(self, jobs: int = 1, *, threads_per_job: int | None = None) -> None:
        from scalerec.errors import ValidationError

        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
            raise ValidationError(f"jobs must be a positive integer, got {jobs!r}")
        self.jobs = jobs
        cores = os.cpu_count() or 1
        self.threads_per_job = threads_per_job or max(1, cores // jobs)
        self._pool: ProcessPoolExecutor | None = None

    def _get_pool(self) -> ProcessPoolExecutor:
        if self._pool is None:
            import multiprocessing

            self._pool = ProcessPoolExecutor(
                max_workers=self.jobs,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_init_worker,
                initargs=(self.threads_per_job,),
            )
        return self._pool

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "Future[T]":
        """Start ``fn(*args, **kwargs)``; returns its Future (exceptions are raised by ``result()``)."""
        if self.jobs == 1:
            fut: Future[T] = Future()
            try:
                fut.set_result(fn(*args, **kwargs))
            except Exception as exc:  # KeyboardInterrupt and SystemExit propagate at once
                fut.set_exception(exc)
            return fut
        from concurrent.futures.process import BrokenProcessPool

        try:
            return self._get_pool().submit(_call_limited, fn, args, kwargs)
        except BrokenProcessPool:
            # A worker died (killed, out of memory): its tasks failed; start fresh workers for the rest.
            self.shutdown(cancel=True)
            return self._get_pool().submit(_call_limited, fn, args, kwargs)

    def map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        """``[fn(x) for x in items]``, ``jobs`` at a time, results in input order."""
        futures = [self.submit(fn, x) for x in items]
        return [f.result() for f in futures]

    def shutdown(self, *, cancel: bool = False) -> None:
        """Release the workers. ``cancel`` drops queued tasks and stops running ones now (Ctrl-C)."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        if cancel:
            # ProcessPoolExecutor cannot interrupt a running task; terminating its workers is the
            # only way to stop a long fit promptly. _processes is private but stable since 3.8.
            processes = list(getattr(pool, "_processes", {}).values())
            pool.shutdown(wait=False, cancel_futures=True)
            for proc in processes:
                if proc.is_alive():
                    proc.terminate()
            for proc in processes:
                proc.join(timeout=5)
                if proc.is_alive():  # SIGTERM not acted on within 5 s (a loaded machine): no worker outlives Ctrl-C
                    proc.kill()
                    proc.join(timeout=5)
        else:
            pool.shutdown(wait=True)

    def share(self, obj: Any) -> Any:
        """``obj`` itself: in-process tasks use it directly, pool workers receive it pickled."""
        return obj

    def adapt_model(self, model: "Recommender") -> "Recommender":
        """``model`` itself: every family fits on this machine as it is."""
        return model

    def __enter__(self) -> "LocalExecutor":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.shutdown(cancel=exc_type is not None)

    def __repr__(self) -> str:
        return f"LocalExecutor(jobs={self.jobs}, threads_per_job={self.threads_per_job})"


def get_executor(settings: "Settings | None" = None, jobs: int = 1) -> Executor:
    """The executor for these settings: Ray when ``[cluster] address`` is set, else local.

    ``jobs`` is the number of tasks run at once. Raises ConfigError when a cluster is named but
    the Ray backend is not installed.
    """
    address = settings.cluster.address if settings is not None else None
    if address:
        try:
            from scalerec.cluster.ray_executor import RayExecutor  # type: ignore[import-not-found]
        except ImportError as exc:
            from scalerec.errors import ConfigError

            raise ConfigError(
                f"[cluster] address = {address!r} needs the Ray backend, which is not available ({exc}); "
                "install it with `pip install 'scalerec[ray]'` or unset the cluster address to run locally"
            ) from None
        return RayExecutor(settings=settings, jobs=jobs)  # type: ignore[no-any-return]
    return LocalExecutor(jobs)
