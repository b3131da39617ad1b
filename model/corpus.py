"""Unlabelled pretraining audio: long recordings that no probe task uses.

Short effects padded to the crop length teach the JEPA to predict padding, so the corpus adds
long-form music and ambience from the same packages; none of it appears in a probe task, so it
cannot leak test clips into pretraining.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from model.sources import RawClip


class ZeroADLongform:
    """0 A.D. music tracks and ambient loops (`0ad-data`), all in the train split."""

    name = "corpus-0ad"
    description = "0 A.D. music and ambience (unlabelled pretraining audio)"
    packages = ("0ad-data",)
    max_seconds = 600.0
    unlabelled = True  # pretraining audio only: never a probe task
    prefixes = {"music": "audio/music/", "ambient": "audio/ambient/"}

    def clips(self) -> list[RawClip]:
        from model.sources import RawClip, ZeroADArchive

        archive = ZeroADArchive()
        names = archive.oggs()
        return [
            RawClip(n[len("audio/") :], kind, n, archive.reader(n), split="train")
            for kind, prefix in self.prefixes.items()
            for n in names
            if n.startswith(prefix)
        ]
