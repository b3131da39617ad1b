"""What a study needs before it writes anything: reachable storage, a writable output folder,
data sets whose folders exist in the layout their format reads, and every task its recipes
read prepared.

`abl run` calls `prepare_study` after the experiments file is validated and before the output
folder or a database is created, so a wrong root or an unreachable server is one line with
nothing left behind. The tasks a recipe names that are not prepared yet are prepared then
(as `abl data prepare` does, with its progress lines): the check runs first for all of them,
so a broken data set is found before minutes go into decoding the others.
"""

from __future__ import annotations

import os
import socket
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from model.config import TaskDef
from model.data.datasets import (
    CHANGED,
    META,
    changed_since_prepared,
    load_task,
    prepare_task,
    resolve_data_root,
    task_source,
    write_corpus_manifest,
)
from model.errors import AblError
from orchestrator.grid import DESIGN_CELLS, study_tasks
from orchestrator.spec import StudySpec

Log = Callable[[str], None]

# A server that does not answer within this many seconds counts as unreachable: a firewall
# that drops packets would otherwise hold `abl run` for minutes before the first line.
CONNECT_TIMEOUT_S = 10


@dataclass(frozen=True)
class Prepared:
    """What `prepare_study` found: the data cache, and the tasks it prepared just now."""

    data_root: Path
    prepared: tuple[str, ...]


def _writable_folder(path: Path) -> str | None:
    """Why `path` cannot be created or written as a folder, or None when it can. Nothing is
    created: the nearest existing ancestor is asked instead."""
    if path.exists():
        if not path.is_dir():
            return "it is a file, not a folder"
        return None if os.access(path, os.W_OK | os.X_OK) else "permission denied"
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        return f"{parent} is a file, not a folder"
    return None if os.access(parent, os.W_OK | os.X_OK) else f"{parent} is not writable"


def check_output(spec: StudySpec) -> None:
    why = _writable_folder(spec.output)
    if why:
        raise AblError(
            f"{spec.source}: output folder {spec.output} is not writable ({why}); choose "
            "another with `output:` or --output"
        )


SQLITE_HEADER = b"SQLite format 3\x00"  # the first 16 bytes of every SQLite database file


def _not_sqlite(file: Path) -> str | None:
    """Why an existing `file` cannot be opened as a SQLite database, or None (also when it
    does not exist yet, or is empty: SQLite makes a database of either)."""
    if not file.exists():
        return None
    if not file.is_file():
        return "is not a file"
    try:
        with file.open("rb") as f:
            head = f.read(len(SQLITE_HEADER))
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if head and head != SQLITE_HEADER:
        return "is not a SQLite database (its first bytes are not SQLite's header)"
    return None


def _reach_database(url: str, key: str, source: str, connect: bool = True) -> None:
    """Connect once to a database server; check a SQLite file's folder is there. Without
    `connect`, only that the URL parses and its Python driver imports (no server, no file)."""
    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    from db.engine import driver_reason, mask_url

    try:
        parsed = make_url(url)
        parsed.get_dialect()
    except Exception:  # unparsable, or a database SQLAlchemy does not know
        raise AblError(
            f"{source}: storage.{key} = {mask_url(url)} is not a database URL; write one like "
            f"postgresql://user@host/abl_{key}"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        if not connect:
            return  # sqlite3 comes with Python
        file = Path(parsed.database).expanduser().absolute()
        why = _not_sqlite(file)
        if why:
            raise AblError(
                f"{source}: storage.{key} = {url}: {file} {why}; move it away or point "
                f"storage.{key} (or the output folder) elsewhere"
            )
        folder = file.parent
        if not folder.is_dir():
            raise AblError(
                f"{source}: storage.{key} = {url}: folder {folder} does not exist; create it "
                "or point storage." + key + " elsewhere"
            )
        if not os.access(folder, os.W_OK | os.X_OK):
            raise AblError(
                f"{source}: storage.{key} = {url}: folder {folder} is not writable; point "
                f"storage.{key} at a folder you can write"
            )
        return
    server = parsed.get_backend_name() in ("postgresql", "mysql")
    args = {"connect_timeout": CONNECT_TIMEOUT_S} if server else {}
    try:
        engine = create_engine(url, connect_args=args)
    except ModuleNotFoundError as e:
        raise AblError(
            f"{source}: storage.{key} {mask_url(url)} needs the Python driver {e.name}, which "
            "is not installed; install it in the environment or choose another URL"
        ) from None
    if not connect:
        engine.dispose()  # made without connecting: the driver imported, no server asked
        return
    try:
        with engine.connect():
            pass
    except Exception as e:  # the drivers' errors differ; the cause is the same
        raise AblError(
            f"{source}: storage.{key} {mask_url(url)} cannot be reached "
            f"({driver_reason(e, parsed.password)}); check `storage.{key}` in the experiments "
            "file and that the server is up"
        ) from None
    finally:
        engine.dispose()


def _reach_server(uri: str, key: str, source: str) -> None:
    """An HTTP(S) tracking server answers on its port (MLflow's client would retry for
    minutes before saying so)."""
    parts = urlsplit(uri)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((parts.hostname or "", port), CONNECT_TIMEOUT_S):
            pass
    except OSError as e:
        raise AblError(
            f"{source}: storage.{key} {parts.scheme}://{parts.hostname}:{port} cannot be "
            f"reached ({e.strerror or type(e).__name__}); check `storage.{key}` in the "
            "experiments file and that the server is up"
        ) from None


def _creatable(folder: Path) -> str | None:
    """Why a file cannot be created in `folder` (made with its parents where missing), or
    None. A probe folder is made and removed at once in the nearest existing one: permission
    bits do not tell for root, nor under /proc."""
    import tempfile

    why = _writable_folder(folder)
    if why:
        return why
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".abl-probe-", dir=probe))
    except OSError as e:
        return f"{probe}: {e.strerror or type(e).__name__}"
    return None


