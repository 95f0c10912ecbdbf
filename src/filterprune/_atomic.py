"""Atomic file and folder output: write beside the target, then rename into place.

Every writer in the package goes through these functions, so a crash or an error
midway never leaves half a file where a reader looks, and an old file stays intact
until the new one is complete. Temporary names are hidden and live in the target's
folder, so the final rename never crosses file systems.

A target that is neither a file nor a folder (``/dev/null``, a pipe, a FIFO) is written
into, not replaced: ``write_fn`` then gets that name, which a writer must not extend
with a suffix of its own (none here does). A symlink into an existing folder stays a
link and the file it points to is replaced; a link into a missing folder is replaced by
the file.

A process killed midway (``kill -9``, a power cut) cannot remove its temporary, so the
name says who made it: ``.name.<pid>-<host>.XXXXXXXX<suffix>``. The next write to the same
target removes the temporaries of processes of this host that no longer run
(:func:`remove_stale`); those of running processes, and of other hosts sharing the folder,
are left alone.

Example:
    >>> atomic_write_text("report.json", "{}")  # doctest: +SKIP
    >>> atomic_write("m.onnx", lambda tmp: onnx.save(proto, tmp), suffix=".onnx")  # doctest: +SKIP
    >>> atomic_dir("saved_model", lambda tmp: model.export(tmp))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import re
import shutil
import socket
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_torch_save",
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_dir",
    "check_writable",
    "NO_SPACE",
    "move_into_place",
    "remove_stale",
    "staging_dir",
]

PathLike = str | os.PathLike
NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # a full disk, a file size limit, a quota
log = logging.getLogger("filterprune")
# Tells this host's temporaries from those of others writing to a shared folder.
_HOST = hashlib.sha256(socket.gethostname().encode()).hexdigest()[:6]


def atomic_write(path: PathLike, write_fn: Callable[[str], None], suffix: str = "") -> None:
    """Call ``write_fn(tmp)`` on a temporary file beside ``path``, then rename it to ``path``.

    Args:
        path: The file to write; its folder is created when missing.
        write_fn: Writes the content to the path it is given (an existing, empty file).
        suffix: Ending of the temporary name, for writers that infer the format from
            it (``".keras"``, ``".png"``); ``".tmp"`` when empty.

    The file ends up with the mode a new file gets (``0o666`` less the umask). On any
    failure the temporary file is removed and ``path`` is left as it was.
    """
    target = Path(path)
    if _special(target):  # /dev/null, a pipe, a FIFO: written as it is, never replaced
        write_fn(os.fspath(target))
        return
    target = _resolved(target)
    tmp = _reserve(target, suffix or ".tmp")
    try:
        write_fn(tmp)
        move_into_place(tmp, target)
    except OSError as err:
        if err.errno not in NO_SPACE:
            raise
        raise type(err)(err.errno, f"Cannot write {target}: {err.strerror}. Nothing was "
                        "written there; free some space or choose another folder") from err
    finally:
        _remove(tmp)


def _resolved(target: Path) -> Path:
    """A symlink's target (so the link stays a link, as ``cp`` leaves it), else ``target``."""
    if not target.is_symlink():
        return target
    real = Path(os.path.realpath(target))
    return real if real.parent.is_dir() else target


def _special(target: Path) -> bool:
    """Whether ``target`` exists and is neither a file nor a folder (a device, a pipe)."""
    return target.exists() and not target.is_file() and not target.is_dir()


def check_writable(path: PathLike) -> None:
    """Raise the error :func:`atomic_write` would meet creating ``path``, before any work.

    Raises:
        OSError: ``path`` is a folder, or its folder cannot be made or written to; the
            message names ``path`` (not a temporary name).
    """
    target = Path(path)
    if not _special(target):
        # the folder is made by the write, not by the check: a run refused later leaves none
        _remove(_reserve(_resolved(target), ".tmp", make_folder=False))


def _reserve(target: Path, suffix: str, make_folder: bool = True) -> str:
    """An empty temporary file beside ``target`` (its folder made when missing; without
    ``make_folder``, in the nearest folder that exists)."""
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"Cannot write {target}: it is a folder. Give "
                                "a file name")  # fmt: skip
    folder = target.parent if make_folder else next(
        p for p in target.parents if p.exists() or p == p.parent)  # fmt: skip
    try:
        if make_folder:
            folder.mkdir(parents=True, exist_ok=True)
            remove_stale(target)
        elif not folder.is_dir():
            raise NotADirectoryError(errno.ENOTDIR, f"{folder} is a file, not a folder")
        fd, tmp = tempfile.mkstemp(prefix=_prefix(target), suffix=suffix, dir=folder)
    except OSError as err:
        raise type(err)(err.errno, f"Cannot write {target}: {err.strerror}. Choose a folder "
                        "you can write to") from err  # fmt: skip
    os.close(fd)
    return tmp


