"""The Colab install cell every chapter notebook starts with (fgnb convention).

Paste the text of ``COLAB_INSTALL_CELL`` (print it with
``python notebooks/_colab_install.py``) as the first code cell of a chapter,
right after the title cell. Rules (see book/setup.md):

* It does nothing outside Colab: locally, ``pip install -e .`` has already
  installed fgnb, and the book build must never touch the network.
* In Colab it installs fgnb from the repository's ``main`` branch. The URL must
  equal ``repository.url`` in ``_config.yml`` (tests/test_book_config.py checks).
* It never installs or upgrades torch/torchvision: Colab ships CUDA builds that
  already satisfy fgnb's loose pins (``torch>=2.4``, ``torchvision>=0.19``), so
  pip keeps them. No ``--no-deps`` is needed (and none is wanted: timm and
  safetensors may be missing or too old on Colab).
* It upgrades nothing Colab has: no ``-U``, and fgnb's dependency floors
  (pyproject.toml) admit Colab's preinstalled versions (ipywidgets 7.7,
  matplotlib, numpy, pillow), so pip only adds what is missing.
  tests/test_colab_install.py runs this command in a Colab-like venv and checks
  that no preinstalled version changed.
* A fork that publishes its own book sets REPO_URL/BRANCH here and in
  ``_config.yml`` (book/setup.md, "Publishing your own copy").

This file is kept valid Python (the cell itself uses the ``%pip`` magic, which
is IPython syntax), so linters and ``compileall`` do not trip over it.
"""

REPO_URL = "https://github.com/fgnb-book/fgnb"
BRANCH = "main"

COLAB_INSTALL_CELL = f'''\
# Colab: install fgnb (locally this cell does nothing; use `pip install -e .`).
import sys

IN_COLAB = "google.colab" in sys.modules
if IN_COLAB:
    # Colab's own CUDA torch/torchvision already satisfy fgnb's loose pins
    # (torch>=2.4, torchvision>=0.19), so pip keeps them: never reinstall torch here.
    %pip install -q "fgnb @ git+{REPO_URL}@{BRANCH}"
'''

if __name__ == "__main__":
    print(COLAB_INSTALL_CELL, end="")
