"""Files the user names with --out: checked before the work, written whole or not at all."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from model.errors import AblError, no_room

if TYPE_CHECKING:
    import pandas as pd

TABLE_SUFFIXES = (".csv", ".parquet")


def check_out(out: Path, suffixes: tuple[str, ...], flag: str = "--out") -> None:
    """A file name `out` can be written as: not a folder, one of `suffixes`, and a parent
    that is (or can be made) a folder. Nothing is created."""
    if out.is_dir():
        raise AblError(
            f"{flag} {out} is a folder; name a file in it, e.g. {out / ('x' + suffixes[0])}"
        )
    if out.suffix.lower() not in suffixes:
        raise AblError(f"{flag} {out}: name a {' or '.join(suffixes)} file")
    parent = out.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise AblError(f"{flag} {out}: {parent} is a file, not a folder; name another file")


def write_whole(out: Path, write: Callable[[Path], None], flag: str = "--out") -> None:
    """`write(tmp)` to a hidden file beside `out`, then renamed onto it: a reader never sees a
    half-written file, and a failed write leaves neither `out` changed nor the hidden file."""
    tmp = out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, out)
    except OSError as e:
        if no_room(e) is not None:
            raise  # the commands' one line about space
        raise AblError(
            f"{flag} {out}: cannot write there ({e.strerror}); name another file"
        ) from None
    finally:
        with contextlib.suppress(OSError):  # gone, or never made (its folder could not be)
            tmp.unlink(missing_ok=True)


def write_frame(df: pd.DataFrame, out: Path, fmt: str) -> None:
    """A table as CSV or Parquet (`fmt`), written whole; a character device (/dev/stdout) is
    a stream, written to as it is."""

    def write(path: Path) -> None:
        df.to_csv(path, index=False) if fmt == "csv" else df.to_parquet(path, index=False)

    if out.is_char_device():
        write(out)
    else:
        write_whole(out, write)
