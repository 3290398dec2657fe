"""Files written whole or not at all: a crash never leaves half a checkpoint or results file.

:func:`atomic_write` is how every file a run or a benchmark writes reaches the disk
(checkpoints, metrics, exported weights, results JSON).
"""
from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from typing import Callable

__all__ = ["atomic_write"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """``write(tmp)`` a temp file in the same folder, then rename it to ``path``: a crash
    never leaves half a file, and the old file stays until the new one is complete."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    mask = os.umask(0)
    os.umask(mask)
    try:
        write(tmp)
        # mkstemp makes 0600 (and some writers replace the file): give the usual permissions of a new file
        os.chmod(tmp, 0o666 & ~mask)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
