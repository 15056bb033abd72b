"""The Executor seam: LocalExecutor in-process and in a spawned process pool, and the factory."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from scalerec.execution import Executor, LocalExecutor, get_executor
from scalerec.config import Settings
from scalerec.errors import ValidationError


def _square(x: int) -> int:
    return x * x


def _worker_info(_: int) -> tuple[int, int]:
    """(pid, the largest BLAS/OpenMP thread count seen by threadpoolctl) inside the task."""
    import numpy  # noqa: F401 - load a BLAS so threadpoolctl has something to report
    from threadpoolctl import threadpool_info

    counts = [int(p["num_threads"]) for p in threadpool_info()]
    return os.getpid(), max(counts) if counts else 1


def _fail(x: int) -> int:
    raise ValueError(f"bad {x}")


def test_in_process_executor_runs_inline() -> None:
    ex = LocalExecutor(1)
    assert isinstance(ex, Executor)
    assert ex.map(_square, range(5)) == [0, 1, 4, 9, 16]
    pid, _ = ex.submit(_worker_info, 0).result()
    assert pid == os.getpid()
    fut = ex.submit(_fail, 3)
    with pytest.raises(ValueError, match="bad 3"):
        fut.result()


def test_process_pool_runs_in_workers_with_one_blas_thread_each() -> None:
    with LocalExecutor(2, threads_per_job=1) as ex:
        assert ex.map(_square, range(6)) == [0, 1, 4, 9, 16, 25]
        infos = ex.map(_worker_info, range(4))
        with pytest.raises(ValueError, match="bad 1"):
            ex.submit(_fail, 1).result()
    assert all(pid != os.getpid() for pid, _ in infos)
    assert all(threads == 1 for _, threads in infos)  # 2 jobs on 2 cores do not oversubscribe


def test_cancel_shutdown_stops_workers() -> None:
    ex = LocalExecutor(2)
    ex.map(_square, range(2))
    procs = list(ex._pool._processes.values())  # type: ignore[union-attr]
    ex.shutdown(cancel=True)
    assert procs and not [p.pid for p in procs if _running(p.pid)]


def _running(pid: int) -> bool:
    """Whether the OS still runs ``pid`` (not gone, not a zombie). Not ``Process.is_alive``: when the
    pool's own manager thread reaps a worker at the same moment, ``waitpid`` in the other thread gets
    ECHILD and multiprocessing reports the reaped process as alive."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_factory_and_validation() -> None:
    ex = get_executor(Settings(), jobs=3)
    assert isinstance(ex, LocalExecutor) and ex.jobs == 3
    with pytest.raises(ValidationError):
        LocalExecutor(0)


def _die(_: int) -> int:
    os._exit(3)  # a worker killed mid-task (as by the OOM killer)


def test_a_dead_worker_fails_its_task_and_the_pool_recovers() -> None:
    from concurrent.futures.process import BrokenProcessPool

    with LocalExecutor(2) as ex:
        with pytest.raises(BrokenProcessPool):
            ex.submit(_die, 0).result()
        assert ex.submit(_square, 7).result() == 49


def test_local_share_and_adapt_model_are_identities() -> None:
    from scalerec.models import make_model

    ex = LocalExecutor(1)
    obj = {"big": list(range(10))}
    assert ex.share(obj) is obj
    model = make_model("als", factors=4)
    assert ex.adapt_model(model) is model


def test_execution_module_loads_no_blas() -> None:
    # Spawned workers import it first, before their thread limits are set in the environment.
    code = "import sys, scalerec.execution; print(sorted(m for m in ('numpy', 'scipy', 'ray') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=os.environ)
    assert out.stdout.strip() == "[]"


def test_a_named_cluster_without_ray_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    from scalerec.errors import ConfigError

    monkeypatch.setitem(sys.modules, "scalerec.cluster.ray_executor", None)  # as if Ray were not installed
    settings = Settings()
    settings.cluster = settings.cluster.model_copy(update={"address": "auto"})
    with pytest.raises(ConfigError, match="Ray backend"):
        get_executor(settings)
