"""A real `scalerec serve` (uvicorn) subprocess on loopback, for the reliability tests that kill it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from _signals import default_signals

SRC = Path(__file__).resolve().parents[2] / "src"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """``scalerec --data-dir D serve`` on 127.0.0.1 and a free port; ``kill()`` is SIGKILL."""

    def __init__(self, data_dir: Path, log: Path, *, port: int | None = None) -> None:
        self.data_dir, self.log_path = data_dir, log
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90.0) -> "Server":
        return self.launch().wait_up(timeout)

    def launch(self) -> "Server":
        """Starts the process without waiting for it to answer (see ``start_all``)."""
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH", "")) if p),
                   OMP_NUM_THREADS="1")
        env.pop("SCALEREC_CONFIG", None)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "scalerec", "--data-dir", str(self.data_dir), "serve",
             "--host", "127.0.0.1", "--port", str(self.port)],
            stdout=self._log, stderr=subprocess.STDOUT, env=env, preexec_fn=default_signals,
            start_new_session=True,
        )
        return self

    def wait_up(self, timeout: float = 90.0) -> "Server":
        """Waits until the launched process answers its liveness probe."""
        assert self.proc is not None, "launch() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scalerec serve exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}/v1/health/live", timeout=2).status_code < 500:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"scalerec serve not up after {timeout:.0f} s: {self.log_tail()}")

    def log_tail(self, n: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-n:]

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: no shutdown code runs."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(30)
        self._log.close()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)
        self._log.close()

    @staticmethod
    def start_all(*servers: "Server", timeout: float = 90.0) -> None:
        """Starts several servers at once: their start-ups (imports, model load) overlap on the cores."""
        try:
            for server in servers:
                server.launch()
            for server in servers:
                server.wait_up(timeout)
        except BaseException:
            for server in servers:
                if server.proc is not None:
                    server.stop()
            raise

    def __enter__(self) -> "Server":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
