"""Bring-your-own data: task sources for labelled audio on the user's disk.

Each loader is a small `TaskSource` built from a task name and a root folder (plus a few
options) that reads one folder layout: a folder per class, a CSV manifest, or one of the public
data sets as they unpack (ESC-50, UrbanSound8K, Speech Commands v2, GTZAN, NSynth, CREMA-D,
VoxCeleb1); or, without labels, a folder or list of recordings to pretrain on (`corpus`).
`clips()` lists the files (checking that every referenced file exists) and each clip's
`read()` returns the file's bytes; decoding, resampling and splitting happen in
`model.data.datasets.prepare_task` as for every other task. Layouts with an official split set
`RawClip.split`; the others leave it to the grouped, class-stratified split.

Clip names are paths relative to the root, so they are unique and never absolute; a layout
whose names would collide once prepared (``a.wav`` next to ``a.flac``) is refused. See
docs/byo.md for the folder layouts and the experiments-file syntax.
"""

from __future__ import annotations

import codecs
import csv
import errno
import hashlib
import inspect
import io
import json
import os
import re
import stat
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

from model.data.sources import RawClip, TaskSource, prepared_file
from model.errors import AblError

# What libsndfile (through soundfile) decodes; matched case-insensitively.
AUDIO_EXTENSIONS = frozenset(
    {
        ".wav",
        ".wave",
        ".flac",
        ".ogg",
        ".oga",
        ".opus",
        ".mp3",
        ".aif",
        ".aiff",
        ".aifc",
        ".au",
        ".snd",
        ".caf",
        ".w64",
        ".rf64",
    }
)

# Trailing take numbers: "bark_01", "bark-2", "bark 3", "bark_1_2" all group as "bark".
_TAKE_SUFFIX = re.compile(r"(?:[_\-\s.]*\d+)+$")

SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}