def _check_journal(url: str, source: str) -> None:
    """Optuna's journal file can be opened where the URL puts it (the ledger makes its
    folder): an absolute path (`abl worker --storage` is not checked at load), not a folder,
    in a folder this process can write."""
    from db.engine import mask_url

    path = Path(url.removeprefix("journal://"))
    if not path.is_absolute():
        raise AblError(
            f"{source}: storage.optuna = {mask_url(url)}: a journal file needs an absolute path "
            "on the shared filesystem, e.g. journal:///shared/abl-out/optuna.journal"
        )
    if path.is_dir():
        raise AblError(
            f"{source}: storage.optuna = {mask_url(url)} is a folder; name a file in it, e.g. "
            f"journal://{path / 'optuna.journal'}"
        )
    if path.exists():
        why = None if os.access(path, os.W_OK) else "permission denied"
    else:
        why = _creatable(path.parent)
    if why:
        raise AblError(
            f"{source}: storage.optuna = {mask_url(url)}: the journal file cannot be written "
            f"in {path.parent} ({why}); point storage.optuna at a folder you can write"
        )


def check_storage(
    spec: StudySpec,
    keys: tuple[str, ...] = ("optuna", "results", "mlflow"),
    connect: bool = True,
) -> None:
    """Every database the study names is reachable, and the journal file's folder writable,
    before anything is created. The default SQLite files live under the output folder, which
    `check_output` covers. Without `connect` (--dry-run), only that each database's Python
    driver imports: nothing is reached or probed."""
    for key in keys:
        url = getattr(spec.storage, key)
        if url is None:  # the default SQLite file under the output folder
            file = _default_file(spec, key)
            why = file and _not_sqlite(file)
            if why:
                raise AblError(
                    f"{spec.source}: {file} {why}; move it away, or choose another output "
                    "folder with `output:` or --output"
                )
            continue
        scheme = url.split(":", 1)[0].lower()
        if scheme == "journal":
            if connect and key == "optuna":
                _check_journal(url, spec.source)
            continue
        if key == "mlflow" and scheme in ("http", "https"):
            if connect:
                _reach_server(url, key, spec.source)
        elif key != "mlflow" or "+" in scheme or scheme in ("sqlite", "postgresql", "mysql"):
            _reach_database(url, key, spec.source, connect)


def _default_file(spec: StudySpec, key: str) -> Path | None:
    """The SQLite file the study keeps `key`'s database in when the file names none."""
    from sqlalchemy.engine import make_url

    url = {"optuna": spec.optuna_url, "results": spec.results_url, "mlflow": spec.mlflow_uri}[key]
    return Path(make_url(url).database) if url.startswith("sqlite") else None


def _layout_of(t: TaskDef) -> str:
    from model.data.byo import FORMATS

    return FORMATS[t.format.strip().lower()].layout


def unprepared(spec: StudySpec, data_root: Path) -> tuple[list[str], list[str]]:
    """The tasks the study reads that are not prepared in `data_root`, and the prepared ones
    whose source changed since. A source that cannot be read: AblError naming the task."""
    declared = spec.baseline.data.tasks
    names = study_tasks(spec)
    missing = [n for n in names if not (data_root / "tasks" / n / META).is_file()]
    changed = []
    for name in names:
        try:
            if name not in missing and changed_since_prepared(name, data_root, declared):
                changed.append(name)
        except AblError as e:
            raise AblError(f"{spec.source}: task {name!r} cannot be read: {e}") from None
    return missing, changed


def check_roots(spec: StudySpec) -> None:
    """Each data set the file declares (`data.tasks`) has its root on this machine."""
    for t in spec.baseline.data.tasks:
        if not Path(t.root).exists():
            raise AblError(
                f"{spec.source}: baseline.data.tasks.{t.name}.root = {t.root} does not exist; "
                f"point it at the folder that holds {_layout_of(t)}"
            )


