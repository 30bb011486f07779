"""Output locations, checked before the work starts; file-system errors as one actionable line.

A command that writes (train, prepare, export, plot) should find out that it cannot write
*before* it loads torch, reads gigabytes or trains for an hour, and say so in one line that
names the path. Torch-free, like everything the CLI runs before the heavy imports.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from tilelli.errors import TilelliError

# errno -> what the user can do about it (for errors that name a path)
_HINTS = {
    errno.ENOSPC: "free some disk space and run again",
    errno.EDQUOT: "free some space (disk quota exceeded) and run again",
    errno.EROFS: "that file system is read-only; choose a location you can write to",
    errno.EACCES: "check its permissions or choose another location",
    errno.EPERM: "check its permissions or choose another location",
    errno.ENOTDIR: "a part of that path is a file, not a directory; choose another path",
    errno.EISDIR: "it is a directory; give a file path",
    errno.EEXIST: "it already exists; remove it or choose another path",
    errno.ENOENT: "a directory on that path is missing or cannot hold files; check the path",
    errno.ENAMETOOLONG: "use a shorter path",
}


def _existing_ancestor(path: Path) -> Path:
    """`path` itself if it exists, else its nearest existing parent (the one a mkdir -p starts in)."""
    path = Path(os.path.abspath(path))
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable_dir(path: str | os.PathLike, option: str) -> None:
    """Refuse early, in one line, a directory the command could not create or write into.

    Permission bits are not enough (root passes `os.access` on /proc or a read-only mount), so
    this really creates and removes a hidden directory where the output would go: in `path`
    if it exists, else in its nearest existing parent.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise TilelliError(f"{option} {path} is a file, not a directory; choose another {option}")
    _probe(path, option)


def check_writable_file(path: str | os.PathLike, option: str) -> None:
    """Like `check_writable_dir` for a file to be written: it must not be a directory, and its
    directory must be creatable and writable."""
    path = Path(path)
    if path.is_dir():
        raise TilelliError(f"{option} {path} is a directory; give a file path")
    _probe(path, option)


def _probe(path: Path, option: str) -> None:
    """Create and remove a hidden directory in the nearest existing directory above `path`."""
    base = _existing_ancestor(path if path.is_dir() else path.parent)
    if not base.is_dir():
        raise TilelliError(f"{option} {path}: {base} is a file, not a directory; choose another {option}")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".tilelli-write-test-", dir=base))
    except OSError as e:
        raise TilelliError(f"{option} {path}: cannot create anything in {base} ({e.strerror or e}); "
                           f"choose another {option}") from None


@contextlib.contextmanager
def created_dirs(path: str | os.PathLike) -> Iterator[Path]:
    """Create `path` (with parents) for the block; if the block fails, remove the directories
    this created, and only those, if they are empty again, so that a failed run leaves no empty
    output directory behind (and never touches one that was there before)."""
    path = Path(path)
    created = []
    p = Path(os.path.abspath(path))
    while not p.exists() and p != p.parent:
        created.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield path
    except BaseException:
        for d in created:  # deepest first
            with contextlib.suppress(OSError):
                d.rmdir()  # fails (and is kept) when something is still inside
        raise


def os_error_line(e: OSError) -> str | None:
    """One line for a file-system error a user can act on (it names a path and its errno is
    one of a full disk, a read-only or missing location, permissions, a file in the way), or
    None for anything else, which is a bug and keeps its traceback."""
    hint = _HINTS.get(e.errno)
    if hint is None or e.filename is None:
        return None
    where = f"{e.filename} -> {e.filename2}" if e.filename2 is not None else str(e.filename)
    return f"{where}: {e.strerror or os.strerror(e.errno)}; {hint}"
