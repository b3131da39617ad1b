"""Unlabelled pretraining audio: long recordings that no probe task uses.

Short effects padded to the crop length teach the JEPA to predict padding, so the corpus adds
long-form music and ambience from the same packages; none of it appears in a probe task, so it
cannot leak test clips into pretraining.
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

from model.errors import AblError
from model.sources import RawClip


class ZeroADLongform:
    """0 A.D. music tracks and ambient loops (`0ad-data`), all in the train split."""

    name = "corpus-0ad"
    description = "0 A.D. music and ambience (unlabelled pretraining audio)"
    packages = ("0ad-data",)
    archive = Path("/usr/share/games/0ad/mods/public/public.zip")
    max_seconds = 600.0
    unlabelled = True  # pretraining audio only: never a probe task
    prefixes = {"music": "audio/music/", "ambient": "audio/ambient/"}

    def clips(self) -> list[RawClip]:
        if not self.archive.is_file():
            raise AblError(
                f"{self.archive}: 0 A.D. audio not found; install the Debian package 0ad-data "
                "(scripts/setup.sh does)"
            )
        with zipfile.ZipFile(self.archive) as zf:
            names = sorted(n for n in zf.namelist() if n.endswith(".ogg"))
        return [
            RawClip(n[len("audio/") :], kind, n, self._reader(n), split="train")
            for kind, prefix in self.prefixes.items()
            for n in names
            if n.startswith(prefix)
        ]

    _zip: zipfile.ZipFile | None = None

    def _reader(self, member: str) -> Callable[[], bytes]:
        def read() -> bytes:
            if self._zip is None:
                self._zip = zipfile.ZipFile(self.archive)
            return self._zip.read(member)

        return read
