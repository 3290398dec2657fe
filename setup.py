"""Packaging hook (the rest of the metadata is in pyproject.toml): the recorded results
travel inside the package.

The bench scripts write ``bench/results/*.json``; ``bench/published.json`` holds the cited
numbers. Building fgnb (wheel, ``pip install git+...``) copies both into
``fgnb/recorded/`` (``results/*.json`` and ``published.json``), where
:func:`fgnb.results.find_results` looks when there is no checkout (Colab). Every JSON file
in ``bench/results`` is taken, so a new results file needs no change here.
"""
import pathlib
import shutil

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = pathlib.Path(__file__).resolve().parent


def recorded_files():
    """(source, path inside fgnb/recorded) of every recorded file."""
    files = [(p, f"results/{p.name}") for p in sorted((HERE / "bench" / "results").glob("*.json"))]
    if (HERE / "bench" / "published.json").is_file():
        files.append((HERE / "bench" / "published.json", "published.json"))
    return files


class BuildPyWithRecorded(build_py):
    def run(self):
        super().run()
        if getattr(self, "editable_mode", False):
            return  # an editable install reads bench/ of the checkout itself
        dest = pathlib.Path(self.build_lib, "fgnb", "recorded")
        shutil.rmtree(dest, ignore_errors=True)  # no stale copy of a file that left bench/
        for src, rel in recorded_files():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, dest / rel)


setup(cmdclass={"build_py": BuildPyWithRecorded})
