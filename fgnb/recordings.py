"""Recorded runs: the chapters' training runs, shipped with fgnb, so a reader on a CPU waits
seconds instead of minutes (chapters 5 and 6; the setup page explains them).

A chapter that trains calls :func:`train_or_load` where it would call :func:`fgnb.train`.
With ``retrain=False`` (the default on a CPU) it copies the run recorded for the *same
recipe* into the run folder and returns what ``fgnb.train`` returned when the run was
recorded; with ``retrain=True`` (the default on a GPU, where the runs take seconds) it trains.
The recipe is the run's options: a recording is used only when every option that changes a
run equals the reader's (:func:`fgnb.config.option_differences`); a reader who changes one
(more epochs, another box rule) trains, with a line that says why.

Recordings live in ``fgnb/recorded_runs/<name>/``: ``result.json`` (``fgnb.train``'s return
value), ``recording.json`` (the fgnb commit, the machine, the training seconds and a hash of
the training code), the run folder's files, and the checkpoints the chapter reads, without
optimizer state (``load_model`` reads them; they cannot be resumed). They are made by
executing the chapter with ``retrain=True, record=True``::

    python -m fgnb.recordings record notebooks/05_progressive_training.ipynb notebooks/06_attention_crop.ipynb

and checked by training every recording's recipe again and comparing, weights bit for bit and
metrics to the last digit (same machine kind and torch; float kernels differ between CPUs)::

    python -m fgnb.recordings verify

``tests/test_recordings.py`` fails when the training code changed since a recording was made
(``code_hash``: fgnb's modules but those that only show or plan runs), so a recording cannot go stale silently: verify it (``verify --update``
stamps the new hash when the retrained run is identical) or record it again.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import pathlib
import platform
import shutil
import sys
import time

import torch

from .config import TrainConfig, option_differences, options_tagged
from .provenance import git_commit

__all__ = ["RECORDED_RUNS", "NOT_TRAINING_CODE", "training_code", "code_hash", "recorded_names", "recording_differences", "train_or_load",
           "verify"]

RECORDED_RUNS = pathlib.Path(__file__).resolve().parent / "recorded_runs"

#: modules that only show, explain or plan runs; every other module of fgnb (a new one too) may
#: change what a run computes, so the recordings carry the hash of their code
NOT_TRAINING_CODE = ("__init__.py", "__main__.py", "book.py", "cli.py", "localisation.py", "memory.py", "plots.py",
                     "predict.py", "provenance.py", "recordings.py", "results.py", "widgets.py")

#: options that do not change what a run computes (where it is written, progress bars, ...): the
#: run's set-up, tagged once in TrainConfig
NOT_THE_RECIPE = options_tagged("setup")

#: checkpoint entries a recording leaves out: optimizer state is twice the model and only resumes a run
_TRAINING_STATE = ("optimizer", "scheduler", "scaler")


def training_code() -> list[pathlib.Path]:
    """fgnb's modules that may change what a run computes (all but :data:`NOT_TRAINING_CODE`)."""
    here = pathlib.Path(__file__).resolve().parent
    return sorted(p for p in here.glob("*.py") if p.name not in NOT_TRAINING_CODE)


def code_hash() -> str:
    """sha256 (16 hex digits) of the training modules' source (:func:`training_code`, by name)."""
    h = hashlib.sha256()
    for path in training_code():
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def recorded_names() -> list[str]:
    return sorted(p.parent.relative_to(RECORDED_RUNS).as_posix() for p in RECORDED_RUNS.glob("**/result.json"))


def _folder(name: str) -> pathlib.Path:
    if not name or name.startswith(("/", ".")) or ".." in pathlib.PurePosixPath(name).parts:
        raise ValueError(f"recording name {name!r}: use a relative name such as '05_last'")
    return RECORDED_RUNS / name


def _read(name: str) -> dict | None:
    """Recording ``name``'s options (``config.yaml``) and record (``recording.json``), each file
    read once; None when there is no such recording."""
    folder = _folder(name)
    if not (folder / "result.json").is_file():
        return None
    import yaml

    rec = folder / "recording.json"
    return {"config": yaml.safe_load((folder / "config.yaml").read_text()),
            "recording": json.loads(rec.read_text()) if rec.is_file() else {}}


def recording_differences(cfg: TrainConfig, name: str, _saved: dict | None = None) -> dict[str, tuple] | None:
    """Options of ``cfg`` that differ from recording ``name``'s ({option: (recorded, now)}), or
    None when there is no such recording."""
    saved = _saved or _read(name)
    if saved is None:
        return None
    return option_differences(saved["config"], cfg.to_dict(), NOT_THE_RECIPE)


