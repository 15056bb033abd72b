"""The cluster tests' shared fixture: one local two-node Ray cluster per test session (on 127.0.0.1 only), and a chaos helper.

Import the fixture into a test module with ``from _ray_cluster import ray_cluster``. However many
modules import it, the cluster is started once (module-level singleton) and shut down at the end
of the session. Without Ray installed the fixture skips the test with the reason.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path
from typing import Any

import pytest

#: per node: 1 CPU and a 100 MB object store, so multi-node scheduling and spilling paths run;
#: every node on the loopback address, so no Ray process listens on the machine's network
NODE_ARGS = {"num_cpus": 1, "object_store_memory": 100 * 1024 * 1024, "node_ip_address": "127.0.0.1"}

_STATE: dict[str, Any] = {}


@pytest.fixture(scope="session")
def ray_cluster() -> Any:
    """A running ``ray.cluster_utils.Cluster`` (head + 1 worker node) this process is connected to."""
    try:
        import ray
        from ray.cluster_utils import Cluster
    except ImportError:
        pytest.skip("Ray is not installed: `pip install 'scalerec[ray]'` (or `make test`) runs the cluster tests")
    if "cluster" not in _STATE:
        from scalerec.cluster.ray_executor import LOOPBACK, use_loopback

        use_loopback()
        cluster = Cluster(initialize_head=True, head_node_args={**NODE_ARGS, "include_dashboard": False})
        cluster.add_node(**NODE_ARGS)
        cluster.wait_for_nodes()
        # Task functions defined in test modules are pickled by reference: workers import them
        # from the tests directory and its folders (the tree mirrors the package).
        here = Path(__file__).parent
        folders = [here, *sorted(p for p in here.rglob("*") if p.is_dir() and not p.name.startswith(("_", ".")))]
        path = os.pathsep.join(p for p in (*map(str, folders), os.environ.get("PYTHONPATH", "")) if p)
        ray.init(
            address=cluster.address,
            _node_ip_address=LOOPBACK,
            log_to_driver=False,
            logging_level="WARNING",
            runtime_env={"env_vars": {"PYTHONPATH": path}},
        )
        _STATE["cluster"] = cluster
    yield _STATE["cluster"]
    cluster = _STATE.pop("cluster", None)
    if cluster is not None:
        try:
            from ray import serve

            serve.shutdown()
        except Exception:  # Serve never started, or already down
            pass
        ray.shutdown()
        cluster.shutdown()


class Killer:
    """Kills (SIGKILL) the first Ray worker of this test session seen running task ``task_name``.

    Ray names a worker process ``ray::<task function name>`` while it runs a task; only our own
    cluster's processes (descendants of this test process) are looked at.
    """

    def __init__(self, task_name: str, *, after_s: float = 0.0, timeout_s: float = 60.0) -> None:
        self.title = f"ray::{task_name}"
        self.after_s = after_s
        self.timeout_s = timeout_s
        self.killed: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "Killer":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        import psutil

        me = psutil.Process()
        start = time.monotonic()
        while not self._stop.is_set() and time.monotonic() - start < self.timeout_s:
            if time.monotonic() - start >= self.after_s:
                for proc in me.children(recursive=True):
                    try:
                        if proc.name() == self.title:
                            os.kill(proc.pid, signal.SIGKILL)
                            self.killed.append(proc.pid)
                            return
                    except (psutil.Error, OSError):  # the process ended meanwhile
                        continue
            time.sleep(0.002)
