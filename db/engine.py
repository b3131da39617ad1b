"""Engine and session helpers; the engine is always passed in, never global."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db.schema import Base
from model.errors import AblError


def mask_url(url: str) -> str:
    """The URL with any password hidden, for logs and error messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
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


def init_db(engine: Engine) -> None:
    """Create the tables when missing; a clear error when the database cannot be reached."""
    try:
        Base.metadata.create_all(engine)
    except OperationalError as e:
        raise AblError(
            f"results database {mask_url(str(engine.url))} cannot be reached "
            f"({type(e.orig).__name__}); check `storage.results` in the experiments file"
        ) from None


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A transaction that commits on success and rolls back on any error."""
    with sessionmaker(engine, expire_on_commit=False)() as session, session.begin():
        yield session