def check_data(spec: StudySpec, data_root: Path) -> tuple[list[str], list[str]]:
    """The tasks the study reads that are not prepared yet, and those whose source changed
    since they were prepared, each checked (its folder, its layout, every file its metadata
    names); and each declared data set's root exists. Raises AblError naming the experiments
    file, the task and the fix."""
    declared = spec.baseline.data.tasks
    check_roots(spec)
    missing, changed = unprepared(spec, data_root)
    for name in missing:
        try:
            if not task_source(name, declared).clips():
                raise AblError("its source lists no audio")
        except AblError as e:
            raise AblError(
                f"{spec.source}: task {name!r} is not prepared, and cannot be: {e}"
            ) from None
    if missing or changed:
        why = _writable_folder(data_root)
        if why:
            raise AblError(
                f"{spec.source}: data cache {data_root} cannot be written ({why}), so tasks "
                f"{', '.join(missing + changed)} cannot be prepared; set baseline.data.cache "
                "(or $ABL_DATA) to a folder you can write"
            )
    return missing, changed


def never_ran(spec: StudySpec) -> bool:
    """True when the study's results database is a SQLite file that does not exist yet (no
    `abl run` has written it): commands that only read results must not create it."""
    from sqlalchemy.engine import make_url

    url = spec.results_url
    if not url.startswith("sqlite"):
        return False
    file = Path(make_url(url).database or "")
    return not file.is_file() or file.stat().st_size == 0  # empty: SQLite never wrote to it


def check_probes(spec: StudySpec, data_root: Path) -> None:
    """Every prepared probe task holds what the probes of the study's recipes need: under
    `probe.protocol: cv`, `probe.folds` groups of clips (under `data.max_clips_per_class`);
    under `split`, clips in train, val and test. Checked once the tasks are prepared and
    before any trial pretrains (the probe itself would fail only after pretraining)."""
    recipes = [spec.baseline, *(cell[-1] for cell in DESIGN_CELLS[spec.design](spec))]
    needs = {
        (t, r.probe.protocol, r.probe.folds, r.data.max_clips_per_class): None
        for r in recipes
        for t in r.probe.tasks
    }
    declared = spec.baseline.data.tasks
    tasks = {t: load_task(t, data_root, declared) for t, *_ in needs}
    for name, protocol, folds, limit in needs:
        splits = {sp: tasks[name].split(sp, limit) for sp in ("train", "val", "test")}
        if protocol == "split":
            empty = [sp for sp, clips in splits.items() if not clips]
            if empty:
                counts = " / ".join(f"{sp} {len(c)}" for sp, c in splits.items())
                raise AblError(
                    f"{spec.source}: probe.protocol: split needs train, val and test clips, but "
                    f"task {name!r} has {counts}; give it more audio (or its own split), or "
                    "use probe.protocol: cv"
                )
            continue
        clips = [c for part in splits.values() for c in part]
        groups = len({c.group for c in clips})
        most = max(Counter(c.label for c in clips).values())
        # What `model.probe.cv_folds` needs: a group per fold, and a class with a clip in each.
        fits = min(groups, most)
        if fits >= folds:
            continue
        under = f" under data.max_clips_per_class = {limit}" if limit else ""
        fixes = [f"lower probe.folds to {fits}"] if fits >= 3 else ["give it more audio"]
        fixes += ["raise data.max_clips_per_class"] if limit else []
        has = (
            f"has {groups} groups of clips"
            if groups < folds
            else f"has at most {most} clips in a class"
        )
        raise AblError(
            f"{spec.source}: probe.folds = {folds}, but task {name!r} {has}{under}, too few to "
            f"fill {folds} folds; {', '.join(fixes)}, or use probe.protocol: split"
        )


def prepare_study(spec: StudySpec, log: Log = print) -> Prepared:
    """Check storage, the output folder and the data, then prepare the missing tasks."""
    check_storage(spec)
    check_output(spec)
    data_root = resolve_data_root(spec.baseline.data.cache)
    missing, changed = check_data(spec, data_root)
    declared = spec.baseline.data.tasks
    for name in missing + changed:
        if name in changed:
            log(
                f"{name}: {CHANGED}; preparing it again (keys "
                "name data by content: what reads it is computed anew if its audio changed)"
            )
        else:
            log(f"{name}: not prepared yet; preparing it (once, for every study that reads it)")
        try:
            task = prepare_task(name, data_root, log=log, custom=declared, again=True)
        except AblError as e:
            raise AblError(f"{spec.source}: task {name!r} could not be prepared: {e}") from None
        log(f"{name}: {len(task.clips)} clips ready in {task.root}")
    corpus = spec.baseline.data.corpus
    if set(missing + changed) & set(corpus):
        tasks = [load_task(n, data_root, declared) for n in corpus]
        hours = write_corpus_manifest(tasks, data_root / "corpus.csv")
        log(
            f"pretraining corpus: {hours:.2f} h from {', '.join(corpus)} (train splits only), "
            f"listed in {data_root / 'corpus.csv'}"
        )
    check_probes(spec, data_root)
    return Prepared(data_root, tuple(missing + changed))