def _load_recorded(cfg: TrainConfig, folder: pathlib.Path, recording: dict) -> dict:
    """Copy the recording into ``cfg.out``: a new folder, or with ``resume`` the run's own folder
    (a later stop of the same run replaces the earlier stop's files, as training would)."""
    out = pathlib.Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.resume:
        raise FileExistsError(f"{out} holds a run already; a recorded run is copied into a new folder "
                              "(or, with resume=True, continues the run in it)")
    out.mkdir(parents=True, exist_ok=True)
    for f in folder.iterdir():
        if f.name not in ("result.json", "recording.json"):
            shutil.copyfile(f, out / f.name)
    result = json.loads((folder / "result.json").read_text())
    return {**result, "out": str(out), "recorded": True, "recording": recording}


def train_or_load(cfg: TrainConfig, name: str, retrain: bool | None = None, record: bool = False,
                  checkpoints=("best.pt", "last.pt"), **train_kwargs) -> dict:
    """``fgnb.train(cfg, **train_kwargs)``, or the recorded run of the same recipe.

    Args:
        cfg: the run's options (``cfg.out``: a new folder the run, trained or recorded, goes to).
        name: the recording, e.g. ``'05_progressive'`` (a folder of ``fgnb/recorded_runs``).
        retrain: train here; ``None``: on a GPU yes, on a CPU no (use the recording).
        record: after training, keep this run as recording ``name`` (``python -m fgnb.recordings record``).
        checkpoints: the checkpoint files the recording keeps (the ones the chapter reads).
        train_kwargs: passed to ``fgnb.train`` (``stop_after_epoch``: part of the recipe, so
            each stop has its own recording).
    Returns:
        ``fgnb.train``'s result, with ``recorded`` (True when loaded) and, for a recording,
        ``recording`` (its commit, machine and training time).
    """
    from .train import train

    if retrain is None:
        retrain = torch.cuda.is_available()
    if record and not retrain:
        raise ValueError("record=True keeps a run trained here: pass retrain=True too")
    if not retrain:
        saved = _read(name)
        diff = recording_differences(cfg, name, saved)
        stop = saved and saved["recording"].get("stop_after_epoch")
        if diff is None:
            print(f"no recorded run {name!r} (recorded: {', '.join(recorded_names()) or 'none'}): training it here")
        elif diff:
            print(f"recorded run {name!r} has other options ("
                  + ", ".join(f"{k}: {a!r} recorded, {b!r} here" for k, (a, b) in diff.items())
                  + "): training this recipe here")
        elif stop != train_kwargs.get("stop_after_epoch"):
            raise ValueError(f"recording {name!r} stops after epoch {stop}, this call after "
                             f"{train_kwargs.get('stop_after_epoch')}: name each stop's recording '<run>/epoch<k>'")
        else:
            return _load_recorded(cfg, _folder(name), saved["recording"])
    last = pathlib.Path(cfg.out) / "last.pt"
    if cfg.resume and last.is_file() and "optimizer" not in torch.load(last, map_location="cpu", weights_only=True):
        raise ValueError(f"{last} was copied from a recording (weights only, no optimizer state) and cannot be "
                         "resumed; train the whole run with retrain=True")
    t0 = time.perf_counter()
    result = train(cfg, **train_kwargs)
    seconds = time.perf_counter() - t0
    if record:
        _save(cfg, name, result, seconds, checkpoints, train_kwargs)
    return {**result, "recorded": False}


