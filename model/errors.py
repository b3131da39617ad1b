"""The one error type for problems a user can cause and fix (bad config, missing data), and the
recognition of a write that found no room (a full disk), which is the user's to fix too."""

from __future__ import annotations

import errno
import os

# A write that failed for want of room: the disk (or the quota, or the file size limit) is
# full, or the file system is read-only.
NO_ROOM = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}
NAME_MAX = 255  # bytes in one name of a path, on every filesystem abl writes to


class AblError(Exception):
    """A user-fixable problem; the CLI prints it as one line and exits 2.

    Messages name the file or key at fault and the fix, for example
    ``experiments.yaml: mask.ratio = 1.5 is outside (0, 1); use a value like 0.6``.
    """


def no_room(e: BaseException | None) -> str | None:
    """The one-line reason when `e`, or what caused it, is a write that found no room."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in NO_ROOM:
            where = f" writing {e.filename}" if e.filename else ""
            return f"{os.strerror(e.errno)}{where}"
        if "database or disk is full" in str(e):
            return "database or disk is full"
        e = e.__cause__ or e.__context__
    return None
