"""Ray on loopback: every socket our Ray processes listen on is on 127.0.0.1 (test cluster and --cluster local)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from _ray_cluster import ray_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.ray

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1"}  # an IPv6 socket bound to the IPv4 loopback shows the mapped form


def listening(pids: set[int]) -> list[tuple[str, int, str]]:
    """(address, port, process name) of every TCP socket in LISTEN state owned by ``pids``."""
    import psutil

    found = []
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN:
                    found.append((conn.laddr.ip, conn.laddr.port, proc.name()))
        except psutil.Error:  # ended meanwhile
            continue
    return found


def own_tree() -> set[int]:
    import psutil

    me = psutil.Process()
    return {me.pid, *(p.pid for p in me.children(recursive=True))}


def _pid(_: int) -> int:
    return os.getpid()


def test_the_test_cluster_listens_on_loopback_only(ray_cluster) -> None:  # noqa: F811
    import ray

    # Run tasks on both nodes first, so worker processes (with their own servers) exist too.
    ray.get([ray.remote(_pid).options(num_cpus=1).remote(i) for i in range(4)])
    sockets = listening(own_tree())
    assert len({name for _, _, name in sockets}) >= 3, sockets  # gcs_server, raylets, workers, agents
    outside = [s for s in sockets if s[0] not in LOOPBACK]
    assert not outside, f"Ray listens beyond loopback: {outside}"
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}


SCRIPT = """
import json, os, sys
sys.path[:0] = [sys.argv[1], os.path.dirname(sys.argv[1])]  # this folder and tests/ (shared helpers)
from test_cluster_loopback import listening, own_tree
from scalerec.cluster.ray_executor import RayExecutor
ex = RayExecutor(address="local")
assert ex.map(abs, [-1, -2]) == [1, 2]
print(json.dumps(listening(own_tree())))
"""


def test_cluster_local_listens_on_loopback_only(tmp_path: Path) -> None:
    # A fresh process: `--cluster local` starts its own Ray, which a test process can do only once.
    env = {**os.environ, "RAY_ADDRESS": ""}
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(Path(__file__).parent)],
        capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    sockets = [tuple(s) for s in json.loads(out.stdout.strip().splitlines()[-1])]
    assert sockets, "no Ray process was found listening"
    outside = [s for s in sockets if s[0] not in LOOPBACK]
    assert not outside, f"--cluster local listens beyond loopback: {outside}"
