"""Exact liveness for background work: an advisory lock (``flock``) held by a process for its lifetime.

The kernel releases the lock when the process ends, however it ends (``kill -9`` included), so "is the
lock held?" answers "is that process alive?" exactly; a reused process id cannot fake it. A parent can
hand a lock it took to a child (`hand_over_fds`): the child then holds it until it exits.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

_HELD: dict[str, int] = {}  # path -> open file descriptor holding the lock, in this process


def acquire(path: str | os.PathLike) -> bool:
    """Takes the lock at ``path`` (created if needed) for this process; False if another holder has it.

    Idempotent: a lock this process already holds through `acquire` returns True again.
    """
    key = os.fspath(Path(path).absolute())
    if key in _HELD:
        return True
    fd = os.open(key, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    except BaseException:
        os.close(fd)
        raise
    _HELD[key] = fd
    return True


def release(path: str | os.PathLike) -> None:
    """Gives up a lock this process took with `acquire` (no-op otherwise)."""
    fd = _HELD.pop(os.fspath(Path(path).absolute()), None)
    if fd is not None:
        os.close(fd)  # closing the last descriptor of the open file releases the flock


def held_here(path: str | os.PathLike) -> bool:
    """True when this process holds the lock through `acquire`."""
    return os.fspath(Path(path).absolute()) in _HELD


def fd_of(path: str | os.PathLike) -> int | None:
    """The descriptor holding ``path``'s lock in this process (to hand it to a child), or None."""
    return _HELD.get(os.fspath(Path(path).absolute()))


def is_held(path: str | os.PathLike) -> bool:
    """True while some live process (this one included) holds the lock at ``path``.

    A missing lock file means nobody holds it. The check itself takes the lock for an instant when it
    is free, so it never blocks and never waits.
    """
    key = os.fspath(Path(path).absolute())
    if key in _HELD:
        return True
    try:
        fd = os.open(key, os.O_RDONLY)
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError:
        return True  # unreadable lock file: do not declare its owner dead
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def hand_over(path: str | os.PathLike) -> int:
    """Takes the lock and returns its descriptor for a child process (``Popen(pass_fds=[fd])``); the
    caller closes its own copy with `forget` once the child runs, so that only the child holds it.

    Raises:
        BlockingIOError: another process holds the lock.
    """
    if not acquire(path):
        raise BlockingIOError(f"{path} is locked by another process")
    return _HELD[os.fspath(Path(path).absolute())]


def forget(path: str | os.PathLike) -> None:
    """Closes this process's descriptor of a lock handed to a child (the child keeps holding it)."""
    release(path)
