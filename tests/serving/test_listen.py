"""`scalerec serve --workers N` listens with a socket per worker: keep-alive connections opened
together reach every worker (with uvicorn's one shared socket, the first worker awake took them all),
and the port stays taken for a second server."""

from __future__ import annotations

import http.client
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from scalerec.cli.serve_cmd import check_port_free
from scalerec.errors import ConfigError
from scalerec.serving.listen import reuse_port_available

APPS = Path(__file__).parent / "_apps"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(conn: http.client.HTTPConnection) -> str:
    conn.request("GET", "/")
    return conn.getresponse().read().decode()


def _listening_inodes(pid: int, port: int) -> set[int]:
    """Inodes of the TCP sockets process ``pid`` listens with on ``port`` (from /proc)."""
    import psutil

    fds = {c.fd for c in psutil.Process(pid).net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
    return {int(os.readlink(f"/proc/{pid}/fd/{fd}")[len("socket:["):-1]) for fd in fds}


@pytest.mark.skipif(not reuse_port_available() or not Path("/proc/self/fd").is_dir(), reason="SO_REUSEPORT and /proc: Linux")
def test_connections_opened_together_reach_both_workers_and_the_port_stays_taken():
    port = _free_port()
    code = (f"import sys; sys.path.insert(0, {str(APPS)!r}); from scalerec.serving.listen import run; "
            f"run('pid_app:app', host='127.0.0.1', port={port}, workers=2, log_level='warning')")
    proc = subprocess.Popen([sys.executable, "-c", code])
    try:
        deadline = time.monotonic() + 60
        seen: set[str] = set()
        while len(seen) < 2 and time.monotonic() < deadline:  # until both workers have started
            try:
                seen.add(_get(http.client.HTTPConnection("127.0.0.1", port, timeout=10)))
            except OSError:
                time.sleep(0.2)  # not listening yet
        assert len(seen) == 2
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=10) for _ in range(16)]
        for c in conns:
            c.connect()  # all 16 opened before any request, as a client pool does
        pids = [_get(c) for c in conns]
        assert [_get(c) for c in conns] == pids, "a keep-alive connection stays on its worker"
        for c in conns:
            c.close()
        assert len(set(pids)) == 2, "16 connections opened together all reached one worker"
        # each worker listens on its own socket; the supervisor's only holds the port
        listening = {pid: _listening_inodes(int(pid), port) for pid in seen}
        assert all(len(v) == 1 for v in listening.values()) and len(set().union(*listening.values())) == 2
        assert _listening_inodes(proc.pid, port) == set()
        with pytest.raises(ConfigError, match="already in use"):  # a second server fails at start
            check_port_free("127.0.0.1", port)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
