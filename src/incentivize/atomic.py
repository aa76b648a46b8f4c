"""Write a directory so that readers see either nothing or all of it."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from incentivize.errors import IncentivizeError


@contextmanager
def atomic_directory(target: Path, *, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary sibling of `target` to fill; rename it to `target` when the block succeeds.

    An interrupted or failed block leaves `target` as it was. The files are flushed to the disk before
    the rename, so a write error (a full disk) fails the block, and a power cut cannot leave `target`
    holding empty files. With `replace=False` an existing `target` is kept (another writer finished
    first) and the new copy is dropped.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the result is an ordinary directory
    try:
        yield tmp
        _sync_tree(tmp)  # a write error (a full disk) can surface only here; and no empty files after a power cut
        if target.exists():
            if not replace:
                return
            shutil.rmtree(target)
        os.rename(tmp, target)
        _sync(target.parent)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _sync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*"), reverse=True):  # files before the directories holding them
        _sync(path)
    _sync(root)


def _sync(path: Path) -> None:
    """Flush `path` to the disk; directories where the platform allows it."""
    is_dir = path.is_dir()
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        if is_dir:
            return
        raise
    try:
        os.fsync(fd)
    except OSError:
        if not is_dir:  # some file systems cannot sync a directory; a file that cannot be synced is an error
            raise
    finally:
        os.close(fd)


def write_text(path: Path, text: str) -> None:
    """Write `path` so that a reader sees its old content or all of the new: a temporary sibling, flushed,
    then renamed over it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            file.write(text)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def require_directory_path(path: Path, option: str) -> None:
    """Refuse, before any work, a `path` that cannot become a directory: it, or a parent, is a file."""
    blocker = next((p for p in (path, *path.parents) if p.exists()), path)
    if blocker.exists() and not blocker.is_dir():
        raise IncentivizeError(f"{option} {path}: {blocker} is a file, not a directory; choose another {option}")
