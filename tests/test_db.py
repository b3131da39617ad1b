"""Migrations of the results database on SQLite: a fresh file, an old create_all file, twice,
and two processes at once."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import pytest
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from db import queries
from db.engine import init_db, make_engine
from db.migrations import (
    BASE_REVISION,
    SCRIPT_DIR,
    VERSION_TABLE,
    alembic_config,
    head_revision,
    revision_and_diffs,
)
from model.errors import AblError

ROOT = Path(__file__).resolve().parents[1]
TABLES = {"studies", "trials", "metrics"}


def add_results(engine: Engine) -> None:
    sid = queries.ensure_study(engine, "s", "{}")
    tid = queries.start_trial(engine, sid, "k1", 0, "masking", "time", {}, {}, "w")
    queries.finish_trial(engine, tid, {("env-sfx", "acc"): 0.5}, 1.0, None)


def add_results_sql(engine: Engine) -> None:
    """What abl wrote before there were curves, in the first revision's tables."""
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO studies VALUES (1, 's', '2026-01-01 00:00:00', '{}')"))
        conn.execute(
            text(
                "INSERT INTO trials (id, study_id, key, seed, axis, setting, settings_json, "
                "config_json, status, wall_s) VALUES (1, 1, 'k1', 0, 'masking', 'time', '{}', "
                "'{}', 'done', 1.0)"
            )
        )
        conn.execute(text("INSERT INTO metrics VALUES (1, 1, 'env-sfx', 'acc', 0.5)"))


def test_scripts_are_found_from_the_package() -> None:
    assert SCRIPT_DIR == ROOT / "db" / "migrations"
    assert (SCRIPT_DIR / "env.py").is_file() and (SCRIPT_DIR / "script.py.mako").is_file()
    assert ScriptDirectory.from_config(alembic_config()).get_base() == BASE_REVISION


def test_fresh_file_is_migrated_to_head_and_matches_the_models(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}")
    init_db(engine)
    assert TABLES | {VERSION_TABLE} <= set(inspect(engine).get_table_names())
    assert revision_and_diffs(engine) == (head_revision(), [])
    add_results(engine)
    assert queries.export_frame(engine)["value"].tolist() == [0.5]


def test_migrating_twice_changes_nothing(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}")
    init_db(engine)
    add_results(engine)
    init_db(engine)
    init_db(make_engine(str(engine.url)))
    assert revision_and_diffs(engine) == (head_revision(), [])
    assert len(queries.export_frame(engine)) == 1
    with engine.connect() as conn:
        assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar() == 1


def test_database_made_by_create_all_is_stamped_then_upgraded(tmp_path: Path) -> None:
    from alembic import command

    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}")
    # What init_db did before migrations: the tables of the base revision (the models of
    # that time), with no migration history.
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), BASE_REVISION)
        conn.execute(text(f"DROP TABLE {VERSION_TABLE}"))
    add_results_sql(engine)
    assert VERSION_TABLE not in inspect(engine).get_table_names()
    init_db(engine)
    assert revision_and_diffs(engine) == (head_revision(), [])
    assert queries.export_frame(engine)["value"].tolist() == [0.5]  # the results are kept


def test_database_at_the_first_revision_gains_the_curve_points(tmp_path: Path) -> None:
    from alembic import command

    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), BASE_REVISION)
    assert "curve_points" not in inspect(engine).get_table_names()
    add_results_sql(engine)
    init_db(engine)
    assert revision_and_diffs(engine) == (head_revision(), [])
    assert queries.export_frame(engine)["value"].tolist() == [0.5]


def test_foreign_tables_are_left_alone(tmp_path: Path) -> None:
    """Optuna may share the database, with its own alembic_version table."""
    engine = make_engine(f"sqlite:///{tmp_path / 'shared.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE alembic_version (version_num VARCHAR(32) PRIMARY KEY)"))
        conn.execute(text("INSERT INTO alembic_version VALUES ('v3.2.0.a')"))
        conn.execute(text("CREATE TABLE optuna_like (id INTEGER PRIMARY KEY)"))
    init_db(engine)
    assert revision_and_diffs(engine) == (head_revision(), [])
    with engine.connect() as conn:
        assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar() == "v3.2.0.a"
    assert "optuna_like" in inspect(engine).get_table_names()


def test_unknown_results_tables_are_refused(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}")
    with engine.begin() as conn:
        conn.execute(text("CREATE TABLE studies (id INTEGER PRIMARY KEY, title TEXT)"))
    with pytest.raises(AblError, match=r"do not match .*tables metrics, studies, trials") as e:
        init_db(engine)
    assert "\n" not in str(e.value)
    assert VERSION_TABLE not in inspect(engine).get_table_names()  # nothing stamped


