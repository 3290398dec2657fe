"""Where a result came from: the git commit of the checkout and whether its tree differs from it.

A results file (``bench/``) and a recorded run (:mod:`fgnb.recordings`) both say which code made
them; this is the one place that asks git.
"""
from __future__ import annotations

import os
import pathlib
import platform
import subprocess

__all__ = ["git_commit", "cpu_name"]


def git_commit(repo, exclude=()) -> dict:
    """``{"commit": HEAD or None, "dirty": bool}`` of the checkout at ``repo``.

    ``dirty``: a tracked file differs from HEAD, leaving out ``exclude`` (paths, absolute or
    relative to ``repo``: a study's own output is no change of code). A path outside the checkout
    is dropped: as a pathspec it would make ``git status`` fail, and a failed status reads as a
    clean tree. Outside a git checkout (an installed wheel): ``{"commit": None, "dirty": False}``.
    """
    repo = pathlib.Path(repo)
    inside = [r for r in (os.path.relpath(os.path.abspath(repo / p), repo) for p in exclude)
              if not r.startswith("..")]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:
            return ""
    status = git("status", "--porcelain", "--untracked-files=no", "--", ".", *(f":(exclude){r}" for r in inside))
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(status)}


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()
