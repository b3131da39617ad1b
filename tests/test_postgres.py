"""The results database and the Optuna storage on a real PostgreSQL server (tests/pg.py starts
it on loopback; these tests fail, never skip, when it cannot start)."""

from __future__ import annotations

import itertools
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pandas as pd
import pytest
from sqlalchemy import Engine, inspect, text
from sqlalchemy.engine import make_url

from db import queries
from db.engine import init_db, make_engine, mask_url
from db.migrations import (
    BASE_REVISION,
    VERSION_TABLE,
    alembic_config,
    head_revision,
    revision_and_diffs,
)
from model.errors import AblError
from tests.pg import create_database, postgres_url  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
_names = itertools.count()


@pytest.fixture
def db_url(postgres_url: str) -> str:  # noqa: F811
    """A new, empty database on the session's server."""
    return create_database(postgres_url, f"t{next(_names)}")


@pytest.fixture
def engine(db_url: str):
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


def test_server_is_loopback_only_and_wants_the_password(postgres_url: str) -> None:  # noqa: F811
    url = make_url(postgres_url)
    assert url.host == "127.0.0.1" and url.password
    wrong = make_engine(url.set(password="not-it").render_as_string(hide_password=False))
    with pytest.raises(AblError, match="password authentication failed"):
        init_db(wrong)
    wrong.dispose()


def test_migration_matches_the_models(engine: Engine) -> None:
    init_db(engine)
    init_db(engine)  # idempotent
    assert revision_and_diffs(engine) == (head_revision(), [])
    assert {"studies", "trials", "metrics", VERSION_TABLE} <= set(inspect(engine).get_table_names())


def test_database_made_by_create_all_is_stamped_then_upgraded(engine: Engine) -> None:
    from alembic import command

    # What init_db did before migrations: the tables of the base revision (the models of that
    # time), with no migration history.
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), BASE_REVISION)
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
    sid = queries.ensure_study(engine, "old", "{}")
    init_db(engine)
    assert revision_and_diffs(engine) == (head_revision(), [])
    assert queries.ensure_study(engine, "old", "{}") == sid


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from db.engine import init_db, make_engine
    url, go = sys.argv[1], Path(sys.argv[2])
    engine = make_engine(url)
    with engine.connect():  # connected before the start signal
        pass
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    init_db(engine)
    """
)


def test_two_processes_migrate_one_database_at_once(db_url: str, tmp_path: Path) -> None:
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, db_url, str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    engine = make_engine(db_url)
    assert revision_and_diffs(engine) == (head_revision(), [])
    engine.dispose()


def test_queries_round_trip(engine: Engine) -> None:
    init_db(engine)
    sid = queries.ensure_study(engine, "masking", '{"v": 1}')
    assert queries.ensure_study(engine, "masking", '{"v": 2}') == sid
    settings = {"masking": "time"}
    t1 = queries.start_trial(engine, sid, "k1", 0, "masking", "time", settings, {"a": 1}, "w1", 3)
    t2 = queries.start_trial(engine, sid, "k2", 0, "baseline", "-", {}, {}, "w2")
    t3 = queries.start_trial(engine, sid, "k3", 0, "reference", "-", {}, {}, "w2")
    queries.finish_trial(engine, t1, {("env-sfx", "acc"): 0.75, ("train", "loss"): 1.5}, 2.0, "r")
    queries.finish_trial(engine, t2, {}, 1.0, None, error="boom")
    # A retry of the failed trial resets it and keeps its id.
    assert queries.start_trial(engine, sid, "k2", 0, "baseline", "-", {}, {}, "w3") == t2
    queries.finish_trial(engine, t3, {("env-sfx", "acc"): 0.25}, 4.0, None)

    df = queries.results_frame(engine, "masking")
    rows = df[df.key == "k1"].sort_values("task")
    assert rows[["task", "metric", "value"]].values.tolist() == [
        ["env-sfx", "acc", 0.75],
        ["train", "loss", 1.5],
    ]
    assert set(rows.settings_json) == {'{"masking": "time"}'}
    export = queries.export_frame(engine, "masking")
    assert list(export.columns[:9]) == queries.RESULT_COLUMNS
    (k2,) = export[export.key == "k2"].itertuples()
    assert k2.status == "running" and pd.isna(k2.task)  # no metrics: one row, task missing
    assert queries.status_counts(engine, "masking") == {"done": 1, "running": 1, "failed": 0}
    assert queries.mean_trial_seconds(engine, "masking") == 2.0
    assert queries.results_frame(engine, "other").empty


def test_password_never_shown(postgres_url: str) -> None:  # noqa: F811
    url = make_url(postgres_url)
    password = url.password
    assert password not in mask_url(postgres_url) and "***" in mask_url(postgres_url)
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    dead = make_engine(url.set(port=closed).render_as_string(hide_password=False))
    with pytest.raises(AblError) as e:
        init_db(dead)
    msg = str(e.value)
    assert msg.startswith(f"results database postgresql+psycopg://abl:***@127.0.0.1:{closed}/")
    assert "cannot be reached" in msg and "storage.results" in msg
    assert password not in msg and "\n" not in msg


def test_optuna_rdb_storage_on_the_same_server(postgres_url: str, engine: Engine) -> None:  # noqa: F811
    """The Optuna ledger in its own database beside the results database."""
    init_db(engine)
    optuna_url = create_database(postgres_url, f"optuna{next(_names)}")
    storage = optuna.storages.RDBStorage(optuna_url, engine_kwargs={"pool_pre_ping": True})
    study = optuna.create_study(study_name="masking", storage=storage)
    study.enqueue_trial({"x": 3})

    again = optuna.storages.RDBStorage(optuna_url, engine_kwargs={"pool_pre_ping": True})
    loaded = optuna.load_study(study_name="masking", storage=again)
    (waiting,) = loaded.get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert waiting.system_attrs["fixed_params"] == {"x": 3}
    trial = loaded.ask()  # pops the queued trial (SELECT ... FOR UPDATE on PostgreSQL)
    assert trial.suggest_int("x", 0, 10) == 3
    loaded.tell(trial, 0.5)
    assert [t.value for t in optuna.load_study(study_name="masking", storage=storage).trials] == [
        0.5
    ]
    assert revision_and_diffs(engine) == (head_revision(), [])
    for s in (storage, again):
        s.engine.dispose()

    # Optuna's tables are also named studies and trials: one database cannot hold both.
    shared = make_engine(optuna_url)
    with pytest.raises(AblError, match="do not match abl's first schema.*own database"):
        init_db(shared)
    shared.dispose()
