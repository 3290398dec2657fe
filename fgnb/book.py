"""Helpers the chapters share: the run profile of a ``parameters`` cell, and the
execution of chapters with their outputs stamped by the source they came from.

Every chapter's ``parameters`` cell calls :func:`profile` (the setup page explains the
profiles). ``python -m fgnb.book execute notebooks/*.ipynb`` runs chapters in place with
papermill and stamps each with a hash of its code and markdown cells, so a test can prove
the committed outputs come from the committed source (:func:`is_fresh`).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import sys
import time

from .config import SYNTHETIC, SYNTHETIC_VIT_ARCH

__all__ = ["profile", "PROFILES", "run_time", "source_hash", "is_fresh", "execute", "glue", "show_profile"]

#: cpu-quick: the embedded data and a small plain ViT (the text's linear patch projection, the
#: model chapter 2 derives) pre-trained on other synthetic species (fgnb.pretrained), fine-tuned
#: for minutes on 2 cores. It replaced the hybrid ViT (SYNTHETIC_ARCH) once its pre-training came
#: within 5 points of it on validation (chapter 9); the ablation and the sweep pin the hybrid.
#: full: CUB-200-2011 with ImageNet-21k ViT-B/16 at 448 px, the FGVC recipe (a GPU); crops are cut from
#: an 896 px view, as bench/configs/cub_vitb16_448.yaml (not the 4 x 448 = 1792 px default).
PROFILES = {
    "cpu-quick": dict(dataset="synthetic", **SYNTHETIC_VIT_ARCH, img_size=32, weights=SYNTHETIC,
                      epochs=6, batch_size=32, lr=3e-4, optimizer="adamw", weight_decay=0.05, warmup_epochs=0.5),
    "full": dict(dataset="cub", model="vit_base_patch16_224.orig_in21k", img_size=448, patch_size=None, depth=None,
                 embed_dim=None, num_heads=None, weights=None, pretrained=True, resize_size=600, source_size=896, epochs=40, batch_size=16, optimizer="sgd", lr=3e-2 / 4,
                 momentum=0.9, weight_decay=0.0, warmup_epochs=1.0, clip_grad=1.0, amp="auto", workers=8,
                 # the text's literal crop rule: the box chosen for the CPU profile (its first block's
                 # attention) has not been measured on CUB
                 crop_block=None, min_crop=0, crop_margin=0.0, attention_from="input"),
}


def profile(name: str = "auto", data_root: str | None = None, **overrides) -> dict:
    """Options for a chapter run: ``auto`` picks ``full`` when CUDA and the data are there.

    Overrides whose value is ``None`` are ignored, so a ``parameters`` cell can list every
    knob with ``None`` meaning "the profile's choice". Returns a dict for ``TrainConfig``.
    """
    import torch

    if name == "auto":
        has_data = data_root is not None and pathlib.Path(data_root, "images.txt").is_file()
        name = "full" if torch.cuda.is_available() and has_data else "cpu-quick"
    if name not in PROFILES:
        raise ValueError(f"profile {name!r} is not one of auto, {', '.join(PROFILES)}")
    opts = dict(PROFILES[name])
    if name == "full":
        opts["data_root"] = data_root
    opts.update({k: v for k, v in overrides.items() if v is not None})
    opts["profile"] = name
    return opts


def glue(name: str, value, display: bool = False):
    """Store a measured number for the chapter's prose (MyST-NB ``glue``); returns ``value``.

    The prose pastes it with ``{glue:text}`name:.1%``` (any Python format spec), so a number
    in the text is always the one the cell computed (tests/test_prose.py enforces it).
    numpy and torch scalars become Python numbers (their repr would not parse back). Where
    myst_nb is not installed (a bare Colab runtime) nothing is stored.
    """
    if hasattr(value, "item") and getattr(value, "ndim", 0) == 0:
        value = value.item()
    try:
        from myst_nb import glue as _glue
    except ImportError:  # pragma: no cover - outside the book's environment
        return value
    _glue(name, value, display=display)
    return value


def show_profile(P: dict, keys=None) -> None:
    """Print the run profile a chapter's ``parameters`` cell chose (all options or ``keys``)."""
    print("profile:", P["profile"])
    print({k: P[k] for k in (keys or P) if k in P and k != "profile"})


