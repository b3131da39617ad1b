"""Alembic environment: runs on the connection that `db.engine.init_db` passes in (inside its
transaction and lock), or opens one on `sqlalchemy.url` for the command line."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine, pool

from db.migrations import VERSION_TABLE, include_name
from db.schema import Base

config = context.config


def _options(dialect: str) -> dict:
    return dict(
        target_metadata=Base.metadata,
        version_table=VERSION_TABLE,
        include_name=include_name,
        compare_type=True,
        render_as_batch=dialect == "sqlite",  # SQLite's ALTER TABLE can do little
    )


def _run(connection: Connection) -> None:
    context.configure(connection=connection, **_options(connection.dialect.name))
    with context.begin_transaction():  # a no-op inside init_db's own transaction
        context.run_migrations()


if context.is_offline_mode():
    url = config.get_main_option("sqlalchemy.url")
    context.configure(url=url, literal_binds=True, **_options(url.split(":")[0].split("+")[0]))
    with context.begin_transaction():
        context.run_migrations()
elif (conn := config.attributes.get("connection")) is not None:
    _run(conn)
else:
    engine = create_engine(config.get_main_option("sqlalchemy.url"), poolclass=pool.NullPool)
    with engine.connect() as conn:
        _run(conn)
        conn.commit()
    engine.dispose()
