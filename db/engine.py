"""Engine and session helpers; the engine is always passed in, never global."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.schema import Base
from model.errors import AblError

# Query parameters that carry a secret: libpq's password and sslpassword, and the usual
# spellings of keys and tokens a driver or proxy may take in the URL.
_SECRET = ("pass", "pwd", "secret", "token", "key")


def mask_url(url: str) -> str:
    """The URL with any password hidden, in its user part or its query, for logs and errors."""
    try:
        parsed = make_url(url)
        query = {
            k: "***" if any(s in k.lower() for s in _SECRET) else v for k, v in parsed.query.items()
        }
        shown = parsed.set(query=query).render_as_string(hide_password=True)
        return shown.replace("%2A%2A%2A", "***")
    except Exception:  # an unparsable URL: show nothing that might be a secret
        return "<unparsable database URL>"


def make_engine(url: str) -> Engine:
    """An engine for SQLite (WAL, busy timeout) or PostgreSQL (pre-ping for idle drops)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 60})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(conn, _record) -> None:  # noqa: ANN001
            cur = conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=60000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    return create_engine(url, pool_pre_ping=True)


# Key of the PostgreSQL advisory lock that serialises migrations ("abl.db" in ASCII).
_PG_MIGRATION_LOCK = int.from_bytes(b"abl.db", "big")
# SQLite waits for its write lock up to the busy timeout; a few retries cover the rest
# (switching a new file to WAL, a lock taken between two statements).
_SQLITE_ATTEMPTS = 5


def init_db(engine: Engine) -> None:
    """Bring the results database to the newest schema (`alembic upgrade head`).

    A new database gets every table; one made by the old `create_all` (the tables, no version
    table) is stamped at the base revision, then upgraded. Workers that start together are
    serialised: by an advisory lock on PostgreSQL, by the write lock (BEGIN IMMEDIATE) and a retry
    on SQLite. A database that cannot be reached is a one-line AblError, password masked.
    """
    for attempt in range(_SQLITE_ATTEMPTS):
        try:
            with engine.connect() as conn:
                _migrate(conn)
            return
        except OperationalError as e:
            if _sqlite_contention(engine, e) and attempt + 1 < _SQLITE_ATTEMPTS:
                time.sleep(0.1 * 2**attempt + random.random() * 0.1)
                continue
            raise AblError(
                f"results database {mask_url(str(engine.url))} cannot be reached "
                f"({driver_reason(e, engine.url.password)}); check `storage.results` in the "
                "experiments file"
            ) from None


def _migrate(conn: Connection) -> None:
    """Upgrade to head in one transaction that holds the migration lock from its start."""
    from alembic import command

    from db.migrations import BASE_REVISION, VERSION_TABLE, alembic_config

    if conn.dialect.name == "sqlite":
        conn.exec_driver_sql("BEGIN IMMEDIATE")  # the write lock before looking at anything
    elif conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _PG_MIGRATION_LOCK})
    cfg = alembic_config(connection=conn)
    tables = set(inspect(conn).get_table_names())
    if VERSION_TABLE not in tables and tables & set(Base.metadata.tables):
        _check_created_by_create_all(conn, tables)
        command.stamp(cfg, BASE_REVISION)
    command.upgrade(cfg, "head")
    conn.commit()


def _check_created_by_create_all(conn: Connection, tables: set[str]) -> None:
    """Refuse to stamp results tables that are not exactly those of the base revision."""
    from db.migrations import BASE_COLUMNS

    insp = inspect(conn)
    found = {
        t: {c["name"] for c in insp.get_columns(t)} for t in sorted(tables & set(BASE_COLUMNS))
    }
    if found != BASE_COLUMNS:
        odd = sorted(t for t in BASE_COLUMNS if found.get(t) != BASE_COLUMNS[t])
        raise AblError(
            f"results database {mask_url(str(conn.engine.url))} has results tables without a "
            f"migration history that do not match abl's first schema (tables {', '.join(odd)}); "
            "point `storage.results` at its own database (not Optuna's or MLflow's: they have "
            "tables of these names) or move this one aside"
        )


def _sqlite_contention(engine: Engine, e: OperationalError) -> bool:
    """A transient SQLite error from another process working on the same file."""
    msg = str(e.orig).lower()
    return engine.dialect.name == "sqlite" and any(
        s in msg for s in ("locked", "busy", "already exists")
    )


def driver_reason(e: BaseException, password: str | None = None) -> str:
    """The driver's error under a SQLAlchemy one (or the error itself) in one short line, the
    password (if any) removed: says why a server refused, e.g. too many clients."""
    orig = getattr(e, "orig", None) or e
    detail = " ".join(str(orig).split())[:200]
    if password:
        detail = detail.replace(str(password), "***")
    return f"{type(orig).__name__}: {detail}" if detail else type(orig).__name__


def url_password(url: str) -> str | None:
    """The password of a database URL, to keep it out of messages; None if it has none."""
    try:
        return make_url(url).password
    except Exception:  # an unparsable URL is reported as such elsewhere
        return None


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A transaction that commits on success and rolls back on any error."""
    with sessionmaker(engine, expire_on_commit=False)() as session, session.begin():
        yield session
