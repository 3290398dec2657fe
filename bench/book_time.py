"""The reader's clock: how long the book, each chapter and the default run take, from a fresh clone.

    python bench/book_time.py --out bench/results/book_time.json
    python bench/book_time.py --out bench/results/book_time.json --ci    # also time .ci/run (20+ min)

It clones the committed tree (HEAD of this checkout) into a temporary folder, so what it
times is what a new user gets, and there, with the clone's own ``fgnb`` first on the path:

1. ``jupyter-book build . -W --keep-going``: the whole book, every chapter executed (a fresh
   clone has no execution cache); each chapter's execution time is read back from the
   cache jupyter-cache keeps (``_build/.jupyter_cache``, the ``execution_seconds`` MyST-NB
   records for each notebook it runs);
2. the instructor's rebuild: one code cell of one chapter edited, the same command again;
   it records the time and which chapters were executed again (the goal: only that one);
3. ``python -m fgnb train`` with its defaults (the CPU profile), ``--train-repeats`` times (3 by
   default): this shared 2-core machine moves one run by several seconds from one minute to the
   next, so the file keeps every run and reports their median;
4. with ``--ci``, ``bash .ci/run`` in a second clean clone, with this process's environment (CI's
   fresh-environment install and every test).

The file records the commit, the machine and its load average before and after each step
(timings on a busy machine are slower; the load says how busy). The chapters and the README
render it (``fgnb.book.run_time``); nothing here is run by CI.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

from common import REPO, command_line, git_commit, machine_info, utc_now, write_json

#: the goal each number is read against (issue "a book a student runs in an afternoon")
GOALS = {"build_seconds": 240, "chapter_seconds": 60, "train_seconds": 60, "ci_seconds": 720}


def load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def timed(cmd: list[str], cwd: pathlib.Path, env: dict, log: pathlib.Path) -> dict:
    """Run ``cmd``; its wall time, exit status and the load average before and after."""
    before, t0 = load(), time.perf_counter()
    with open(log, "w") as f:
        rc = subprocess.run(cmd, cwd=cwd, env=env, stdout=f, stderr=subprocess.STDOUT).returncode
    seconds = time.perf_counter() - t0
    out = {"command": " ".join(cmd), "seconds": round(seconds, 1), "returncode": rc,
           "load_avg_before": before, "load_avg_after": load()}
    if rc != 0:
        out["log_tail"] = log.read_text(errors="replace")[-2000:]
    return out


def median_run(runs: list[dict]) -> dict:
    """Repeated timings of one command as one entry: ``seconds`` is their median (the middle run's
    for an odd count, the mean of the middle two for an even one), ``runs`` keeps each, in order."""
    if not runs:
        raise ValueError("median_run needs at least one timed run")
    ordered = sorted(r["seconds"] for r in runs)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"command": runs[0]["command"], "seconds": round(median, 1), "statistic": f"median of {len(runs)} runs",
            "returncode": next((r["returncode"] for r in runs if r["returncode"]), 0), "runs": runs}


def chapter_seconds(book: pathlib.Path) -> dict[str, dict]:
    """Each notebook jupyter-cache holds: its execution seconds and when it was cached."""
    from jupyter_cache import get_cache

    cache = get_cache(str(book / "_build" / ".jupyter_cache"))
    out = {}
    # a rebuilt chapter has a second record (its new code's hash) beside the first: the newest counts
    for rec in sorted(cache.list_cache_records(), key=lambda r: r.created):
        out[pathlib.Path(rec.uri).stem] = {"seconds": round(float(rec.data.get("execution_seconds", float("nan"))), 1),
                                           "cached_at": rec.created.timestamp()}
    return out


def touch_one_chapter(book: pathlib.Path) -> str:
    """Append a comment to the last code cell of the first chapter: its code changed, nothing else."""
    nb_path = sorted((book / "notebooks").glob("0*.ipynb"))[0]
    nb = json.loads(nb_path.read_text())
    cell = [c for c in nb["cells"] if c["cell_type"] == "code"][-1]
    src = cell["source"] if isinstance(cell["source"], str) else "".join(cell["source"])
    cell["source"] = src + "\n# edited by bench/book_time.py: the instructor's one-chapter rebuild"
    nb_path.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + "\n")
    return nb_path.stem


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default="bench/results/book_time.json")
    ap.add_argument("--ci", action="store_true", help="also time bash .ci/run in the clone (20+ min)")
    ap.add_argument("--train-repeats", type=int, default=3,
                    help="how many times to time the default run (the file keeps each and reports the median; default 3)")
    ap.add_argument("--keep", action="store_true", help="keep the clone (its path is printed)")
    ap.add_argument("--reuse-data", action="store_true",
                    help="use this machine's generated data (~/.cache/fgnb or $FGNB_DATA) instead of generating it "
                         "afresh, as a new machine does")
    args = ap.parse_args(argv)
    if args.train_repeats < 1:
        ap.error(f"--train-repeats must be at least 1, got {args.train_repeats}")

    head = git_commit()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="fgnb-book-time."))
    book = tmp / "fgnb"
    subprocess.run(["git", "clone", "-q", str(REPO), str(book)], check=True)
    # the clone's package, not an installed one, is what the chapters and the train import
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(book), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    if not args.reuse_data:
        # a new machine has no generated data yet: the first chapter that needs it generates it
        env["FGNB_DATA"] = str(tmp / "data")
    res = {"kind": "book_time", "schema": 2, "what": "wall seconds from a fresh clone: book build, each chapter, one-chapter rebuild, default train",
           "goal_seconds": GOALS, "command": command_line(), "date": utc_now(),
           "commit": head["commit"], "dirty_checkout": head["dirty"],
           "note": "measured on the committed tree (a clone); dirty_checkout says whether the checkout that "
                   "ran this script had uncommitted changes, which the clone does not contain",
           "machine": machine_info(),
           "data": "this machine's generated data" if args.reuse_data else "generated afresh (FGNB_DATA in the clone's folder)"}
    build = ["jupyter-book", "build", ".", "-W", "--keep-going"]
    print("building the book in", book, flush=True)
    res["build"] = timed(build, book, env, tmp / "build.log")
    chapters = chapter_seconds(book)
    res["chapters"] = {k: v["seconds"] for k, v in sorted(chapters.items())}
    print(f"build {res['build']['seconds']} s; chapters {res['chapters']}", flush=True)

    edited = touch_one_chapter(book)
    res["rebuild_one_chapter"] = timed(build, book, env, tmp / "rebuild.log")
    after = chapter_seconds(book)
    res["rebuild_one_chapter"].update(
        edited=edited, executed_again=sorted(k for k, v in after.items()
                                             if k not in chapters or v["cached_at"] > chapters[k]["cached_at"]))
    print("rebuild:", res["rebuild_one_chapter"]["seconds"], "s, executed again:",
          res["rebuild_one_chapter"]["executed_again"], flush=True)

    runs = [timed([sys.executable, "-m", "fgnb", "train", "--out", str(tmp / f"run{i}")], book, env, tmp / f"train{i}.log")
            for i in range(args.train_repeats)]
    res["default_train"] = median_run(runs)
    print("default train:", [r["seconds"] for r in runs], "s; median", res["default_train"]["seconds"], "s", flush=True)
    if args.ci:
        # CI's own conditions: a second clean clone (the one above has the edited chapter and a
        # built book) and this process's environment, without the PYTHONPATH set for the clone
        ci_clone = tmp / "ci"
        subprocess.run(["git", "clone", "-q", str(REPO), str(ci_clone)], check=True)
        ci_env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        res["ci"] = timed(["bash", ".ci/run"], ci_clone, ci_env, tmp / "ci.log")
        print("CI:", res["ci"]["seconds"], "s", flush=True)
    res["meets_goal"] = {
        "build": res["build"]["seconds"] <= GOALS["build_seconds"],
        "every_chapter": all(s <= GOALS["chapter_seconds"] for s in res["chapters"].values()),
        "default_train": res["default_train"]["seconds"] <= GOALS["train_seconds"],
        **({"ci": res["ci"]["seconds"] <= GOALS["ci_seconds"]} if "ci" in res else {}),
    }
    write_json(args.out, res)
    print("wrote", args.out)
    if args.keep:
        print("clone kept in", book)
    else:
        subprocess.run(["rm", "-rf", str(tmp)])
    return 0 if all(r.get("returncode", 0) == 0 for r in res.values() if isinstance(r, dict)) else 1


if __name__ == "__main__":
    sys.exit(main())
