"""The file side of the folder watcher: which files are images, atomic writes, done markers, the lock."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The image suffixes are the allxai command's: one list for every client.
from allxai.client.inputs import is_image_name

#: What the watcher writes next to ``<image>``; the marker comes last, so it means "all the rest is there".
OVERLAY_SUFFIX = ".overlay.png"
HL7_SUFFIX = ".hl7"
FHIR_SUFFIX = ".fhir.json"
JSON_SUFFIX = ".json"
ERROR_SUFFIX = ".error.json"
#: The record of the report sent, from which ``allxai lis finalize`` and ``correct`` build the next one.
RECORD_SUFFIX = ".report.json"
MARKER_SUFFIX = ".done"
OUTPUT_SUFFIXES = (OVERLAY_SUFFIX, HL7_SUFFIX, FHIR_SUFFIX, JSON_SUFFIX, ERROR_SUFFIX, RECORD_SUFFIX)
#: Names that writers use while a file is still arriving; such files are renamed into place when complete.
PARTIAL_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload", ".filepart", ".download")
_TMP_SUFFIX = ".allxai-tmp"
LOCK_NAME = ".allxai-watch.lock"


@dataclass(frozen=True)
class Stat:
    """The identity of a file's current content, as cheaply as the file system gives it."""

    size: int
    mtime_ns: int


def is_candidate(name: str) -> bool:
    """Whether ``name`` is an input image: not hidden, not half-written, and not one of our outputs."""
    lower = name.lower()
    if name.startswith((".", "~")) or lower.endswith(PARTIAL_SUFFIXES) or lower.endswith(OVERLAY_SUFFIX):
        return False
    return is_image_name(name)


def scan(folder: Path) -> dict[str, Stat]:
    """The candidate images in ``folder`` and their stats (os.scandir: one system call per entry)."""
    found: dict[str, Stat] = {}
    with os.scandir(folder) as entries:
        for entry in entries:
            if not is_candidate(entry.name):
                continue
            try:
                if not entry.is_file(follow_symlinks=True):
                    continue
                st = entry.stat()
            except OSError:
                continue  # removed between listing and stat
            found[entry.name] = Stat(st.st_size, st.st_mtime_ns)
    return found


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def output(image: Path, suffix: str) -> Path:
    """The path of one of ``image``'s outputs: the suffix is appended to the whole file name."""
    return image.with_name(image.name + suffix)


def sync_dir(folder: Path) -> None:
    """Flush ``folder``'s entries (renames) to disk."""
    # A rename is durable only once the directory entry is on disk; not every platform can open a directory.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_atomic(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the whole new one, never a part.

    ``durable=False`` leaves syncing the folder to the caller (one sync for several files).
    """
    # The name's head only: a temporary name must fit the file system's limit whenever the final one does.
    tmp = path.with_name(f".{path.name[:64]}.{uuid.uuid4().hex[:8]}{_TMP_SUFFIX}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if durable:
        sync_dir(path.parent)


def remove_leftovers(folder: Path) -> int:
    """Delete temporary files a killed watcher left behind; returns how many."""
    removed = 0
    with os.scandir(folder) as entries:
        for entry in entries:
            if entry.name.startswith(".") and entry.name.endswith(_TMP_SUFFIX):
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)
                    removed += 1
    return removed


def read_marker(image: Path) -> dict[str, Any] | None:
    """The done marker of ``image``, or None when it has none (or an unreadable one, which counts as none)."""
    try:
        marker = json.loads(output(image, MARKER_SUFFIX).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return marker if isinstance(marker, dict) else None


@contextlib.contextmanager
def folder_lock(folder: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``folder`` for one watcher; yields False when another watcher holds it."""
    try:
        import fcntl  # noqa: PLC0415  (POSIX only; elsewhere the folder goes unlocked)
    except ImportError:
        yield True
        return
    with open(folder / LOCK_NAME, "a+b") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            yield False
            return
        try:
            yield True
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