def atomic_torch_save(path: PathLike, obj: Any) -> None:
    """``torch.save(obj, path)`` atomically. Written through a file object: given a path,
    torch names the archive's root folder after the file, here the temporary's random
    name, so equal results would not give equal files."""
    import torch

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            torch.save(obj, f)

    atomic_write(path, save)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding=encoding))


def atomic_dir(path: PathLike, write_fn: Callable[[str], None]) -> None:
    """Call ``write_fn(tmp)`` on a new empty folder beside ``path``, then rename it to ``path``.

    For outputs that are folders (a TensorFlow SavedModel). An existing empty folder
    at ``path`` is replaced; anything else there is refused, never deleted.

    Raises:
        FileExistsError: ``path`` is a file or a folder that is not empty (checked
            before writing and again just before the rename).
    """
    target = Path(path)
    _check_free(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    with staging_dir(target) as tmp:
        write_fn(tmp)
        for folder, _, files in os.walk(tmp):
            for name in files:
                _fsync(os.path.join(folder, name))
        _check_free(target)
        move_into_place(tmp, target)


def move_into_place(src: PathLike, dst: PathLike) -> None:
    """Rename the finished file or folder ``src`` to ``dst`` (same file system), durably.

    ``src`` is flushed to disk and given the mode a new file or folder gets under the
    current umask before the rename; the folder holding ``dst`` is flushed after it.
    """
    src = os.fspath(src)
    if _special(Path(dst)):  # copied into it (see atomic_write)
        with open(src, "rb") as f, open(dst, "wb") as out:
            shutil.copyfileobj(f, out)
        _remove(src)
        return
    is_dir = os.path.isdir(src)
    if not is_dir:
        _fsync(src)
    os.chmod(src, (0o777 if is_dir else 0o666) & ~_umask())
    real = _resolved(Path(dst))
    if real.parent.resolve() == Path(src).parent.resolve():  # a link within the folder
        dst = real  # replaced where it points (the rename must stay on one file system)
    os.replace(src, dst)
    _fsync_dir(os.path.dirname(os.path.abspath(dst)))


@contextlib.contextmanager
def staging_dir(near: PathLike) -> Iterator[str]:
    """A new hidden folder beside ``near`` (see the module notes), removed with its content on
    exit.

    For writers that produce several files at once (an OpenVINO ``.xml`` and its
    ``.bin``): write them here, then :func:`move_into_place` each one.
    """
    target = Path(near)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    tmp = tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent)
    try:
        yield tmp
    finally:
        _remove(tmp)


def remove_stale(target: PathLike) -> list[str]:
    """Remove the temporaries that killed writers left beside ``target``.

    Only names this module makes for ``target`` are considered, and only those of
    processes of this host that no longer run (checked on POSIX; elsewhere nothing is
    removed).

    Returns:
        The names removed.
    """
    target = Path(target)
    pattern = re.compile(
        rf"\.{re.escape(_short(target.name))}\.(\d+)-({_HOST})\.[a-z0-9_]{{8}}(?:\.\w+)?"
    )
    try:
        entries = os.listdir(target.parent)
    except OSError:
        return []
    removed = []
    for entry in entries:
        found = pattern.fullmatch(entry)
        if found is None or not _gone(int(found.group(1))):
            continue
        _remove(os.path.join(target.parent, entry))
        removed.append(entry)
    if removed:
        log.info("removed %d temporary file(s) left by killed writers of %s: %s",
                 len(removed), target, ", ".join(removed))  # fmt: skip
    return removed


def _prefix(target: Path) -> str:
    return f".{_short(target.name)}.{os.getpid()}-{_HOST}."


def _short(name: str, limit: int = 200) -> str:
    """``name`` cut to ``limit`` bytes: a temporary's name adds up to about 45 to it, and
    file systems refuse names past 255 (a legal 231-byte output name failed)."""
    raw = name.encode()
    return name if len(raw) <= limit else raw[:limit].decode(errors="ignore")


def _gone(pid: int) -> bool:
    """Whether process ``pid`` no longer runs (never claimed for ourselves or off POSIX,
    where ``os.kill`` would signal or end the process)."""
    if os.name != "posix" or pid == os.getpid() or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # running, under another user
        return False
    return False


def _check_free(target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        if next(target.iterdir(), None) is None:
            return
        raise FileExistsError(
            f"`path` must be a new or empty folder; it is not overwritten. Received: "
            f"path={str(target)!r}, a folder that is not empty. Remove it or choose another path."
        )
    if target.exists() or target.is_symlink():
        raise FileExistsError(
            f"`path` must be a new or empty folder. Received: path={str(target)!r}, which "
            "exists and is not a folder."
        )


def _remove(tmp: str) -> None:
    """Delete our own temporary file or folder if it is still there."""
    if os.path.isdir(tmp) and not os.path.islink(tmp):
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(folder: str) -> None:
    # Makes the rename itself durable; some systems cannot open or sync a folder.
    with contextlib.suppress(OSError):
        _fsync(folder)


def _umask() -> int:
    """The process umask, read without changing it where the system allows."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)  # no /proc: read by setting, then restore at once
    os.umask(mask)
    return mask
