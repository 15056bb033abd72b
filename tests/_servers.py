"""Real servers the tests start on loopback: a throwaway PostgreSQL cluster (Debian's `postgresql`
package: initdb + pg_ctl in a temp dir).

Where the server cannot start, a test that needs it fails loudly under CI (``CI`` or
``SCALEREC_REQUIRE_SERVERS`` set, as .ci/run does) and is skipped with the reason elsewhere (a
laptop without PostgreSQL).
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable(reason: str) -> None:
    """Fail under CI (the server must be there), skip elsewhere."""
    if os.environ.get("CI") or os.environ.get("SCALEREC_REQUIRE_SERVERS"):
        pytest.fail(f"{reason} (CI must provide it: .ci/run installs it)", pytrace=False)
    pytest.skip(reason)


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


class PostgresServer:
    """One PostgreSQL cluster in a temp directory on 127.0.0.1:<free port>, trust auth for user
    ``scalerec``; run as the ``postgres`` system user when the tests run as root (initdb refuses root)."""

    def __init__(self) -> None:
        self.initdb, self.pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
        if not (self.initdb and self.pg_ctl):
            raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found; apt-get install postgresql")
        self.root = Path(tempfile.mkdtemp(prefix="scalerec-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.run_as: list[str] = []
        if os.geteuid() == 0:
            user = pwd.getpwnam("postgres")
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self.run_as = ["runuser", "-u", "postgres", "--"]

    def _run(self, *args: str) -> None:
        out = subprocess.run([*self.run_as, *args], capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args[:2])} failed: {(out.stderr or out.stdout).strip()[-2000:]}")

    def start(self) -> "PostgresServer":
        self._run(self.initdb, "-D", str(self.data), "-U", "scalerec", "--auth=trust", "-E", "UTF8",
                  "--locale=C.UTF-8", "--no-sync")
        # fsync off: a throwaway cluster (the benchmark uses its own with fsync on)
        opts = (f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                "-c fsync=off -c max_connections=300 -c shared_buffers=64MB")
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.root / "log"), "-o", opts, "-w", "-t", "60", "start")
        return self

    def url(self, db: str = "postgres") -> str:
        return f"postgresql://scalerec@127.0.0.1:{self.port}/{db}"

    def new_schema_url(self) -> str:
        """A URL whose connections see one fresh, empty schema (one per test: cheaper than a database)."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE SCHEMA {name}")
        return f"{self.url()}?options=-csearch_path%3D{name}"

    def stop(self) -> None:
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", "immediate", "-w", "stop")
        except Exception:  # noqa: BLE001 - best effort at session end
            pass
        shutil.rmtree(self.root, ignore_errors=True)