def test_unreachable_file_is_one_clear_line(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'missing-dir' / 'results.db'}")
    with pytest.raises(AblError, match=r"results database sqlite:///.* cannot be reached") as e:
        init_db(engine)
    assert "\n" not in str(e.value) and "storage.results" in str(e.value)


WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from db.engine import init_db, make_engine
    files, go = sys.argv[1:-1], Path(sys.argv[-1])
    print("ready", flush=True)
    while not go.exists():
        time.sleep(0.001)
    for f in files:
        init_db(make_engine(f"sqlite:///{f}"))
    """
)


def test_two_processes_migrate_the_same_files_at_once(tmp_path: Path) -> None:
    """Workers started together each run init_db on the same new files: none may fail."""
    files = [str(tmp_path / f"results-{i}.db") for i in range(6)]
    go = tmp_path / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *files, str(go)],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:  # both imported and waiting: start them in the same millisecond
        assert p.stdout.readline().strip() == "ready", p.stderr.read()
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    for f in files:
        engine = make_engine(f"sqlite:///{f}")
        assert revision_and_diffs(engine) == (head_revision(), [])
        with engine.connect() as conn:
            assert conn.execute(text(f"SELECT count(*) FROM {VERSION_TABLE}")).scalar() == 1


def test_a_worker_waits_for_a_writer_holding_the_file(tmp_path: Path) -> None:
    """Another process holding the write lock is waited for, not reported as an error.

    Ordered, not timed: the holder keeps the lock until told to let go, and `init_db` must
    return only after that (and without an error)."""
    path = tmp_path / "results.db"
    engine = make_engine(f"sqlite:///{path}")
    init_db(engine)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sqlite3, sys\n"
            "c = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
            "c.execute('BEGIN IMMEDIATE'); print('locked', flush=True)\n"
            "sys.stdin.readline(); c.execute('COMMIT'); print('released', flush=True)",
            str(path),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    let_go = threading.Event()
    outcome: dict[str, object] = {}

    def second_worker() -> None:
        try:
            init_db(make_engine(f"sqlite:///{path}"))
            outcome["released_first"] = let_go.is_set()
        except BaseException as e:  # reported below, in the test's thread
            outcome["error"] = e

    waiter = threading.Thread(target=second_worker)
    waiter.start()
    waiter.join(timeout=1.0)
    assert waiter.is_alive() and not outcome  # still waiting: neither done nor failed
    let_go.set()
    holder.stdin.write("go\n")
    holder.stdin.flush()
    assert holder.stdout.readline().strip() == "released"
    waiter.join(timeout=120)
    assert not waiter.is_alive()
    assert outcome == {"released_first": True}
    assert holder.wait(timeout=30) == 0


def test_database_of_the_previous_release_gains_the_pretraining_key_and_keeps_every_row(
    tmp_path: Path,
) -> None:
    """Revision 0003 (the release before two-stage keys): a finished trial with a metric, a
    curve point and per-clip predictions upgrades to head with every row kept, its pretraining
    key unknown (NULL: its checkpoint is named by its trial key)."""
    from alembic import command

    engine = make_engine(f"sqlite:///{tmp_path / 'results.db'}")
    with engine.begin() as conn:
        command.upgrade(alembic_config(connection=conn), "0003")
    assert "pretrain" not in {c["name"] for c in inspect(engine).get_columns("trials")}
    add_results_sql(engine)
    blob = bytes(4)
    with engine.begin() as conn:
        conn.execute(text("INSERT INTO curve_points VALUES (1, 1, 'loss', 0, 0.25)"))
        conn.execute(
            text("INSERT INTO predictions VALUES (1, 1, 'env-sfx', '[\"a\"]', :b, :b, :b, :b, :b)"),
            {"b": blob},
        )
    with engine.connect() as conn:
        counts = {
            t: conn.execute(text(f"SELECT count(*) FROM {t}")).scalar()
            for t in ("studies", "trials", "metrics", "curve_points", "predictions")
        }
    init_db(engine)
    assert revision_and_diffs(engine) == (head_revision(), [])
    with engine.connect() as conn:
        for table, n in counts.items():
            assert conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() == n, table
        assert conn.execute(text("SELECT key, pretrain FROM trials")).all() == [("k1", None)]
    assert queries.export_frame(engine)["value"].tolist() == [0.5]
