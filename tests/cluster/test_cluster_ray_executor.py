"""RayExecutor on a local two-node cluster: the Executor contract, retries, sharing, selection by settings."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from _ray_cluster import ray_cluster  # noqa: F401  (fixture)
from scalerec.execution import LocalExecutor, get_executor
from scalerec.config import Settings
from scalerec.errors import UnknownItemError, ValidationError

pytestmark = pytest.mark.ray


def _square(x: int) -> int:
    return x * x


def _node_of(args: tuple[int, str]) -> str:
    """Node of a task that waits until its sibling runs too: with one CPU per node, two tasks
    running at the same time must be on two nodes, however slowly the second node starts."""
    import time

    import ray

    index, rendezvous = args
    Path(rendezvous, str(index)).touch()
    deadline = time.monotonic() + 120
    while len(list(Path(rendezvous).iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return ray.get_runtime_context().get_node_id()


def _raise_typed(_: int) -> None:
    raise UnknownItemError("item 'x' is not in the catalogue")


def _die_once(marker: str) -> int:
    """Kills its own worker process the first time (as a crashed or OOM-killed worker would)."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died once")
        os._exit(1)
    return os.getpid()


def _sum_shared(handle: object) -> float:
    from scalerec.cluster.ray_executor import resolve

    return float(resolve(handle).sum())


@pytest.fixture
def executor(ray_cluster):  # noqa: F811
    from scalerec.cluster.ray_executor import RayExecutor

    ex = RayExecutor(address=ray_cluster.address)
    yield ex
    ex.shutdown()


def test_get_executor_picks_ray_by_settings_only(ray_cluster) -> None:  # noqa: F811
    from scalerec.cluster.ray_executor import RayExecutor

    ex = get_executor(Settings(cluster={"address": ray_cluster.address}), jobs=1)
    assert isinstance(ex, RayExecutor)
    assert ex.jobs == 2, "jobs=1 on a cluster means all of its CPUs (2 nodes x 1 CPU)"
    assert isinstance(get_executor(Settings(), jobs=1), LocalExecutor)


def test_map_and_submit_keep_order_and_use_both_nodes(executor, tmp_path: Path) -> None:
    assert executor.map(_square, range(7)) == [x * x for x in range(7)]
    assert executor.submit(_square, 12).result(timeout=60) == 144
    nodes = set(executor.map(_node_of, [(i, str(tmp_path)) for i in range(2)]))
    assert len(nodes) == 2


def test_task_errors_keep_their_type_and_are_not_retried(executor) -> None:
    with pytest.raises(UnknownItemError, match="not in the catalogue"):
        executor.submit(_raise_typed, 0).result(timeout=60)
    with pytest.raises(UnknownItemError):
        executor.map(_raise_typed, [0, 1])


def test_a_worker_that_dies_is_retried_and_the_task_finishes(executor, tmp_path: Path) -> None:
    marker = tmp_path / "died"
    pid = executor.submit(_die_once, str(marker)).result(timeout=120)
    assert marker.read_text() == "died once"
    assert pid != os.getpid()


def test_shared_objects_reach_tasks_on_every_node(executor) -> None:
    data = np.arange(1_000_000, dtype=np.float64)
    handle = executor.share(data)
    assert executor.map(_sum_shared, [handle] * 4) == [float(data.sum())] * 4


def _sum_direct(data: object) -> float:
    assert isinstance(data, np.ndarray), type(data)  # a direct argument arrives as the object
    return float(data.sum())


def test_a_shared_handle_given_directly_arrives_as_its_object(executor) -> None:
    data = np.arange(1000, dtype=np.float64)
    handle = executor.share(data)
    assert executor.submit(_sum_direct, handle).result() == float(data.sum())
    assert executor.map(_sum_direct, [handle, handle]) == [float(data.sum())] * 2


def test_invalid_jobs_are_refused(ray_cluster) -> None:  # noqa: F811
    from scalerec.cluster.ray_executor import RayExecutor

    with pytest.raises(ValidationError):
        RayExecutor(jobs=-1)


def test_adapt_model_swaps_in_cluster_twins(executor) -> None:
    from scalerec.cluster.als import DistributedALS
    from scalerec.cluster.knn import DistributedItemKNN
    from scalerec.models import make_model

    als = executor.adapt_model(make_model("als", factors=8, iterations=2))
    assert isinstance(als, DistributedALS) and als.factors == 8 and als.iterations == 2
    assert isinstance(executor.adapt_model(make_model("itemknn", neighbors=5)), DistributedItemKNN)
    pop = make_model("popular")
    assert executor.adapt_model(pop) is pop
