"""A throwaway PostgreSQL 15 server for the tests.

`postgres_url` (a session fixture) starts one server for the whole run: a fresh cluster in a temp
directory, listening on 127.0.0.1 only on a free port, with a password-protected superuser role
`abl` and a database `abl`; it is stopped and deleted at the end. The server refuses to run as
root, so under root it runs as the `postgres` OS user (`runuser`), which owns the temp directory.
The binaries come from the Debian package `postgresql` (scripts/setup.sh installs it; installed
here with apt-get when missing). No server means the PostgreSQL tests fail with the reason: they
never skip. Use it with `from tests.pg import postgres_url  # noqa: F401` in a test module.
"""

from __future__ import annotations

import itertools
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

PG_BIN = Path(os.environ.get("ABL_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_USER = "postgres"  # the OS user that runs the server when the tests run as root
ROLE = "abl"
# Tests assert this never shows up in messages; the random part keeps the server private.
PASSWORD_PREFIX = "pw-secret-"
SETTINGS = """
listen_addresses = '127.0.0.1'
port = {port}
unix_socket_directories = '{sockets}'
fsync = off
synchronous_commit = off
full_page_writes = off
max_connections = 100
shared_buffers = 32MB
"""


@dataclass
class PostgresServer:
    """One running throwaway server; `url` names its database `abl` as role `abl`."""

    root: Path
    port: int
    password: str

    @property
    def data(self) -> Path:
        return self.root / "data"

    def database_url(self, database: str = ROLE) -> str:
        return f"postgresql+psycopg://{ROLE}:{self.password}@127.0.0.1:{self.port}/{database}"

    @property
    def url(self) -> str:
        return self.database_url()

    @property
    def pg_ctl(self) -> list[str]:
        return [str(PG_BIN / "pg_ctl"), "-D", str(self.data)]

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            _run_as_server_user([*self.pg_ctl, "-m", "immediate", "-w", "stop"], self.root, False)
        shutil.rmtree(self.root, ignore_errors=True)


def create_database(server_url: str, name: str) -> str:
    """A new, empty database on the server of `server_url`; returns its URL."""
    import psycopg
    from sqlalchemy.engine import make_url

    url = make_url(server_url)
    with psycopg.connect(
        host=url.host,
        port=url.port,
        user=url.username,
        password=url.password,
        dbname="postgres",
        autocommit=True,
        connect_timeout=10,
    ) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
    return url.set(database=name).render_as_string(hide_password=False)


def start_postgres() -> PostgresServer:
    """Start a server (see the module docstring); raises RuntimeError saying what is missing."""
    _ensure_binaries()
    as_root = os.geteuid() == 0
    if as_root:
        try:
            pw = pwd.getpwnam(PG_USER)
        except KeyError:
            raise RuntimeError(
                f"OS user {PG_USER!r} is missing (the Debian package `postgresql` creates it); "
                "PostgreSQL refuses to run as root"
            ) from None
    root = Path(tempfile.mkdtemp(prefix="abl-pg-"))
    server = PostgresServer(root, 0, PASSWORD_PREFIX + secrets.token_hex(8))
    try:
        pwfile = root / "pwfile"
        pwfile.write_text(server.password + "\n")
        if as_root:
            for p in (root, pwfile):
                os.chown(p, pw.pw_uid, pw.pw_gid)
        initdb = [str(PG_BIN / "initdb"), "-D", str(server.data), "-U", ROLE, f"--pwfile={pwfile}"]
        _run_as_server_user(
            [*initdb, "--auth=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync"], root
        )
        pwfile.unlink()
        conf = server.data / "postgresql.conf"
        base_conf = conf.read_text()
        for attempt in range(3):  # a free port may be taken again before the server binds it
            server.port = _free_port()
            conf.write_text(base_conf + SETTINGS.format(port=server.port, sockets=root))
            log = root / f"server-{attempt}.log"
            started = _run_as_server_user(
                [*server.pg_ctl, "-l", str(log), "-w", "-t", "60", "start"], root, check=False
            )
            if started.returncode == 0:
                break
        else:
            tail = log.read_text()[-2000:] if log.exists() else started.stderr[-2000:]
            raise RuntimeError(
                f"PostgreSQL did not start (pg_ctl exit {started.returncode}):\n{tail}"
            )
        create_database(server.url, ROLE)
    except BaseException:
        server.stop()
        raise
    return server


def _ensure_binaries() -> None:
    if (PG_BIN / "pg_ctl").exists():
        return
    why = "not installed"
    if os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for cmd in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "postgresql"],
        ):
            r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                why = f"`{' '.join(cmd)}` failed: {(r.stderr or r.stdout).strip()[-500:]}"
                break
        if (PG_BIN / "pg_ctl").exists():
            return
    raise RuntimeError(
        f"PostgreSQL 15 server binaries not found in {PG_BIN} ({why}); install the Debian "
        "package `postgresql` (bash scripts/setup.sh does) or set ABL_PG_BIN"
    )


def _run_as_server_user(
    cmd: list[str], cwd: Path, check: bool = True
) -> subprocess.CompletedProcess:
    if os.geteuid() == 0:
        cmd = ["runuser", "-u", PG_USER, "--", *cmd]
    r = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=120)
    if check and r.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {r.returncode}):\n{r.stderr[-2000:]}")
    return r


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """`postgresql+psycopg://abl:PASSWORD@127.0.0.1:PORT/abl` on a server started for the
    session; the tests that use it fail (never skip) when it cannot start."""
    try:
        server = start_postgres()
    except (RuntimeError, OSError, subprocess.SubprocessError) as e:
        why = str(e)
    else:
        why = None
    if why is not None:
        pytest.fail(f"PostgreSQL test server: {why}", pytrace=False)
    try:
        yield server.url
    finally:
        server.stop()


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgres"])
def storage(request) -> dict:
    """Experiments-file overrides, one test per backend: SQLite files in the output folder, or
    two fresh databases (Optuna, results) on the test server. Import it with postgres_url."""
    if request.param == "sqlite":
        return {}
    server = request.getfixturevalue("postgres_url")
    tag = f"t{next(_databases)}_{os.getpid()}"
    return {
        "storage": {
            "optuna": create_database(server, f"{tag}_optuna"),
            "results": create_database(server, f"{tag}_results"),
            "mlflow": None,
        }
    }