class _Layout:
    """Shared plumbing: the root, the error messages and the final checks."""

    format = ""
    layout = ""  # the expected layout, quoted in error messages
    packages: tuple[str, ...] = ()  # user data: no Debian package to record

    def __init__(self, name: str, root: str | Path) -> None:
        self.name = name
        self.root = Path(root).expanduser()
        self._seen: list[Path] = []  # every file the last scan read: metadata and audio

    @property
    def description(self) -> str:
        return f"{self.format} layout at {self.root}"

    def clips(self) -> list[RawClip]:
        if not self.root.exists():
            raise AblError(
                f"{self.root}: data root of task {self.name!r} does not exist; set "
                f"data.tasks.{self.name}.root to the folder that holds {self.layout}"
            )
        self._seen = []
        return self._finish(self._scan())

    def stamp(self) -> str:
        """What the data set's files are now, cheaply: the name (under the root), size and
        modification time of every file a scan reads. Another stamp than at preparation means
        the folder changed (or was copied without its times): it is prepared again."""
        if not self._seen:
            self.clips()
        rows = set()
        for p in self._seen:
            try:
                st = p.stat()
            except OSError:  # a dangling link, skipped as unreadable: marked until it resolves
                rows.add((_relative_name(p, self.root), -1, -1))
                continue
            rows.add((_relative_name(p, self.root), st.st_size, st.st_mtime_ns))
        return hashlib.sha256(json.dumps(sorted(rows)).encode()).hexdigest()[:20]

    def _scan(self) -> list[RawClip]:
        raise NotImplementedError

    # -- helpers ------------------------------------------------------------------------------

    def _need_file(self, path: Path) -> Path:
        if not path.is_file():
            raise AblError(
                f"{path}: not found; the {self.format} layout of task {self.name!r} expects "
                f"this file ({self.layout})"
            )
        self._seen.append(path)
        return path

    def _need_dir(self, path: Path) -> Path:
        if not path.is_dir():
            raise AblError(
                f"{path}: folder not found; the {self.format} layout of task {self.name!r} "
                f"expects it ({self.layout})"
            )
        return path

    def _audio(self, path: Path, where: str) -> Path:
        """`path`, named by a manifest at `where` ("file:line"), must be an existing file."""
        if not path.is_file():
            what = "is not a regular file" if path.exists() else "not found"
            raise AblError(f"{where}: audio file {path} {what}; restore it or remove the entry")
        self._seen.append(path)
        return path

    def _clip(self, path: Path, label: str, group: str, split: str | None = None) -> RawClip:
        for what, value in (("label", label), ("group", group)):
            if not isinstance(value, str) or not value.strip():
                raise AblError(
                    f"{path}: the {self.format} metadata gives it the {what} {value!r}, not a "
                    f"name; fill the {what} in (or remove the clip's row)"
                )
        self._seen.append(path)
        return RawClip(
            _relative_name(path, self.root), label, group, partial(_read_file, path), split
        )

    def _read_csv(
        self, path: Path, required: tuple[str, ...], lower: bool = False, hint: str = ""
    ) -> list[tuple[int, dict[str, str]]]:
        """Rows of a metadata CSV as (line number, row); header names are stripped (and
        lower-cased when `lower`). A ".tsv" file is read tab-separated."""
        self._need_file(path)
        with io.StringIO(_utf8(path), newline="") as f:
            delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
            # strict: a quote left open is an error at its line, not a row that swallows the
            # rest of the file
            reader = _numbered(csv.reader(f, delimiter=delimiter, strict=True), path)
            return self._csv_rows(path, reader, required, lower, hint)

    def _csv_rows(
        self,
        path: Path,
        reader: Iterator[tuple[int, list[str]]],
        required: tuple[str, ...],
        lower: bool,
        hint: str,
    ) -> list[tuple[int, dict[str, str]]]:
        """The rows `_read_csv` reads from `reader`, its header checked."""
        raw = next(reader, (1, []))[1]
        header = [h.strip().lower() if lower else h.strip() for h in raw]
        twice = sorted({h for h in header if h and header.count(h) > 1})
        if twice:
            raise AblError(
                f"{path}: column {twice[0]!r} appears twice in the header"
                f"{' (names are read case-blind)' if lower else ''}; keep one"
            )
        missing = [c for c in required if c not in header]
        if missing:
            raise AblError(
                f"{path}: missing column(s) {', '.join(missing)} (header: "
                f"{', '.join(h.strip() for h in raw) or 'empty'}); the {self.format} layout "
                f"needs columns {hint or ', '.join(required)}"
            )
        rows = []
        for line, cells in reader:
            if not any(c.strip() for c in cells):
                continue
            row = {h: cells[i].strip() if i < len(cells) else "" for i, h in enumerate(header)}
            rows.append((line, row))
        return rows

    def _fold(self, value: str, where: str, folds: int) -> int:
        """A row's fold: a whole number from 1 to `folds`."""
        fold = self._int(value, where, "fold")
        if not 1 <= fold <= folds:
            raise AblError(
                f"{where}: fold = {fold} is outside the {self.format} folds 1..{folds}; fix the row"
            )
        return fold

    def _int(self, value: str, where: str, column: str) -> int:
        try:
            return int(value)
        except ValueError:
            raise AblError(
                f"{where}: column {column} = {value!r} is not a whole number; fix the row"
            ) from None

    def _finish(self, clips: list[RawClip]) -> list[RawClip]:
        if not clips:
            raise AblError(
                f"{self.root}: task {self.name!r} found no audio clips in the {self.format} "
                f"layout; expected {self.layout}"
            )
        labels = {c.label for c in clips}
        if len(labels) == 1 and not getattr(self, "unlabelled", False):
            raise AblError(
                f"{self.root}: every clip of task {self.name!r} is of class {labels.pop()!r}; a "
                "labelled task needs two classes or more (add one, or declare the audio with "
                "format: corpus to pretrain on it unlabelled)"
            )
        seen: dict[str, str] = {}
        for c in clips:
            # Two clips that would be prepared into one file are caught before decoding.
            key = prepared_file(c.name)
            if key in seen:
                raise AblError(
                    f"{self.root}: {c.name} is listed twice; list each file once"
                    if seen[key] == c.name
                    else f"{self.root}: {seen[key]} and {c.name} would both be prepared as "
                    f"{key}; rename or remove one of them"
                )
            seen[key] = c.name
        return sorted(clips, key=lambda c: c.name)


