"""Alembic migrations of the results database, configured in code (no alembic.ini).

`db.engine.init_db` runs them; to write a new revision after changing `db/schema.py`:

    python -m db.migrations --url sqlite:///scratch.db upgrade head
    python -m db.migrations --url sqlite:///scratch.db revision --autogenerate -m "what changed"
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from alembic.config import Config

SCRIPT_DIR = Path(__file__).resolve().parent
# Not alembic's default name: Optuna's RDB storage keeps its own `alembic_version` table, and
# both may share one database.
VERSION_TABLE = "abl_alembic_version"
BASE_REVISION = "0001"  # the schema that `Base.metadata.create_all` used to make
# The tables and columns of BASE_REVISION: a database that has exactly these and no version
# table was made by create_all and is adopted (stamped) as BASE_REVISION. Frozen: never edit.
BASE_COLUMNS = {
    "studies": {"id", "name", "created", "spec_json"},
    "trials": {
        *("id", "study_id", "key", "seed", "axis", "setting", "settings_json", "config_json"),
        *("status", "error", "worker", "mlflow_run_id", "optuna_trial", "started", "finished"),
        "wall_s",
    },
    "metrics": {"id", "trial_id", "task", "metric", "value"},
}


def include_name(name: str | None, type_: str, _parent_names: Any) -> bool:
    """Only the results tables: other tools (Optuna, MLflow) may share the database."""
    from db.schema import Base

    return type_ != "table" or name in Base.metadata.tables


def alembic_config(url: str | None = None, connection: Any = None) -> Config:
    """An Alembic config for this package: on an open connection, or on a URL."""
    cfg = Config()
    cfg.set_main_option("script_location", str(SCRIPT_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision of the scripts."""
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def revision_and_diffs(engine: Any) -> tuple[str | None, list]:
    """A database's revision and its differences from the models (empty when in step)."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from db.schema import Base

    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn,
            opts={
                "version_table": VERSION_TABLE,
                "include_name": include_name,
                "compare_type": True,
            },
        )
        return ctx.get_current_revision(), compare_metadata(ctx, Base.metadata)