def _save(cfg: TrainConfig, name: str, result: dict, seconds: float, checkpoints, train_kwargs) -> None:
    """Write the run in ``cfg.out`` as recording ``name``: built in a side folder, then swapped
    in, so an interrupted recording never leaves half of one and the old one stays until then."""
    src, folder = pathlib.Path(cfg.out), _folder(name)
    tmp = folder.with_name(f".{folder.name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.suffix == ".pt":
            if f.name in checkpoints:
                state = torch.load(f, map_location="cpu", weights_only=True)
                torch.save({k: v for k, v in state.items() if k not in _TRAINING_STATE}, tmp / f.name)
        elif f.is_file():
            shutil.copyfile(f, tmp / f.name)
    (tmp / "result.json").write_text(json.dumps({k: v for k, v in result.items() if k != "out"}, indent=1) + "\n")
    # the recordings and the studies' results files are outputs, not code: neither makes the tree dirty
    info = {"name": name, **git_commit(RECORDED_RUNS.parent.parent, exclude=[RECORDED_RUNS, "bench/results"]),
            "code_hash": code_hash(), "torch": torch.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu_count": os.cpu_count(), "threads": torch.get_num_threads(),
            "train_seconds": round(seconds, 1), "stop_after_epoch": train_kwargs.get("stop_after_epoch"),
            "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    (tmp / "recording.json").write_text(json.dumps(info, indent=1) + "\n")
    # the old recording goes only once the new one is complete
    old = folder.with_name(f".{folder.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


def verify(names=None, update: bool = False, out_root: str | None = None) -> list[str]:
    """Train every recording's recipe again and compare: weights bit for bit (``torch.equal``)
    and every metric of ``result.json`` except wall times. Returns the problems found (empty:
    all identical); ``update`` stamps the current code hash on the identical ones."""
    import tempfile

    import yaml

    from .train import train

    problems = []
    for name in names or recorded_names():
        folder = _folder(name)
        info = json.loads((folder / "recording.json").read_text())
        cfg = TrainConfig.from_dict(yaml.safe_load((folder / "config.yaml").read_text()), str(folder), saved=True)
        base = pathlib.Path(tempfile.mkdtemp(prefix="fgnb-verify-", dir=out_root))
        t0 = time.perf_counter()
        result = train(cfg.replace(out=str(base / "run"), progress=False, resume=False),
                       stop_after_epoch=info.get("stop_after_epoch"))
        seconds = time.perf_counter() - t0
        mine = []
        for ck in sorted(folder.glob("*.pt")):
            a = torch.load(ck, map_location="cpu", weights_only=True)["model"]
            b = torch.load(base / "run" / ck.name, map_location="cpu", weights_only=True)["model"]
            if a.keys() != b.keys() or not all(torch.equal(a[k], b[k]) for k in a):
                mine.append(f"{name}/{ck.name}: weights differ from the retrained run")
        rec = json.loads((folder / "result.json").read_text())
        if _without_times(rec) != _without_times(json.loads(json.dumps({k: v for k, v in result.items() if k != "out"}))):
            mine.append(f"{name}/result.json: metrics differ from the retrained run")
        print(f"{name}: retrained in {seconds:.0f} s: {'identical' if not mine else '; '.join(mine)}", flush=True)
        problems += mine
        if update and not mine:
            # the commit the verifying checkout was at, and whether its code differed from it (the
            # code_hash says which code it was); the recordings being stamped do not count as a change
            head = git_commit(RECORDED_RUNS.parent.parent, exclude=[RECORDED_RUNS, "bench/results"])
            info.update(code_hash=code_hash(), verified=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                        verified_commit=head["commit"], verified_dirty=head["dirty"])
            (folder / "recording.json").write_text(json.dumps(info, indent=1) + "\n")
        shutil.rmtree(base, ignore_errors=True)
    return problems


_TIMES = ("epoch_time_s", "images_per_s", "eval_time_s", "time_s", "wall_time_s", "seconds")


def _without_times(x):
    if isinstance(x, dict):
        return {k: _without_times(v) for k, v in x.items() if not any(k.endswith(t) for t in _TIMES)}
    if isinstance(x, list):
        return [_without_times(v) for v in x]
    return x


def record(notebooks, timeout: int = 3600) -> None:
    """Execute chapters with ``retrain=True, record=True``: their runs become the recordings.
    The executed copy goes to a temporary folder; the chapter's own outputs are left as they
    are (re-execute it with ``python -m fgnb.book execute`` to show the new recordings)."""
    import tempfile

    from .book import execute

    for nb in notebooks:
        with tempfile.TemporaryDirectory() as tmp:
            out = pathlib.Path(tmp) / pathlib.Path(nb).name
            seconds = execute(nb, parameters={"retrain": True, "record": True}, output=str(out), timeout=timeout)
        print(f"{nb}: recorded in {seconds:.0f} s", flush=True)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m fgnb.recordings", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("record", help="execute chapters with retrain=True, record=True")
    r.add_argument("notebooks", nargs="+")
    v = sub.add_parser("verify", help="train every recording's recipe again and compare")
    v.add_argument("names", nargs="*")
    v.add_argument("--update", action="store_true", help="stamp the current code hash on identical recordings")
    sub.add_parser("list", help="the recordings, their commit and training time")
    args = p.parse_args(argv)
    if args.cmd == "record":
        record(args.notebooks)
        return 0
    if args.cmd == "list":
        for name in recorded_names():
            info = json.loads((_folder(name) / "recording.json").read_text())
            print(f"{name}: commit {str(info.get('commit'))[:8]}, {info.get('train_seconds')} s, code {info.get('code_hash')}"
                  + ("" if info.get("code_hash") == code_hash() else " (training code changed since)"))
        return 0
    problems = verify(args.names or None, update=args.update)
    for line in problems:
        print(line, file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