def _utf8(path: Path) -> str:
    """The text of a metadata file (a UTF-8 byte order mark dropped); one that is not UTF-8 is
    an AblError naming the file and the first byte that is not."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        at = e.start + (len(codecs.BOM_UTF8) if data.startswith(codecs.BOM_UTF8) else 0)
        line = data[:at].count(b"\n") + 1
        raise AblError(
            f"{path}: not UTF-8 (byte {at}, 0x{data[at]:02x}, on line {line}); save it as UTF-8"
        ) from None


def _relative_name(path: Path, root: Path) -> str:
    """`path` relative to `root` (posix); a path outside it loses only its leading slash."""
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix().lstrip("/")


def _hidden(name: str) -> bool:
    # Dot files include macOS "._x.wav" resource forks, which look like audio but are not.
    return name.startswith(".") or name == "__MACOSX"


def _numbered(reader: Any, path: Path) -> Iterator[tuple[int, list[str]]]:
    """(the line a row starts on, its cells) from a csv.reader; a row it cannot parse is an
    AblError naming that line."""
    while True:
        start = reader.line_num + 1
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise AblError(
                f"{path}:{start}: not valid CSV from this line on ({e}); close its quote, or "
                "quote a field that holds the separator"
            ) from None
        yield start, cells


def _read_file(path: Path) -> bytes:
    """The bytes of a regular file. A named pipe, socket or device that merely carries an audio
    suffix is refused: reading one could wait forever."""
    if not stat.S_ISREG(path.stat().st_mode):
        raise OSError(errno.EINVAL, "not a regular file (a pipe, socket or device)", str(path))
    return path.read_bytes()


def _audio_files(folder: Path) -> list[Path]:
    """Audio files anywhere under `folder` (symlinks followed, hidden entries skipped)."""
    out = []
    walked: set[tuple[int, int]] = set()  # (device, inode) of each folder read
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in walked:  # a link back up (a loop) or a second link to it
            dirnames[:] = []
            continue
        walked.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not _hidden(d))
        for f in sorted(filenames):
            if not _hidden(f) and Path(f).suffix.lower() in AUDIO_EXTENSIONS:
                out.append(Path(dirpath) / f)
    return out


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not _hidden(p.name))


def take_group(stem: str) -> str:
    """A file stem without its trailing take number ("dog_bark_02" -> "dog_bark").

    A stem that is only digits ("0001") stays whole: stripping it would put every such file of
    a class into one group.
    """
    return _TAKE_SUFFIX.sub("", stem) or stem


def _fold_pair(
    owner: str, test_fold: int, val_fold: int | None, n_folds: int
) -> tuple[int, int | None]:
    """Validate fold options; `val_fold` defaults to the fold before the test fold (cyclic)."""
    folds = range(1, n_folds + 1)
    if test_fold not in folds:
        raise AblError(f"{owner}.test_fold = {test_fold!r} is outside 1..{n_folds}; pick a fold")
    if val_fold is None:
        val_fold = n_folds if test_fold == 1 else test_fold - 1
    elif val_fold == 0:
        return test_fold, None  # no validation fold: every other fold trains
    if val_fold not in folds or val_fold == test_fold:
        raise AblError(
            f"{owner}.val_fold = {val_fold!r} must be a fold in 1..{n_folds} other than "
            f"test_fold = {test_fold} (or 0 for none)"
        )
    return test_fold, val_fold


def _fold_split(fold: int, test_fold: int, val_fold: int | None) -> str:
    return "test" if fold == test_fold else "val" if fold == val_fold else "train"


class FolderTask(_Layout):
    """root/<label>/**/<file>.{wav,flac,ogg,mp3,aiff,...}: one folder per class.

    Files may sit in sub-folders of a class folder. group = "<label>/<sub-folders>/<stem>"
    with the stem's trailing take number removed (`take_group`), so "bark_01.wav" and
    "bark_02.wav" never straddle two splits. No predefined split.
    """

    format = "folder"
    layout = "one sub-folder per class: root/<label>/**/*.wav (or flac, ogg, mp3, aiff, ...)"

    @property
    def description(self) -> str:
        return f"folder-per-class audio at {self.root}; group = file stem without take number"

    def _scan(self) -> list[RawClip]:
        self._need_dir(self.root)
        out = []
        for class_dir in _subdirs(self.root):
            label = class_dir.name
            for path in _audio_files(class_dir):
                sub = path.parent.relative_to(class_dir).as_posix()
                prefix = label if sub == "." else f"{label}/{sub}"
                out.append(self._clip(path, label, f"{prefix}/{take_group(path.stem)}"))
        labels = {c.label for c in out}
        if len(labels) == 1:
            raise AblError(
                f"{self.root}: only one class folder ({labels.pop()}) holds audio; point "
                f"data.tasks.{self.name}.root at the folder whose sub-folders are the classes"
            )
        return out


class CsvTask(_Layout):
    """A CSV manifest: columns path, label and optionally split and group.

    `root` is the CSV file, or a folder holding `manifest.csv`. `path` is relative to the CSV's
    folder or absolute; `split` is train / val (or validation, valid, dev) / test, or empty to
    let the grouped split place the clip; `group` defaults to the path. A ".tsv" file is read
    tab-separated.
    """

    format = "csv"
    layout = "a CSV with columns path,label[,split][,group] (root = the CSV or its folder)"

    @property
    def manifest(self) -> Path:
        return self.root / "manifest.csv" if self.root.is_dir() else self.root

    @property
    def description(self) -> str:
        return f"CSV manifest {self.manifest}"

    def _scan(self) -> list[RawClip]:
        manifest = self.manifest
        rows = self._read_csv(
            manifest, ("path", "label"), lower=True, hint="path, label and optionally split, group"
        )
        base = manifest.parent
        out = []
        first_line: dict[Path, int] = {}
        for line, row in rows:
            where = f"{manifest}:{line}"
            if not row.get("path") or not row.get("label"):
                raise AblError(f"{where}: empty path or label; fill both in or remove the row")
            given = Path(row["path"]).expanduser()
            path = self._audio(given if given.is_absolute() else base / given, where)
            key = path.resolve()
            if key in first_line:
                raise AblError(
                    f"{where}: {row['path']} is already listed on line {first_line[key]}; "
                    "list each file once"
                )
            first_line[key] = line
            split = None
            if row.get("split"):
                split = SPLIT_ALIASES.get(row["split"].lower())
                if split is None:
                    raise AblError(
                        f"{where}: split = {row['split']!r} is not train, val, validation or "
                        "test; fix it or leave it empty for an automatic split"
                    )
            name = _relative_name(path, base)
            out.append(
                RawClip(
                    name, row["label"], row.get("group") or name, partial(_read_file, path), split
                )
            )
        return out


class ESC50Task(_Layout):
    """ESC-50 as unpacked (ESC-50-master): meta/esc50.csv + audio/<filename>.

    label = category, group = src_file (the freesound clip a recording was cut from); split by
    fold: `test_fold` (default 5) is test, `val_fold` (default: the fold before the test fold;
    0 for none) is val, the rest train. `esc10=True` keeps only the ESC-10 subset.
    """

    format = "esc50"
    layout = "meta/esc50.csv and audio/*.wav (the ESC-50-master folder)"
    columns = ("filename", "fold", "target", "category", "esc10", "src_file", "take")

    def __init__(
        self,
        name: str,
        root: str | Path,
        test_fold: int = 5,
        val_fold: int | None = None,
        esc10: bool = False,
    ) -> None:
        super().__init__(name, root)
        self.test_fold, self.val_fold = _fold_pair(f"data.tasks.{name}", test_fold, val_fold, 5)
        self.esc10 = esc10

    @property
    def description(self) -> str:
        subset = "ESC-10" if self.esc10 else "ESC-50"
        return (
            f"{subset} at {self.root}; label = category, group = src_file, test fold "
            f"{self.test_fold}, val fold {self.val_fold or 'none'}"
        )

    def _scan(self) -> list[RawClip]:
        meta = self.root / "meta" / "esc50.csv"
        audio = self.root / "audio"
        out = []
        for line, row in self._read_csv(meta, self.columns):
            where = f"{meta}:{line}"
            if self.esc10 and row["esc10"].lower() != "true":
                continue
            fold = self._fold(row["fold"], where, 5)
            path = self._audio(audio / row["filename"], where)
            split = _fold_split(fold, self.test_fold, self.val_fold)
            out.append(self._clip(path, row["category"], row["src_file"], split))
        return out


class US8KTask(_Layout):
    """UrbanSound8K: metadata/UrbanSound8K.csv + audio/fold<N>/<slice_file_name>.

    label = class, group = fsID (the freesound recording the slices come from); split by fold:
    `test_fold` (default 10) is test, `val_fold` (default 9) val, the rest train. (The data
    set's own protocol is 10-fold cross-validation; this is one fixed fold of it.)
    """

    format = "us8k"
    layout = "metadata/UrbanSound8K.csv and audio/fold1..fold10/*.wav (the UrbanSound8K folder)"
    columns = (
        "slice_file_name",
        "fsID",
        "start",
        "end",
        "salience",
        "fold",
        "classID",
        "class",
    )

    def __init__(
        self, name: str, root: str | Path, test_fold: int = 10, val_fold: int | None = None
    ) -> None:
        super().__init__(name, root)
        self.test_fold, self.val_fold = _fold_pair(f"data.tasks.{name}", test_fold, val_fold, 10)

    @property
    def description(self) -> str:
        return (
            f"UrbanSound8K at {self.root}; label = class, group = fsID, test fold "
            f"{self.test_fold}, val fold {self.val_fold or 'none'}"
        )

    def _scan(self) -> list[RawClip]:
        meta = self.root / "metadata" / "UrbanSound8K.csv"
        out = []
        for line, row in self._read_csv(meta, self.columns):
            where = f"{meta}:{line}"
            fold = self._fold(row["fold"], where, 10)
            path = self._audio(self.root / "audio" / f"fold{fold}" / row["slice_file_name"], where)
            split = _fold_split(fold, self.test_fold, self.val_fold)
            out.append(self._clip(path, row["class"], row["fsID"], split))
        return out


class SpeechCommandsTask(_Layout):
    """Speech Commands v2 (or v1): root/<word>/<speaker>_nohash_<n>.wav.

    label = the word folder (folders starting with "_", such as _background_noise_, are
    skipped); group = the speaker id; split from validation_list.txt and testing_list.txt
    (paths relative to root, one a line), every other clip train.
    """

    format = "spcv2"
    layout = "root/<word>/<speaker>_nohash_<n>.wav, validation_list.txt and testing_list.txt"

    @property
    def description(self) -> str:
        return f"Speech Commands at {self.root}; label = word, group = speaker, official lists"

    def _scan(self) -> list[RawClip]:
        split_of: dict[str, str] = {}
        for list_name, split in (("validation_list.txt", "val"), ("testing_list.txt", "test")):
            listing = self._need_file(self.root / list_name)
            for line, entry in enumerate(_utf8(listing).splitlines(), 1):
                entry = entry.strip().replace("\\", "/").removeprefix("./")
                if entry:
                    self._audio(self.root / entry, f"{listing}:{line}")
                    split_of[entry] = split
        out = []
        for word_dir in _subdirs(self.root):
            if word_dir.name.startswith("_"):
                continue
            for path in sorted(word_dir.glob("*.wav")):
                if _hidden(path.name):
                    continue
                rel = path.relative_to(self.root).as_posix()
                speaker = path.stem.split("_nohash_")[0]
                out.append(self._clip(path, word_dir.name, speaker, split_of.get(rel, "train")))
        return out


class GTZANTask(_Layout):
    """GTZAN genres: root/genres/<genre>/<genre>.000NN.{au,wav}.

    Also accepted: root/genres_original/ and root/Data/genres_original/ (the Kaggle copy).
    label = genre; there is no official split, so each file is its own group
    (group = "<genre>.000NN") and the grouped, class-stratified split applies.
    """

    format = "gtzan"
    layout = "root/genres/<genre>/<genre>.000NN.wav or .au (or root/genres_original/...)"
    folders = ("genres", "genres_original", "Data/genres_original")

    @property
    def description(self) -> str:
        return f"GTZAN at {self.root}; label = genre, group = file, automatic split"

    def _scan(self) -> list[RawClip]:
        found = [self.root / f for f in self.folders if (self.root / f).is_dir()]
        if not found:
            raise AblError(
                f"{self.root / 'genres'}: folder not found; the gtzan layout of task "
                f"{self.name!r} expects {self.layout}"
            )
        out = []
        for genre_dir in _subdirs(found[0]):
            for path in _audio_files(genre_dir):
                out.append(self._clip(path, genre_dir.name, path.stem))
        return out


class NSynthTask(_Layout):
    """NSynth: root/nsynth-{train,valid,test}/examples.json + audio/<note_str>.wav.

    label = instrument_family_str, group = instrument_str; split from the folder (valid ->
    val). All three folders must be there.
    """

    format = "nsynth"
    layout = "root/nsynth-{train,valid,test}/examples.json and audio/<note_str>.wav"
    parts = (("nsynth-train", "train"), ("nsynth-valid", "val"), ("nsynth-test", "test"))

    @property
    def description(self) -> str:
        return (
            f"NSynth at {self.root}; label = instrument_family_str, group = instrument_str, "
            "official split"
        )

    def _scan(self) -> list[RawClip]:
        out = []
        for folder, split in self.parts:
            meta = self._need_file(self.root / folder / "examples.json")
            try:
                examples = json.loads(meta.read_text())
            except (json.JSONDecodeError, UnicodeDecodeError) as e:
                raise AblError(f"{meta}: not valid JSON ({e}); download it again") from None
            except RecursionError:
                raise AblError(
                    f"{meta}: nested deeper than a JSON reader can follow (NSynth's is an object "
                    "of flat objects); download it again"
                ) from None
            if not isinstance(examples, dict):
                raise AblError(f"{meta}: expected an object keyed by note_str; download it again")
            for note, ex in examples.items():
                where = f"{meta}: {note}"
                try:
                    label, group = ex["instrument_family_str"], ex["instrument_str"]
                except (KeyError, TypeError):
                    raise AblError(
                        f"{where}: lacks instrument_family_str or instrument_str; download "
                        "examples.json again"
                    ) from None
                path = self._audio(self.root / folder / "audio" / f"{note}.wav", where)
                out.append(self._clip(path, label, group, split))
        return out


class CremaDTask(_Layout):
    """CREMA-D: root/AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav (1001_DFA_ANG_XX.wav).

    label = the emotion code as in the file name (ANG, DIS, FEA, HAP, NEU, SAD); group = the
    actor id, so the automatic split is speaker-independent.
    """

    format = "crema-d"
    layout = "root/AudioWAV/<actor>_<sentence>_<emotion>_<level>.wav, e.g. 1001_DFA_ANG_XX.wav"
    pattern = re.compile(r"^(\d+)_([A-Za-z]+)_([A-Za-z]+)_([A-Za-z]+)$")

    @property
    def description(self) -> str:
        return f"CREMA-D at {self.root}; label = emotion, group = actor, automatic split"

    def _scan(self) -> list[RawClip]:
        folder = self._need_dir(self.root / "AudioWAV")
        out = []
        for path in sorted(folder.iterdir()):
            if _hidden(path.name) or path.suffix.lower() != ".wav":
                continue
            m = self.pattern.match(path.stem)
            if m is None:
                raise AblError(
                    f"{path}: name is not <actor>_<sentence>_<emotion>_<level>.wav; rename or "
                    "remove it"
                )
            out.append(self._clip(path, m.group(3).upper(), m.group(1)))
        return out


class VoxCeleb1Task(_Layout):
    """VoxCeleb1 identification: root/iden_split.txt + root/wav/<speaker>/<video>/<n>.wav.

    iden_split.txt lines read "<1|2|3> id10001/1zcIwhmdeo4/00001.wav": 1 train, 2 val,
    3 test. label = speaker id, group = "<speaker>/<video>".
    """

    format = "voxceleb1"
    layout = "root/iden_split.txt and root/wav/<speaker>/<video>/<n>.wav"
    splits = {"1": "train", "2": "val", "3": "test"}

    @property
    def description(self) -> str:
        return f"VoxCeleb1 identification at {self.root}; label = speaker, official split"

    def _scan(self) -> list[RawClip]:
        listing = self._need_file(self.root / "iden_split.txt")
        wav = self._need_dir(self.root / "wav")
        out = []
        for line, text in enumerate(_utf8(listing).splitlines(), 1):
            if not text.strip():
                continue
            where = f"{listing}:{line}"
            parts = text.split()
            rel = parts[1].replace("\\", "/") if len(parts) == 2 else ""
            if parts[0] not in self.splits or rel.count("/") != 2:
                raise AblError(
                    f"{where}: expected '<1|2|3> <speaker>/<video>/<n>.wav', got {text.strip()!r}"
                )
            speaker, video, _ = rel.split("/")
            path = self._audio(wav / rel, where)
            out.append(self._clip(path, speaker, f"{speaker}/{video}", self.splits[parts[0]]))
        return out


class CorpusTask(_Layout):
    """Unlabelled pretraining audio: a folder of audio files, or a text file listing them.

    `root` is a folder (every audio file under it, in sub-folders too) or a list file: one
    audio path a line, relative to the list file's folder or absolute; blank lines and lines
    starting with "#" are skipped. There are no labels: every clip is "unlabelled", its own
    group, and in the train split (as the built-in corpora), so the task can be used in
    `data.corpus` but never probed. Long recordings are kept as the built-in long corpora keep
    theirs: up to `max_seconds` (default 600 s, ten minutes) each, not cut at the 30 s of the
    labelled tasks.
    """

    format = "corpus"
    layout = (
        "your recordings (audio files, in sub-folders too), or a text file listing one audio "
        "path a line"
    )
    label = "unlabelled"
    unlabelled = True  # pretraining audio only: never a probe task (orchestrator.spec refuses it)

    def __init__(self, name: str, root: str | Path, max_seconds: float = 600.0) -> None:
        super().__init__(name, root)
        if not max_seconds > 0:
            raise AblError(
                f"data.tasks.{name}.max_seconds = {max_seconds!r} must be positive; it is how "
                "much of each recording is kept (default 600)"
            )
        self.max_seconds = float(max_seconds)  # read by model.data.datasets.prepare_task

    @property
    def description(self) -> str:
        kind = "folder" if self.root.is_dir() else "list file"
        return (
            f"unlabelled audio ({kind} {self.root}), pretraining only; each recording kept up "
            f"to {self.max_seconds:g} s"
        )

    def _scan(self) -> list[RawClip]:
        if self.root.is_dir():
            return [
                self._clip(p, self.label, _relative_name(p, self.root), "train")
                for p in _audio_files(self.root)
            ]
        if self.root.suffix.lower() in AUDIO_EXTENSIONS:
            raise AblError(
                f"{self.root}: data.tasks.{self.name}.root is one audio file; point it at the "
                "folder that holds the recordings, or at a text file listing them"
            )
        return self._listed(self.root)

    def _listed(self, listing: Path) -> list[RawClip]:
        try:
            text = listing.read_text(encoding="utf-8-sig")
        except (UnicodeDecodeError, OSError) as e:
            raise AblError(
                f"{listing}: cannot be read as a text list of audio paths ({e}); point "
                f"data.tasks.{self.name}.root at a folder of audio or a UTF-8 list file"
            ) from None
        self._seen.append(listing)
        base = listing.parent
        out = []
        first_line: dict[Path, int] = {}
        for line, entry in enumerate(text.splitlines(), 1):
            entry = entry.strip()
            if not entry or entry.startswith("#"):
                continue
            where = f"{listing}:{line}"
            # "../other/a.wav" is named by where it is, never with ".." in the clip name.
            path = self._audio(Path(os.path.normpath(base / Path(entry).expanduser())), where)
            key = path.resolve()
            if key in first_line:
                raise AblError(
                    f"{where}: {entry} is already listed on line {first_line[key]}; list each "
                    "file once"
                )
            first_line[key] = line
            name = _relative_name(path, base)
            out.append(RawClip(name, self.label, name, path.read_bytes, "train"))
        if not out:
            raise AblError(
                f"{listing}: lists no audio files (only blank or # lines); task {self.name!r} "
                "needs one audio path a line, relative to the list file's folder"
            )
        return out


FORMATS: dict[str, type[_Layout]] = {
    "folder": FolderTask,
    "csv": CsvTask,
    "esc50": ESC50Task,
    "us8k": US8KTask,
    "spcv2": SpeechCommandsTask,
    "gtzan": GTZANTask,
    "nsynth": NSynthTask,
    "crema-d": CremaDTask,
    "voxceleb1": VoxCeleb1Task,
    "corpus": CorpusTask,
}


def byo_source(fmt: str, name: str, root: str | Path, **options: object) -> TaskSource:
    """The task source for `data.tasks.<name>: {format: fmt, root: root, **options}`.

    Options are the loader's keyword arguments (for example `test_fold` of esc50 and us8k).
    Nothing is read until `clips()`, so a missing root is reported only when the task is used.
    """
    cls = FORMATS.get(str(fmt).strip().lower())
    if cls is None:
        raise AblError(
            f"data.tasks.{name}.format = {fmt!r} is not a known layout; use one of: "
            f"{', '.join(FORMATS)}"
        )
    accepted = [p for p in inspect.signature(cls).parameters if p not in ("name", "root")]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise AblError(
            f"data.tasks.{name}: unknown option(s) {', '.join(unknown)} for format {fmt}; "
            f"accepted: {', '.join(['format', 'root', *accepted])}"
        )
    return cls(name, root, **options)
