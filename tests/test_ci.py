"""CI runs what the README tells a new user to run, in a new environment of its own."""
import re

from conftest import ROOT


def readme_commands() -> list[str]:
    """The one-line commands of the README's ```bash blocks under the Quickstart."""
    text = (ROOT / "README.md").read_text()
    quick = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return [ln for block in re.findall(r"```bash\n(.*?)```", quick, flags=re.S) for ln in block.splitlines() if ln]


def test_ci_runs_the_readmes_test_command_in_a_fresh_environment():
    build, test = readme_commands()
    assert "jupyter-book build" in build and "pytest" in test
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    # the README's test command, to the letter, is what CI runs last
    assert [ln for ln in ci if ln and not ln.startswith("#")][-1] == test
    # ... after making and activating a new virtual environment under a temporary folder,
    # removed on exit, so a requirement an earlier install satisfied cannot hide a failure
    body = "\n".join(ci)
    assert re.search(r'mktemp -d .*\n(.*\n)*trap .rm -rf "\$CI_TMP". EXIT', body)
    assert '-m venv "$CI_TMP/venv"' in body and 'source "$CI_TMP/venv/bin/activate"' in body
    assert body.index("activate") < body.index(test)


def test_readme_times_are_the_timing_files():
    """The README's timing sentence states bench/results/book_time.json's numbers, rounded."""
    import json
    import re

    clock = json.loads((ROOT / "bench" / "results" / "book_time.json").read_text())
    text = " ".join((ROOT / "README.md").read_text().split())
    stated = {"book build": clock["build"]["seconds"], "slowest chapter": max(clock["chapters"].values()),
              "rebuild after editing one chapter": clock["rebuild_one_chapter"]["seconds"],
              "`python -m fgnb train`": clock["default_train"]["seconds"], "CI": clock["ci"]["seconds"]}
    for what, seconds in stated.items():
        m = re.search(re.escape(what) + r" (\d+) s", text)
        assert m, f"README does not state the {what} time"
        assert int(m.group(1)) == round(seconds), (what, m.group(1), seconds)
