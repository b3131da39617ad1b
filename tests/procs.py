"""Helpers for tests that drive real processes: wait for a condition, see who is alive."""

from __future__ import annotations

import time
from pathlib import Path


def wait_for(predicate, timeout: float = 180.0) -> None:  # noqa: ANN001
    """Poll `predicate` every 0.2 s until it holds; AssertionError after `timeout` s."""
    t0 = time.time()
    while not predicate():
        if time.time() - t0 > timeout:
            raise AssertionError("timed out")
        time.sleep(0.2)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state first), None when gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def alive(pid: int) -> bool:
    """Running (a zombie no one has reaped yet counts as gone)."""
    fields = _stat(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def children(pid: int) -> list[int]:
    """Processes whose parent is `pid`, from /proc."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat(int(entry.name))
            if fields is not None and int(fields[1]) == pid:
                kids.append(int(entry.name))
    return kids


def checkpoint_of(out: Path, key: str) -> Path:
    """The checkpoint of the trial `key` of a study writing into `out` (SQLite results): named
    by its pretraining's key, which trials differing only in the probe share."""
    import sqlite3

    try:
        db = sqlite3.connect(f"file:{out / 'results.db'}?mode=ro", uri=True, timeout=60)
        try:
            row = db.execute("select pretrain from trials where key = ?", (key,)).fetchone()
        finally:
            db.close()
    except sqlite3.Error:
        row = None
    return out / "checkpoints" / f"{(row and row[0]) or key}.pt"
