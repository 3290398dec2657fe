"""Shared by bench/speed.py and bench/ablation.py: machine info, medians, atomic JSON."""
from __future__ import annotations

import json
import os
import pathlib
import platform
import sys
import time

REPO = pathlib.Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # run as `python bench/x.py` from a checkout
    sys.path.insert(0, str(REPO))

from fgnb import provenance  # noqa: E402  (after the path: bench/ runs from a checkout)


#: Results files are the studies' output, not code: a study resumed beside another one (two
#: sweeps in one checkout) sees the other's file rewritten, which must not mark its own as dirty.
RESULTS_DIR = "bench/results"


def git_commit(ignore=()) -> dict:
    """HEAD commit and whether the working tree differs from it; ``ignore``: paths left out of
    that check (a results file that a resumed run rewrites is its output, not a change of code).
    Every file under ``bench/results`` is left out too (:data:`RESULTS_DIR`)."""
    return provenance.git_commit(REPO, exclude=[RESULTS_DIR, *ignore])


cpu_name = provenance.cpu_name


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
