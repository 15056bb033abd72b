"""The Ray backend of the Executor seam: connect to a cluster, run tasks with retries, share objects."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import ray

from scalerec.cluster.twin import twin_for
from scalerec.errors import ConfigError, ValidationError

if TYPE_CHECKING:  # pragma: no cover
    from scalerec.config import Settings
    from scalerec.models.base import Recommender

T = TypeVar("T")

#: Ray retries a task whose worker process or node died this many times (system failures only:
#: an exception raised by our own code is a real error and is not retried).
DEFAULT_TASK_RETRIES = 3

_CONNECT_LOCK = threading.Lock()

#: the only address a private, single-machine Ray (``--cluster local``, tests, benchmarks) listens on
LOOPBACK = "127.0.0.1"
#: Ray's switch for multi-machine clusters; off, it takes the loopback address as the node address
_CLUSTERS_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def use_loopback() -> None:
    """Make the Ray processes started from here on bind to 127.0.0.1 instead of the external interface.

    Ray otherwise replaces a loopback node address by the machine's external one and binds its
    servers (GCS, raylets, workers, agents) there. The switch is read when ``ray`` is imported:
    the environment covers the child processes, ``ray_constants`` this already-importing one.
    Call it before starting a cluster that only this machine uses; never for a multi-node one.
    """
    os.environ[_CLUSTERS_ENV] = "0"
    from ray._private import ray_constants

    ray_constants.ENABLE_RAY_CLUSTER = False


def connect(address: str | None = None) -> None:
    """Attach this process to a Ray cluster once; later calls (and an existing connection) are no-ops.

    ``address``: ``"auto"`` (a cluster started on this machine with ``ray start --head``),
    ``"ray://host:port"`` (Ray Client), ``"host:port"`` (a GCS address, as
    ``ray.cluster_utils.Cluster.address``), or ``None`` / ``"local"`` to start a private
    single-node Ray on this machine, listening on 127.0.0.1 only. Raises ConfigError when the
    cluster cannot be reached.
    """
    with _CONNECT_LOCK:
        if ray.is_initialized():
            return
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": "WARNING"}
        try:
            if address in (None, "", "local"):
                use_loopback()
                ray.init(include_dashboard=False, _node_ip_address=LOOPBACK, **kwargs)
            else:
                ray.init(address=address, **kwargs)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(
                f"cannot connect to the Ray cluster at {address!r}: {exc}; start one with "
                "`ray start --head` (then use --cluster auto), pass its ray://host:port, or drop "
                "--cluster to run on this machine"
            ) from None


def cluster_cpus() -> int:
    """CPUs of the connected cluster (at least 1)."""
    return max(1, int(ray.cluster_resources().get("CPU", 1)))


@dataclass(frozen=True)
class Shared:
    """A handle to an object put once in the Ray object store; tasks call :func:`resolve` on it.

    Passing the handle (not the object) to many tasks ships the object to each node once instead of
    pickling it into every task; numpy arrays inside are read zero-copy on the node.
    """

    ref: Any  # ray.ObjectRef

    def get(self) -> Any:
        return ray.get(self.ref)


def resolve(value: Any) -> Any:
    """The object behind a :class:`Shared` handle, or ``value`` itself (works without Ray too)."""
    return value.get() if isinstance(value, Shared) else value


def _call(fn: Callable[..., T], args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    # Shared handles given as direct arguments reach the task as their objects (Executor.share).
    args = tuple(resolve(a) for a in args)
    kwargs = {k: resolve(v) for k, v in kwargs.items()}
    return fn(*args, **kwargs)


_REMOTE_CALL = ray.remote(_call)


class RayExecutor:
    """Runs tasks as Ray tasks on a cluster: the Executor protocol plus object sharing.

    Every task asks for ``cpus_per_task`` CPUs (Ray then sets ``OMP_NUM_THREADS`` so BLAS stays in
    its share) and is retried up to ``task_retries`` times when its worker or node dies. ``jobs``
    is how many tasks run at once: the cluster's CPUs divided by ``cpus_per_task`` (Ray's
    scheduler does the throttling), or fewer when ``jobs`` asks for fewer.

    Parameters
    ----------
    settings : the ``[cluster]`` section gives ``address`` and ``task_retries``
    jobs : upper bound on concurrent tasks; 0 or 1 = as many as the cluster has CPUs for
    address : overrides ``settings.cluster.address``
    """

    def __init__(
        self,
        settings: "Settings | None" = None,
        jobs: int = 0,
        *,
        address: str | None = None,
        cpus_per_task: float = 1.0,
        task_retries: int | None = None,
    ) -> None:
        if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 0:
            raise ValidationError(f"jobs must be a non-negative integer, got {jobs!r}")
        if not cpus_per_task > 0:
            raise ValidationError(f"cpus_per_task must be > 0, got {cpus_per_task!r}")
        cluster = getattr(settings, "cluster", None)
        self.address = address if address is not None else getattr(cluster, "address", None)
        if task_retries is None:
            task_retries = int(getattr(cluster, "task_retries", DEFAULT_TASK_RETRIES))
        self.task_retries = task_retries
        self.cpus_per_task = float(cpus_per_task)
        connect(self.address)
        capacity = max(1, int(cluster_cpus() // self.cpus_per_task))
        # The training pipeline's default jobs=1 means "no local process pool"; on a cluster the
        # point is to use its CPUs, so 1 is read as "all of them".
        self.jobs = capacity if jobs <= 1 else min(jobs, capacity)
        self._inflight: set[Any] = set()
        self._lock = threading.Lock()

    def _remote(self, fn: Callable[..., Any]) -> Any:
        # Named after the function, so workers show up as ``ray::<name>`` in ps and the dashboard.
        return _REMOTE_CALL.options(
            name=getattr(fn, "__name__", "task"),
            num_cpus=self.cpus_per_task,
            max_retries=self.task_retries,
            retry_exceptions=False,
        )

    # ------------------------------------------------------------------ Executor protocol
    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> "Future[T]":
        """Start ``fn(*args, **kwargs)`` as a Ray task; its Future raises the task's exception."""
        ref = self._remote(fn).remote(fn, args, kwargs)
        with self._lock:
            self._inflight.add(ref)
        fut: Future[T] = ref.future()
        fut.add_done_callback(lambda _f, ref=ref: self._done(ref))
        return fut

    def _done(self, ref: Any) -> None:
        with self._lock:
            self._inflight.discard(ref)

    def map(self, fn: Callable[[Any], T], items: Iterable[Any]) -> list[T]:
        """``[fn(x) for x in items]`` as Ray tasks, at most ``jobs`` in flight; results in input order."""
        items = list(items)
        results: list[Any] = [None] * len(items)
        pending: dict[Any, int] = {}
        nxt = 0
        try:
            while nxt < len(items) or pending:
                while nxt < len(items) and len(pending) < self.jobs:
                    ref = self._remote(fn).remote(fn, (items[nxt],), {})
                    pending[ref] = nxt
                    nxt += 1
                done, _ = ray.wait(list(pending), num_returns=1)
                for ref in done:
                    results[pending.pop(ref)] = ray.get(ref)
        except BaseException:
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        return results

    def shutdown(self, *, cancel: bool = False) -> None:
        """Forget running tasks; ``cancel`` kills them (Ctrl-C). The cluster itself stays up."""
        with self._lock:
            refs, self._inflight = list(self._inflight), set()
        if cancel:
            for ref in refs:
                ray.cancel(ref, force=True)

    def __enter__(self) -> "RayExecutor":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.shutdown(cancel=exc_type is not None)

    # ------------------------------------------------------------------ sharing and cluster twins
    def share(self, obj: Any) -> Shared:
        """Put ``obj`` in the object store once; tasks get it back as an argument or via :func:`resolve`."""
        return Shared(ray.put(obj))

    def adapt_model(self, model: "Recommender") -> "Recommender":
        """The cluster-trained twin of ``model`` when one exists (ALS, item-kNN), else ``model``.

        The twin has the same hyperparameters, learned state and saved format, so the registry and
        serving cannot tell them apart; only ``fit`` runs as Ray tasks.
        """
        twin = twin_for(model.family)
        if twin is not None and type(model) is twin.local_class():
            return twin.from_model(model, address=self.address, task_retries=self.task_retries)
        return model

    def __repr__(self) -> str:
        return f"RayExecutor(address={self.address!r}, jobs={self.jobs}, task_retries={self.task_retries})"

