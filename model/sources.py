"""Task sources: where the labelled clips of each probe task come from.

A source lists raw clips (a name, a label, a group and a way to read the bytes); preparation in
`model.datasets` decodes, splits and stores them. Sources read Debian packages installed by the
README's set-up, so nothing is downloaded at run time.
"""

from __future__ import annotations

import re
import subprocess
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from model.errors import AblError


@dataclass(frozen=True)
class RawClip:
    name: str  # unique within the task, used for the prepared file name
    label: str
    group: str  # clips sharing a group never straddle two splits
    read: Callable[[], bytes] = field(repr=False, compare=False)
    split: str | None = None  # a data set's own split ("train" | "val" | "test"), if it has one


class TaskSource(Protocol):
    name: str
    description: str
    packages: tuple[str, ...]  # Debian packages the audio comes from (versions are recorded)

    def clips(self) -> list[RawClip]: ...


def package_version(package: str) -> str | None:
    try:
        out = subprocess.run(
            ["dpkg-query", "-W", "-f", "${Version}", package],
            capture_output=True,
            text=True,
            check=False,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None


class ZeroADEffects:
    """0 A.D. sound effects (`0ad-data`): ten folder classes of real recorded effects."""

    name = "env-sfx"
    description = "0 A.D. sound effects, 10 classes; group = sound stem without trailing digits"
    packages = ("0ad-data",)
    archive = Path("/usr/share/games/0ad/mods/public/public.zip")
    folders = {
        "impact": "audio/attack/impact/",
        "weapon": "audio/attack/weapon/",
        "fire": "audio/attack/fire/",
        "human": "audio/actor/human/",
        "fauna": "audio/actor/fauna/",
        "steps": "audio/actor/singlesteps/",
        "gathering": "audio/resource/gathering/",
        "mining": "audio/resource/mining/",
        "construction": "audio/resource/construction/",
        "lumbering": "audio/resource/lumbering/",
    }

    def clips(self) -> list[RawClip]:
        if not self.archive.is_file():
            raise AblError(
                f"{self.archive}: 0 A.D. audio not found; install the Debian package 0ad-data "
                "(scripts/setup.sh does)"
            )
        with zipfile.ZipFile(self.archive) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".ogg"))
        out = []
        for label, prefix in self.folders.items():
            for n in names:
                if not n.startswith(prefix):
                    continue
                stem = Path(n).stem
                # camel_10 and camel_11 are takes of one sound: group them.
                group = label + "/" + re.sub(r"[_\-\s]*\d+$", "", stem)
                out.append(RawClip(n[len("audio/") :], label, group, self._reader(n)))
        return out

    def _reader(self, member: str) -> Callable[[], bytes]:
        def read() -> bytes:
            # Opening the 275 MB archive parses its whole directory: do it once per process.
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.archive)
            return self._zip.read(member)

        return read

    _zip: zipfile.ZipFile | None = None


TASKS: dict[str, ZeroADEffects] = {"env-sfx": ZeroADEffects()}


TASKS: dict[str, TaskSource] = {"env-sfx": ZeroADEffects()}
