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
import sys
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

    def __init__(self, *, fsync: bool = False) -> None:
        self.fsync = fsync
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
                  "--locale=C.UTF-8", *([] if self.fsync else ["--no-sync"]))
        # fsync off for the tests' throwaway cluster; the benchmark measures with fsync on
        opts = (f"-c port={self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
                f"-c fsync={'on' if self.fsync else 'off'} -c max_connections=300 -c shared_buffers=128MB")
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


class S3Server:
    """moto's standalone S3-compatible server on 127.0.0.1:<free port> (PyPI ``moto[server]``)."""

    def __init__(self) -> None:
        # this interpreter's own first: another environment's older moto on PATH (5.2.1 answers a
        # CompleteMultipartUpload with <CompleteMultipartUploadResponse>, which the AWS SDK in
        # pyarrow takes for an error embedded in a 200: every multipart upload failed)
        own = Path(sys.executable).with_name("moto_server")
        exe = str(own) if own.exists() else shutil.which("moto_server") or str(own)
        if not Path(exe).exists():
            raise RuntimeError("moto_server not found; pip install 'moto[server]' (the dev extra has it)")
        self.exe, self.port = exe, free_port()
        self.proc: subprocess.Popen | None = None
        self.endpoint = f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> "S3Server":
        import time
        import urllib.request

        self.proc = subprocess.Popen([self.exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto_server exited with {self.proc.returncode}")
            try:
                urllib.request.urlopen(f"http://{self.endpoint}/", timeout=1)
                return self
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"moto_server not up after {timeout:.0f} s")

    def bucket_url(self, prefix: str = "scalerec") -> str:
        """A fresh bucket; the s3:// URL of ``prefix`` in it (endpoint and plain HTTP in the query)."""
        import pyarrow.fs as pafs

        bucket = f"b-{uuid.uuid4().hex[:12]}"
        fs = pafs.S3FileSystem(endpoint_override=self.endpoint, scheme="http", access_key="test",
                               secret_key="test", region="us-east-1", allow_bucket_creation=True)
        fs.create_dir(bucket)
        return f"s3://{bucket}/{prefix}?endpoint_override={self.endpoint}&scheme=http&region=us-east-1"

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