def run_time(chapter: str) -> str:
    """A chapter's measured run time, for its opening line: its seconds on the CPU of the last
    ``python bench/book_time.py`` (``bench/results/book_time.json``: a fresh clone's book build),
    and on a GPU where ``bash bench/gpu_check.sh --chapters`` timed it (``chapters_cuda.json``:
    the chapter run as a student runs it there, without an error); never an estimate.

    >>> run_time("05_progressive_training")   # doctest: +SKIP
    '21 s on a 2-core CPU (book build of 2026-12-06, commit 1a2b3c4); not yet timed on a GPU'
    """
    from .results import find_results

    try:
        data = json.loads(find_results("book_time.json").read_text())
    except FileNotFoundError:
        cpu = "not yet timed on a CPU (python bench/book_time.py times every chapter)"
    else:
        seconds = data.get("chapters", {}).get(chapter)
        where = (f"{data['machine'].get('cpu_count')}-core CPU (book build of {data['date'][:10]}, "
                 f"commit {str(data.get('commit'))[:7]})")
        cpu = f"{seconds:.0f} s on a {where}" if seconds is not None else f"not in the last timing ({where})"
    try:
        gpu_data = json.loads(find_results("chapters_cuda.json").read_text())
    except FileNotFoundError:
        return cpu + "; not yet timed on a GPU"
    run = (gpu_data.get("chapters") or {}).get(chapter)
    when = f"device check of {str(gpu_data.get('started'))[:10]}"
    if run is None or "skipped" in run:
        return cpu + "; not yet timed on a GPU"
    if run.get("seconds") is None or run.get("errors") or run.get("error"):
        return cpu + f"; failed on a GPU ({when}: not timed)"
    gpu = (gpu_data.get("env") or {}).get("name") or "unnamed"
    return cpu + f"; {run['seconds']:.0f} s on a GPU ({gpu}, {when})"


def source_hash(nb: dict) -> str:
    """Hash of the cells' sources and types (outputs and metadata excluded)."""
    h = hashlib.sha256()
    for cell in nb["cells"]:
        src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
        h.update(cell["cell_type"].encode() + b"\0" + src.encode() + b"\0")
    return h.hexdigest()[:16]


def is_fresh(path: str | os.PathLike) -> bool:
    nb = json.loads(pathlib.Path(path).read_text())
    return nb.get("metadata", {}).get("fgnb", {}).get("source_hash") == source_hash(nb)


def execute(path: str | os.PathLike, parameters: dict | None = None, output: str | None = None, timeout: int = 1800) -> float:
    """Run a chapter with papermill (in its folder), stamp it, write it atomically; returns seconds."""
    import papermill as pm

    path = pathlib.Path(path)
    target = pathlib.Path(output) if output else path
    tmp = target.with_name(f".{target.name}.tmp.ipynb")
    t0 = time.perf_counter()
    pm.execute_notebook(str(path), str(tmp), parameters=parameters or {}, cwd=str(path.parent),
                        kernel_name="python3", progress_bar=False, execution_timeout=timeout)
    seconds = time.perf_counter() - t0
    nb = json.loads(tmp.read_text())
    nb["metadata"].setdefault("fgnb", {})["source_hash"] = source_hash(nb)
    # papermill's own timing metadata changes every run; keep the diff of a re-run small.
    nb["metadata"].pop("papermill", None)
    for cell in nb["cells"]:
        cell.get("metadata", {}).pop("papermill", None)
        cell.get("metadata", {}).pop("execution", None)
    tmp.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    os.replace(tmp, target)
    return seconds


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fgnb.book", description=__doc__)
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("execute", help="run chapters in place and stamp their outputs")
    e.add_argument("notebooks", nargs="+")
    c = sub.add_parser("check", help="fail if a chapter's outputs are older than its source")
    c.add_argument("notebooks", nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "execute":
        for nb in args.notebooks:
            print(f"{nb}: {execute(nb):.1f} s", flush=True)
        return 0
    stale = [nb for nb in args.notebooks if not is_fresh(nb)]
    for nb in stale:
        print(f"{nb}: outputs are stale; run python -m fgnb.book execute {nb}", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
