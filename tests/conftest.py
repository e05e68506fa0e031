"""Shared fixtures: a real PostgreSQL server for the storage tests.

The server comes from the machine's PostgreSQL packages (Debian ``postgresql``,
binaries under ``/usr/lib/postgresql/<version>/bin``; ``.ci/run`` installs them).
It runs in a temporary data directory on a free loopback port, with fsync off,
password authentication over TCP and trust over its own Unix socket; ``initdb``
refuses root, so as root the commands run as the ``postgres`` user. A test that
needs it fails, never skips, when the binaries are missing.
"""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest
from _schedule import pytest_collection_modifyitems, pytest_runtest_logreport, pytest_sessionfinish  # noqa: F401

PG_USER = "postgres"

# A bare --mlflow follows MLflow's environment, as mlflow.start_run() does: the suite must never log to the
# user's own tracking server or experiment, so it runs without them (tests that need them set them).
for _name in ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID", "MLFLOW_ALLOW_FILE_STORE"):
    os.environ.pop(_name, None)


@pytest.fixture(autouse=True)
def _no_leaked_mlflow_environment():
    """A test that sets MLflow's global tracking URI (``mlflow.set_tracking_uri`` also sets
    ``MLFLOW_TRACKING_URI`` for subprocesses) must not send a later test's bare --mlflow there."""
    yield
    if os.environ.pop("MLFLOW_TRACKING_URI", None) is not None:
        import mlflow

        mlflow.set_tracking_uri(None)


# The level the suite started with: what every test, and every command it runs, sees.
_TF_LOG_LEVEL_AT_START = os.environ.get("TF_CPP_MIN_LOG_LEVEL")


def _restore_tensorflow_log_level() -> None:
    if _TF_LOG_LEVEL_AT_START is None:
        os.environ.pop("TF_CPP_MIN_LOG_LEVEL", None)
    else:
        os.environ["TF_CPP_MIN_LOG_LEVEL"] = _TF_LOG_LEVEL_AT_START


@pytest.fixture(autouse=True)
def _no_leaked_tensorflow_log_level():
    """tf2onnx sets ``TF_CPP_MIN_LOG_LEVEL`` to 3 in this process's environment when it converts a model
    (tf2onnx/verbose_logging.py), and nnlab's import sets it to 2 where it is unset: every test (and the
    end-to-end runner's check of the start-up settings, tests/_forked.py) sees the level the suite started
    with, also after a module- or session-scoped fixture that converted or imported (set up before this)."""
    _restore_tensorflow_log_level()
    yield
    _restore_tensorflow_log_level()


def _bin_dir() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(p.split("/")[4]))
    if found:
        return Path(found[-1]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PostgresServer:
    """A throwaway PostgreSQL server: ``url(db)``, ``create_database(name)``, ``stop()``, ``start()``."""

    def __init__(self) -> None:
        bin_dir = _bin_dir()
        if bin_dir is None:
            pytest.fail("PostgreSQL server binaries not found (no /usr/lib/postgresql/*/bin/initdb, no initdb on "
                        "PATH): install the Debian package 'postgresql' (.ci/run does)")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="nnlab-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        self.password = secrets.token_hex(12)
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            shutil.chown(self.root, PG_USER, PG_USER)
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_postgres:
            shutil.chown(pwfile, PG_USER, PG_USER)
        self._run("initdb", "-D", str(self.data), "-U", PG_USER, f"--pwfile={pwfile}", "--auth-local=trust",
                  "--auth-host=scram-sha-256", "--no-sync", "-E", "UTF8")
        pwfile.unlink()
        self.start()

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess:
        command = [str(self.bin / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", PG_USER, "--", *command]
        proc = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{tool} failed ({proc.returncode}): {proc.stderr or proc.stdout}")
        return proc

    def start(self) -> None:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w",
                  "-t", "60", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def url(self, database: str, *, password: bool = True, driver: str = "psycopg") -> str:
        secret = f":{self.password}" if password else ""
        return f"postgresql+{driver}://{PG_USER}{secret}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """Create database ``name``; returns its URL (with the password)."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, password=self.password,
                             dbname="postgres", autocommit=True) as connection:
            connection.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres_server():
    """One PostgreSQL server for the session (each test creates its own database)."""
    server = PostgresServer()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def postgres_db(postgres_server, request):
    """A fresh database on the session's server: its URL, password included."""
    name = "t_" + secrets.token_hex(6)
    return postgres_server.create_database(name)


@contextlib.contextmanager
def mounted_tmpfs(size: str, prefix: str):
    """A fresh directory with a tmpfs of ``size`` mounted on it: a real full disk for the tests that need one.

    Skips the test when it cannot mount (not root, no ``mount``, no permission).
    """
    import pytest

    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real full disk needs a tmpfs mount: run as root (CAP_SYS_ADMIN)")
    directory = Path(tempfile.mkdtemp(prefix=prefix))
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(directory)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        directory.rmdir()
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the fault-injection tests still run")
    try:
        yield directory
    finally:
        subprocess.run(["umount", str(directory)], check=False)
        directory.rmdir()
