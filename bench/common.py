"""Shared by bench/speed.py and bench/ablation.py: machine info, medians, atomic JSON."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import subprocess
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python bench/x.py` from a checkout
    sys.path.insert(0, str(REPO))


#: Results files are the studies' output, not code: a study resumed beside another one (two
#: sweeps in one checkout) sees the other's file rewritten, which must not mark its own as dirty.
RESULTS_DIR = "bench/results"


def git_commit(ignore=()) -> dict:
    """HEAD commit and whether the working tree differs from it; ``ignore``: paths left out of
    that check (a results file that a resumed run rewrites is its output, not a change of code).
    Every file under ``bench/results`` is left out too (:data:`RESULTS_DIR`)."""
    # a path outside the checkout (an --out in /tmp) is no change of it; as a pathspec it would make
    # git status fail, and a failed status read as a clean tree
    inside = [r for r in (os.path.relpath(os.path.abspath(p), REPO) for p in ignore) if not r.startswith("..")]

    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=20).stdout.strip()
        except Exception:
            return ""
    return {"commit": git("rev-parse", "HEAD") or None, "dirty": bool(git("status", "--porcelain", "--untracked-files=no", "--", ".",
                                                                f":(exclude){RESULTS_DIR}",
                                                                *(f":(exclude){rel}" for rel in inside)))}


def cpu_name() -> str:
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> dict:
    import timm
    import torch
    info = {
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }
    try:
        info["load_avg_at_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


def command_line() -> str:
    return " ".join(["python", *sys.argv])


def utc_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def write_json(path, data) -> None:
    """Write atomically (temp file + rename): a crash never leaves half a results file."""
    from fgnb.atomic import atomic_write

    def dump(tmp):
        with open(tmp, "w") as f:
            json.dump(data, f, indent=1, default=str)
            f.write("\n")

    atomic_write(path, dump)
